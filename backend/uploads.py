"""Upload bytes held for clients, bounded per client and for all clients together.

An upload holds its bytes from the frame's arrival until it is dropped (a rejected submit,
a closed connection) or until the job that took it ends: a queued job's images count as
much as waiting uploads do, so queueing cannot hold more than the budget.
"""

from __future__ import annotations

import threading

from protocol.errors import ErrorCode, ProtocolError


class UploadBudget:
    def __init__(self, per_client: int, total: int):
        self.per_client = per_client
        self.total = total
        self._held: dict[str, int] = {}
        self._all = 0
        self._lock = threading.Lock()    # released from the worker thread when a job ends

    def held(self, owner: str) -> int:
        with self._lock:
            return self._held.get(owner, 0)

    @property
    def held_by_all(self) -> int:
        with self._lock:
            return self._all

    def hold(self, owner: str, nbytes: int) -> "Hold":
        """Reserve ``nbytes`` for ``owner``; LIMIT_EXCEEDED naming the limit otherwise."""
        with self._lock:
            mine = self._held.get(owner, 0)
            if mine + nbytes > self.per_client:
                raise ProtocolError(ErrorCode.LIMIT_EXCEEDED,
                                    f"this client's uploads (waiting and in queued jobs) would "
                                    f"take {mine + nbytes} bytes; the limit is {self.per_client}",
                                    "frame")
            if self._all + nbytes > self.total:
                raise ProtocolError(ErrorCode.LIMIT_EXCEEDED,
                                    f"uploads of all clients would take {self._all + nbytes} "
                                    f"bytes; the limit is {self.total}; try again when queued "
                                    "jobs have run", "frame")
            self._held[owner] = mine + nbytes
            self._all += nbytes
        return Hold(self, owner, nbytes)

    def _release(self, owner: str, nbytes: int) -> None:
        with self._lock:
            left = self._held.get(owner, 0) - nbytes
            if left > 0:
                self._held[owner] = left
            else:
                self._held.pop(owner, None)
            self._all -= nbytes


class Hold:
    """Bytes reserved in an UploadBudget; ``release`` gives them back (once)."""

    def __init__(self, budget: UploadBudget, owner: str, nbytes: int):
        self._budget = budget
        self.owner = owner
        self.nbytes = nbytes
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._budget._release(self.owner, self.nbytes)
