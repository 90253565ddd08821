"""Which control model serves which control kind: the defaults per model family, and the
kind a ControlNet or T2I-Adapter was trained on, read from its name.

A control model reads one kind of control image; feeding it another (a canny ControlNet
given a normal map) gives a wrong picture without any error. Published models say their
kind in their names (``control_v11p_sd15_lineart``, ``t2i-adapter-canny-sdxl-1.0``), so a
name that names another kind than the job's control is refused; a name that names none
(a user's ``my_controlnet.safetensors``) is trusted. The built-in tiny models know theirs.
"""

from __future__ import annotations

import re
from typing import Optional

from . import families
from .sources import TINY_MODELS

# family -> kind -> (first choice, second choice ...): a job's control that names no model
# uses the first of these on this machine. Depth keeps its ControlNet-then-adapter pair
# (store.DEFAULT_DEPTH_CONTROLS), with the adapter first in low-memory mode.
DEFAULT_CONTROLS: dict[str, dict[str, tuple[str, ...]]] = {
    families.SD15: {
        "normal": ("lllyasviel/control_v11p_sd15_normalbae",),
        "lineart": ("lllyasviel/control_v11p_sd15_lineart",),
        "scribble": ("lllyasviel/control_v11p_sd15_scribble",),
        "softedge": ("lllyasviel/control_v11p_sd15_softedge",),
        "canny": ("lllyasviel/control_v11p_sd15_canny", "TencentARC/t2iadapter_canny_sd15v2"),
        "pose": ("lllyasviel/control_v11p_sd15_openpose",),
    },
    families.SDXL: {
        "lineart": ("TencentARC/t2i-adapter-lineart-sdxl-1.0",),
        "scribble": ("xinsir/controlnet-scribble-sdxl-1.0", "TencentARC/t2i-adapter-sketch-sdxl-1.0"),
        "softedge": ("SargeZT/controlnet-sd-xl-1.0-softedge-dexined",),
        "canny": ("diffusers/controlnet-canny-sdxl-1.0", "TencentARC/t2i-adapter-canny-sdxl-1.0"),
        "pose": ("xinsir/controlnet-openpose-sdxl-1.0",),
    },
}
TINY_CONTROL_BASES = {"tiny": "tiny-controlnet", "tiny-sdxl": "tiny-sdxl-controlnet"}

# Words in published model names, per kind; checked in this order ("openpose" before the
# others, "lineart" before "line"). A name with words of two kinds (a "union" model) has none.
_KIND_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pose", ("openpose", "dwpose", "pose")),
    ("depth", ("depth", "midas", "zoe")),
    ("normal", ("normalbae", "normal")),
    ("lineart", ("lineart", "line_art", "line-art")),
    ("scribble", ("scribble", "sketch", "doodle")),
    ("softedge", ("softedge", "soft_edge", "soft-edge", "hed", "pidi", "dexined")),
    ("canny", ("canny",)),
)


def tiny_control_name(base_model: str, kind: str) -> Optional[str]:
    """The built-in tiny control model of ``kind`` for the tiny base ``base_model``."""
    base = TINY_CONTROL_BASES.get(base_model)
    if base is None:
        return None
    name = base if kind == "depth" else f"{base}-{kind}"
    return name if name in TINY_MODELS else None


def kind_of_model(name: str) -> Optional[str]:
    """The control kind ``name`` was trained on, or None when its name does not say."""
    tiny = TINY_MODELS.get(name)
    if tiny is not None and tiny.control_kind is not None:
        return tiny.control_kind
    stem = re.split(r"[\\/]", name.rstrip("/\\"))[-1].lower()
    found = {kind for kind, words in _KIND_WORDS
             if any(re.search(rf"(^|[^a-z]){re.escape(word)}", stem) for word in words)}
    return found.pop() if len(found) == 1 else None
