"""Model families as the daemon's ``models`` message names them (``ModelInfo.family``),
and which LoRAs, embeddings and conditioners a model takes: those made for its base
family. The daemon judges jobs by this table and both add-ons fill their menus by it."""

from __future__ import annotations

from typing import Optional

UNKNOWN = "unknown"

# An inpainting or depth variant takes what is made for its base. Families missing here
# (an SDXL refiner, a ControlNet) have no base: what fits them is left to the loading.
BASE_FAMILY = {"sd15": "sd15", "sd15_inpaint": "sd15", "sd2": "sd2", "sd2_inpaint": "sd2",
               "sd2_depth": "sd2", "sdxl": "sdxl", "sdxl_inpaint": "sdxl", "flux": "flux", "flux_fill": "flux",
               "flux_control": "flux",
               "sd3": "sd3", "chroma": "chroma", "zimage": "zimage"}


# Request fields (``GenerateRequest``) a job on a model of the family cannot use yet: the
# daemon fails such a job with ``unsupported`` naming the field, and add-ons may leave them
# out of their menus. Families not listed take them all.
UNSUPPORTED_FIELDS: dict[str, tuple[str, ...]] = {
    "flux": ("regions", "references", "cache_interval"),
    # FLUX.1-Fill: no ControlNet pipeline of its own
    "flux_fill": ("controls", "depth", "control", "regions", "references", "cache_interval"),
    # FLUX.1-Depth/Canny-dev take their one control image themselves (no ControlNet)
    "flux_control": ("regions", "references", "cache_interval"),
    "sd3": ("regions", "references", "cache_interval"),
    "chroma": ("controls", "depth", "control", "loras", "regions", "references", "cache_interval"),
    "zimage": ("controls", "depth", "control", "loras", "regions", "references", "cache_interval"),
}
# The samplers (``GenerateRequest.scheduler``) a family's models run, where it is not all of
# them: the transformer families sample with flow-matching Euler, which both Euler names select.
SAMPLERS: dict[str, tuple[str, ...]] = {
    family: ("euler", "euler_a") for family in ("flux", "flux_fill", "flux_control", "sd3", "chroma", "zimage")}


# Steps and guidance a job runs with when it leaves them out (``GenerateRequest.steps`` /
# ``guidance`` null), by family: the model cards' recommended settings. FLUX.1-schnell, a
# Flux model without the guidance embedding, samples in 4 steps without guidance. Chroma1-HD:
# 40 steps, true guidance 3.0. FLUX.1-Fill-dev: 50 steps, guidance 30 (its card);
# FLUX.1-Depth-dev 30 steps, guidance 10 (Canny-dev's card says 50 and 30, and the two
# cannot be told apart by their weights: a job on Canny-dev names them). Z-Image's defaults are Z-Image-Turbo's (9 steps, no guidance:
# its guidance is distilled in); the undistilled Z-Image base wants ~50 steps, guidance 4,
# and has the same architecture, so a job on it names steps and guidance.
DEFAULT_SAMPLING = (20, 7.0)
FAMILY_SAMPLING: dict[str, tuple[int, float]] = {"flux": (28, 3.5), "flux_fill": (50, 30.0),
                                                 "flux_control": (30, 10.0),
                                                 "sd3": (28, 4.5), "chroma": (40, 3.0),
                                                 "zimage": (9, 0.0)}
SCHNELL_SAMPLING = (4, 0.0)


def sampling_defaults(family: Optional[str], guidance_distilled: bool = True) -> tuple[int, float]:
    """(steps, guidance) for a job on a model of ``family`` that names neither;
    ``guidance_distilled`` False: a Flux model without guidance embedding (schnell)."""
    if family == "flux" and not guidance_distilled:
        return SCHNELL_SAMPLING
    return FAMILY_SAMPLING.get(family or "") or FAMILY_SAMPLING.get(base_family(family) or "",
                                                                    DEFAULT_SAMPLING)


def unsupported_fields(family: Optional[str]) -> tuple[str, ...]:
    return UNSUPPORTED_FIELDS.get(family or "", ())


def base_family(family: Optional[str]) -> Optional[str]:
    """The base family ("sd15", "sd2", "sdxl") of a model's ``family``; None when it has
    none or is not known."""
    return BASE_FAMILY.get(family or "")


def fits(made_for: str, model_family: Optional[str]) -> bool:
    """Whether a LoRA or an embedding made for ``made_for`` fits a model of
    ``model_family``; an unknown family on either side is left to the loading to judge."""
    base = base_family(model_family)
    return made_for == UNKNOWN or base is None or made_for == base


CONDITIONERS = ("controlnet", "t2i_adapter")   # the families of control models


def serves_control(family: str, control_kind: Optional[str], kind: str) -> bool:
    """Whether a ``models`` entry (its ``family`` and ``control_kind``) is a ControlNet or
    T2I-Adapter for control ``kind``: its name says that kind, or says none (then the
    daemon accepts it for any kind)."""
    return family in CONDITIONERS and control_kind in (None, kind)
