"""The client's side of live sessions (PROTOCOL.md 3.3), shared by the Blender add-on and
the Krita plugin: when to send the host's state, and which result to show. Pure logic: no
host, no I/O, no clock of its own (callers pass ``now``).

A host watches something cheap that changes with what the artist sees (Krita: a checksum
of the canvas pixels; Blender: the camera, the view and the depsgraph's updates) and feeds
it to ``LiveDebounce.observe`` on its timer. A changed state (re)starts the debounce; once
nothing changed for ``delay`` seconds, ``due`` says to send that state, once. The daemon
runs only the newest job of a live session; older ones end ``cancelled`` with reason
``superseded``, which is not the artist's doing and is not reported as a cancellation
(``is_superseded``).

``LiveResults`` keeps the live jobs in the order sent: a result of an older state that
arrives after a newer state's result (the daemon still delivers one that was being
encoded) is not shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Optional

LIVE_DELAY_S = 0.3          # a state is sent this long after the last change
LIVE_POLL_S = 0.1           # hosts look at their state at most this often


@dataclass
class LiveDebounce:
    """When the host's state should go to the daemon."""
    delay: float = LIVE_DELAY_S
    seen: Optional[Hashable] = None   # the state last observed
    sent: Optional[Hashable] = None   # the state last sent
    changed_at: Optional[float] = None

    def observe(self, state: Hashable, now: float) -> None:
        """The host's state (a checksum, a signature) at ``now``; a change restarts the
        wait."""
        if state != self.seen:
            self.seen = state
            self.changed_at = now

    def due(self, now: float) -> bool:
        """True once a state that was not sent yet has stood still for ``delay``; that
        state then counts as sent (``due`` says so once a state)."""
        if self.seen is None or self.changed_at is None or self.seen == self.sent:
            return False
        if now - self.changed_at < self.delay:
            return False
        self.sent = self.seen
        return True

    @property
    def pending(self) -> bool:
        """A change waits for its debounce."""
        return self.seen is not None and self.seen != self.sent

    def reset(self) -> None:
        """Live turned off (or on again): the next observed state is a change."""
        self.seen = self.sent = self.changed_at = None


@dataclass
class LiveResults:
    """Which live jobs are out, by ``ref`` (and job id once accepted), in the order sent."""
    next_number: int = 0
    shown_number: int = -1
    by_ref: dict[str, int] = field(default_factory=dict)
    by_id: dict[str, int] = field(default_factory=dict)

    def sent(self, ref: str) -> int:
        number = self.next_number
        self.next_number += 1
        self.by_ref[ref] = number
        return number

    def accepted(self, ref: str, job_id: str) -> bool:
        if ref not in self.by_ref:
            return False
        self.by_id[job_id] = self.by_ref[ref]
        return True

    def owns(self, job_id: Optional[str] = None, ref: Optional[str] = None) -> bool:
        return (job_id is not None and job_id in self.by_id) or \
            (ref is not None and ref in self.by_ref)

    def newest_id(self) -> Optional[str]:
        """The job id of the newest live job the daemon took (the one to cancel)."""
        if not self.by_id:
            return None
        return max(self.by_id, key=lambda job_id: self.by_id[job_id])

    def ended(self, job_id: str) -> None:
        number = self.by_id.pop(job_id, None)
        if number is not None:
            for ref, value in list(self.by_ref.items()):
                if value == number:
                    del self.by_ref[ref]

    def should_show(self, job_id: str) -> bool:
        """Whether ``job_id``'s result is newer than the one shown (then it is shown)."""
        number = self.by_id.get(job_id)
        if number is None or number <= self.shown_number:
            return False
        self.shown_number = number
        return True

    @property
    def running(self) -> bool:
        return bool(self.by_ref) or bool(self.by_id)

    @property
    def shows_newest(self) -> bool:
        """The result shown is that of the newest state sent."""
        return self.next_number > 0 and self.shown_number == self.next_number - 1

    def clear(self) -> None:
        self.by_ref.clear()
        self.by_id.clear()


def is_superseded(event: object) -> bool:
    """A ``cancelled`` the daemon sent because a newer live job replaced this one."""
    return getattr(event, "reason", None) == "superseded"


def checksum(chunks: "list[bytes]") -> int:
    """A cheap checksum of some pixel buffers (zlib's adler32, C speed)."""
    import zlib
    value = 1
    for chunk in chunks:
        value = zlib.adler32(chunk, value)
    return value
