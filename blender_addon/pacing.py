"""Pacing for work on Blender's main thread. No Blender needed."""

from __future__ import annotations

import time
from typing import Callable


class Throttle:
    """Lets something happen at most once per ``interval`` seconds, and, when what it set off
    turns out costly, rarely enough that the cost takes at most ``share`` of the time.

    The caller keeps what is due and asks again on its next tick; ``urgent`` goes ahead at
    once. ``took(seconds)`` adds to what the last go cost (for a redraw: how late the tick
    after it came), which pushes the next go back to the total cost / ``share`` after it,
    but never more than ``longest`` seconds after it.
    """

    def __init__(self, interval: float, share: float = 0.25, longest: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.share = share
        self.longest = longest
        self._clock = clock
        self._last = float("-inf")
        self._next = float("-inf")
        self._cost = 0.0

    def ready(self, urgent: bool = False) -> bool:
        now = self._clock()
        if urgent or now >= self._next:
            self._last = now
            self._next = now + self.interval
            self._cost = 0.0
            return True
        return False

    def took(self, seconds: float) -> None:
        self._cost += max(0.0, seconds)
        wait = min(self._cost / self.share, self.longest)
        self._next = max(self._next, self._last + wait)
