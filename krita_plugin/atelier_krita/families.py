"""Model families as the daemon's ``models`` message names them."""

from __future__ import annotations

from typing import Optional

# Base families by what is made for them (depth conditioners, LoRAs): an inpainting or
# refiner model takes its base's (the daemon judges LoRAs the same way).
_BASE_OF_FAMILY = {"sd15": "sd15", "sd15_inpaint": "sd15", "sd2": "sd2", "sd2_inpaint": "sd2",
                   "sdxl": "sdxl", "sdxl_inpaint": "sdxl", "sdxl_refiner": "sdxl"}


def base_family(family: Optional[str]) -> Optional[str]:
    """The base family ("sd15", "sd2", "sdxl") of a model's ``family``; None when it has
    none or is not known."""
    return _BASE_OF_FAMILY.get(family or "")


_FAMILY_LABELS = {"sd15": "SD1.5", "sd2": "SD2", "sdxl": "SDXL"}


def family_label(family: Optional[str], unknown: str = "other") -> str:
    """How the docker names a base family ("SDXL"); ``unknown`` for others."""
    return _FAMILY_LABELS.get(family or "", unknown)
