"""Live mode's decisions, as plain logic (no Blender): what a live job asks for, which of
Blender's data updates count as the artist's edits, and the panel's Live line.

When to send and which result to show are the protocol package's client side of live
sessions (``protocol/live.py``), shared with the Krita plugin; ``live.py`` is the Blender
side that watches the view, renders and writes the "Atelier Live" image.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from .settings import SIZE_MULTIPLE, PanelSettings

LIVE_SESSION = "viewport"     # Submit.live: the add-on's one live session
LIVE_IMAGE = "Atelier Live"   # the image that shows the newest live result
LIVE_STRENGTH = 0.5           # the Live Strength property's default
LIVE_LONGEST = 512            # live jobs are at most this many pixels on their longer side
LIVE_MIN_SIDE = 64
LIVE_SAMPLES = 4              # render samples of a live capture (Cycles, EEVEE)

# Data-block kinds (``bl_rna.identifier`` of a depsgraph update's ID) whose updates are no
# edit of what the camera sees: the scene's own settings (the live capture changes and
# restores its resolution), images (the live image itself is written), collections (the
# capture's temporary camera), the compositor (its File Output nodes) and the UI's own.
NOT_EDITS = frozenset({"Scene", "Image", "Collection", "CompositorNodeTree",
                       "WindowManager", "Screen", "WorkSpace", "Text", "Brush", "Palette",
                       "Library"})

LIVE_STRENGTH_HELP = ("How much Live may change the render: 0 keeps it, 1 repaints it "
                      "completely (lower follows the scene more closely)")


def counts_as_edit(kind: str) -> bool:
    """Whether an update of a data-block of ``kind`` (e.g. 'Object', 'Mesh', 'Material',
    'ShaderNodeTree') changes what the live render shows."""
    return kind not in NOT_EDITS


def live_size(width: int, height: int, longest: int = LIVE_LONGEST) -> tuple[int, int]:
    """The panel's ``width`` x ``height`` scaled down (never up) so the longer side is at
    most ``longest``, keeping the aspect; sides multiples of 8, at least 64."""
    scale = min(1.0, longest / max(width, height, 1))

    def side(value: int) -> int:
        scaled = int(value * scale) // SIZE_MULTIPLE * SIZE_MULTIPLE
        return max(LIVE_MIN_SIDE, scaled)

    return side(width), side(height)


def live_settings(panel: PanelSettings, strength: float, seed: int,
                  longest: int = LIVE_LONGEST) -> PanelSettings:
    """The settings of a live job: the panel's prompt, model and sampling, at ``strength``,
    at most ``longest`` pixels on a side, one image, no previews, and ``seed`` (one seed for
    all of a Live session, so the image changes with the scene, not with the noise)."""
    width, height = live_size(panel.width, panel.height, longest)
    return dataclasses.replace(panel, width=width, height=height, strength=strength,
                               batch_size=1, preview_every=0, random_seed=False, seed=seed)


def live_line(on: bool, connected: bool, sent: int, shown: int, running: bool,
              problem: Optional[str] = None) -> str:
    """The panel's line about Live: off, waiting to connect, what went wrong, working on an
    update, or how many updates it showed."""
    if not on:
        return "Live is off"
    if problem:
        return f"Live: {problem}"
    if not connected:
        return "Live: waiting for the daemon"
    if running:
        return "Live: updating ..."
    if sent == 0:
        return "Live: on; move the camera or edit"
    return f"Live: up to date, {shown} shown"
