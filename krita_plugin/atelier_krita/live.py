"""Live painting in Krita: the canvas goes to the daemon after each change.

While Live is on the docker polls a cheap checksum of the document's pixels on its
timer (``checksum``) and feeds it to ``LiveDebounce``; the timing and which result to
show (``LiveResults``) are the protocol package's client side of live sessions, shared
with the Blender add-on (``protocol/live.py``). Here: what is Krita's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .protocol.live import (LIVE_DELAY_S, LIVE_POLL_S, LiveDebounce, LiveResults,  # noqa: F401
                            checksum, is_superseded)

LIVE_SESSION = "canvas"
LIVE_STRENGTH = 0.5         # the Live strength slider's default
LIVE_LAYER = "[Atelier live]"

SWEEP_MIN_S = 1.0           # every layer's pixels are read at most this often ...
SWEEP_SHARE = 0.1           # ... and stretched so full sweeps take at most this share of the time


@dataclass
class PixelWatch:
    """Which layers' pixels a Live poll reads, so polling stays cheap on large canvases.

    Reading a layer is a copy of all its pixels on Qt's thread (about 30 ms for one
    2048x2048 layer), so reading every visible layer ten times a second would hold the
    UI most of the time. Strokes land on the active layer: it is read at every poll, and
    the layer active before it once more when the painter switches (a stroke just before
    the switch). Every layer is read in a full sweep when one is new, when no layer is
    active, and at most every ``SWEEP_MIN_S``, stretched so sweeps take at most
    ``SWEEP_SHARE`` of the time; other layers' changes (a filter run from a script, say)
    are seen by the next sweep. ``sums`` keeps each layer's last checksum."""
    sums: dict[str, int] = field(default_factory=dict)
    active: Optional[str] = None
    swept_at: Optional[float] = None
    sweep_cost: float = 0.0

    def plan(self, now: float, active: Optional[str], layers: list[str]) -> tuple[list[str], bool]:
        """The layers (of ``layers``, in order) to read now, and whether that is a full sweep."""
        for gone in set(self.sums) - set(layers):
            del self.sums[gone]
        previous, self.active = self.active, active
        due = self.swept_at is None or \
            now - self.swept_at >= max(SWEEP_MIN_S, self.sweep_cost / SWEEP_SHARE)
        if due or active not in layers or any(layer not in self.sums for layer in layers):
            return list(layers), True
        return [layer for layer in layers if layer in (active, previous)], False

    def read(self, layer: str, value: int) -> None:
        self.sums[layer] = value

    def swept(self, now: float, seconds: float) -> None:
        """A full sweep done at ``now`` took ``seconds``."""
        self.swept_at, self.sweep_cost = now, seconds
