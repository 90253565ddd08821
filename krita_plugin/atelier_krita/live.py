"""Live painting's timing, as plain logic (no Krita, no Qt): when to send the canvas.

While Live is on the docker polls a cheap checksum of the document's pixels on its
timer and feeds it to ``LiveDebounce.observe``. A changed checksum (re)starts the
debounce; once nothing changed for ``delay`` seconds, ``due`` says to send that state,
once. The daemon runs only the newest state of a live session (``live="canvas"``, see
PROTOCOL.md 3.3); older jobs end ``cancelled`` with reason ``superseded``, which is not
the painter's doing and is not reported as a cancellation.

``LiveResults`` keeps results in order: a result of an older state that arrives after a
newer state's result (the daemon still delivers one that was being encoded) is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

LIVE_SESSION = "canvas"
LIVE_DELAY_S = 0.3          # sent this long after the last change
LIVE_POLL_S = 0.1           # the checksum is taken at most this often
LIVE_STRENGTH = 0.5         # the Live strength slider's default
LIVE_LAYER = "[Atelier live]"


@dataclass
class LiveDebounce:
    """When the canvas state should go to the daemon."""
    delay: float = LIVE_DELAY_S
    seen: Optional[int] = None        # the checksum last observed
    sent: Optional[int] = None        # the checksum last sent
    changed_at: Optional[float] = None

    def observe(self, checksum: int, now: float) -> None:
        """The canvas's checksum at ``now``; a change restarts the wait."""
        if checksum != self.seen:
            self.seen = checksum
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
