"""Live painting in Krita: the canvas goes to the daemon after each change.

While Live is on the docker polls a cheap checksum of the document's pixels on its
timer (``checksum``) and feeds it to ``LiveDebounce``; the timing and which result to
show (``LiveResults``) are the protocol package's client side of live sessions, shared
with the Blender add-on (``protocol/live.py``). Here: what is Krita's own.
"""

from __future__ import annotations

from .protocol.live import (LIVE_DELAY_S, LIVE_POLL_S, LiveDebounce, LiveResults,  # noqa: F401
                            checksum, is_superseded)

LIVE_SESSION = "canvas"
LIVE_STRENGTH = 0.5         # the Live strength slider's default
LIVE_LAYER = "[Atelier live]"
