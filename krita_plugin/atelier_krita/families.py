"""Model families as the daemon's ``models`` message names them."""

from __future__ import annotations

from typing import Optional

from .protocol.families import base_family  # noqa: F401  (the daemon's own table)

_FAMILY_LABELS = {"sd15": "SD1.5", "sd2": "SD2", "sdxl": "SDXL"}


def family_label(family: Optional[str], unknown: str = "other") -> str:
    """How the docker names a base family ("SDXL"); ``unknown`` for others."""
    return _FAMILY_LABELS.get(family or "", unknown)
