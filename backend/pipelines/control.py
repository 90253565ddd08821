"""Depth conditioning of one pipeline call: a depth ControlNet (SD1.5, SDXL) or SD2-depth
(a T2I-Adapter leaves the call as it is: adapter.py).

``condition_on_depth`` takes the plain call a job would make (its kind and keyword
arguments) and returns the depth-conditioned one. It is a function of data alone, like
the rest of the planning; loading the ControlNet is left to the caller (the model store).

Argument names follow diffusers: the ControlNet txt2img pipelines take the depth image
as ``image``; img2img and inpaint take it as ``control_image`` (``image`` is the init).
The ControlNet inpaint pipelines encode their init image themselves and take no
``masked_image_latents``, so they get pixels; SD2-depth likewise takes pixels, since it
reads the working size off ``image``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import ControlSettings

from ..models.families import DEPTH as DEPTH2IMG_KIND
from ..models.families import SD2_DEPTH
from .depth import control_tensor, depth2img_tensor


@dataclass(frozen=True)
class ConditionedCall:
    kind: str                       # pipeline kind for the model store
    uses_controlnet: bool           # the caller picks the ControlNet (the store's default or named)
    kwargs: dict[str, Any]


def pixels_tensor(rgb: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(1, 3, H, W)`` in [0, 1], what diffusers' image processor takes."""
    tensor = torch.from_numpy(np.ascontiguousarray(rgb[..., :3])).permute(2, 0, 1)[None]
    return tensor.to(torch.float32) / 255.0


def condition_on_depth(kind: str, kwargs: dict[str, Any], near: np.ndarray, family: str,
                       control: Optional[ControlSettings], init_rgb: Optional[np.ndarray],
                       strength: float) -> ConditionedCall:
    """The depth-conditioned version of a plain call.

    ``near``: nearness at the working size. ``init_rgb``: the init (inpaint: the context
    crop) at the working size as uint8 RGB, None for txt2img.
    """
    kwargs = dict(kwargs)
    if family == SD2_DEPTH:
        return _depth2img(kind, kwargs, near, control, init_rgb, strength)
    settings = control or ControlSettings()
    kwargs.update(controlnet_conditioning_scale=settings.scale,
                  control_guidance_start=settings.start, control_guidance_end=settings.end)
    depth_image = control_tensor(near)
    if kind == "txt2img":
        kwargs["image"] = depth_image
    else:
        kwargs["control_image"] = depth_image
    if kind == "inpaint":
        assert init_rgb is not None
        kwargs["image"] = pixels_tensor(init_rgb)
        kwargs.pop("masked_image_latents", None)
    return ConditionedCall(kind, True, kwargs)


def _depth2img(kind: str, kwargs: dict[str, Any], near: np.ndarray,
               control: Optional[ControlSettings], init_rgb: Optional[np.ndarray],
               strength: float) -> ConditionedCall:
    if kind == "inpaint":
        raise ProtocolError(ErrorCode.UNSUPPORTED,
                            "an SD2-depth model cannot inpaint; use txt2img or img2img with it",
                            "job.kind")
    if control is not None and control.model is not None:
        raise ProtocolError(ErrorCode.UNSUPPORTED,
                            "an SD2-depth model conditions on depth itself and takes no "
                            "ControlNet", "job.control.model")
    if init_rgb is None:
        # txt2img: start from pure noise over a neutral grey image.
        init_rgb = np.full(near.shape + (3,), 127, np.uint8)
        strength = 1.0
    for name in ("width", "height"):
        kwargs.pop(name, None)    # the pipeline reads the size off ``image``
    kwargs.update(image=pixels_tensor(init_rgb), depth_map=depth2img_tensor(near),
                  strength=strength)
    return ConditionedCall(DEPTH2IMG_KIND, False, kwargs)
