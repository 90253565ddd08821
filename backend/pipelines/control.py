"""Conditioning one pipeline call on a job's controls: ControlNets (one, or several as
diffusers' ``MultiControlNetModel``) on SD1.5 and SDXL, or SD2-depth's own depth input
(T2I-Adapters leave the call as it is: adapter.py).

``condition_on_controlnets`` takes the plain call a job would make (its kind and keyword
arguments) and the control images, and returns the conditioned call; ``condition_on_depth2img``
does the same for SD2-depth. Functions of data alone, like the rest of the planning; loading
the ControlNets is left to the caller (the model store).

Argument names follow diffusers: the ControlNet txt2img pipelines take the control image
as ``image``; img2img and inpaint take it as ``control_image`` (``image`` is the init).
Several ControlNets take lists (images, scales, windows) in the order of the ControlNets.
The ControlNet inpaint pipelines encode their init image themselves and take no
``masked_image_latents``, so they get pixels; SD2-depth likewise takes pixels, since it
reads the working size off ``image``.

Normal maps travel in the protocol's convention (+X right, +Y up, +Z towards the camera,
PROTOCOL.md 4.4). The normal ControlNets were trained on maps whose red grows towards the
left (ControlNet 1.1's normalbae follows ScanNet's colours; 1.0's normal-from-MiDaS did the
same), so ``control_tensor`` mirrors red for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from protocol.errors import ErrorCode, ProtocolError

from ..models.families import DEPTH as DEPTH2IMG_KIND
from .adapter import Window
from .controls import PlannedControl
from .depth import depth2img_tensor

NORMAL_RED_GROWS_LEFT = True    # what the normal ControlNets were trained on (see above)


@dataclass(frozen=True)
class ConditionedCall:
    kind: str                       # pipeline kind for the model store
    uses_controlnet: bool           # the caller picks the ControlNet (the store's default or named)
    kwargs: dict[str, Any]


def pixels_tensor(rgb: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(1, 3, H, W)`` in [0, 1], what diffusers' image processor takes."""
    # a copy: the pixels may be a read-only view of an upload, which torch will not wrap
    tensor = torch.from_numpy(np.array(rgb[..., :3], dtype=np.float32)).permute(2, 0, 1)[None]
    return tensor / 255.0


def control_tensor(control: PlannedControl, image: np.ndarray) -> torch.Tensor:
    """A control's image (``(H, W, 3)`` float32 in [0, 1], at working size) as the
    ``(1, 3, H, W)`` tensor its model takes."""
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    if control.kind == "normal" and NORMAL_RED_GROWS_LEFT:
        tensor = torch.cat([1.0 - tensor[:, :1], tensor[:, 1:]], dim=1)
    return tensor.contiguous()


def condition_on_controlnets(kind: str, kwargs: dict[str, Any], images: Sequence[torch.Tensor],
                             windows: Sequence[Window],
                             init_rgb: Optional[np.ndarray]) -> ConditionedCall:
    """The call with ControlNets reading ``images`` (one per ControlNet, in order) at
    ``windows``' scales and steps. ``init_rgb``: the init (inpaint: the context crop) at
    the working size as uint8 RGB, None for txt2img."""
    kwargs = dict(kwargs)

    def each(values: list) -> Any:
        return values[0] if len(values) == 1 else values    # one ControlNet takes plain values

    kwargs.update(controlnet_conditioning_scale=each([w.scale for w in windows]),
                  control_guidance_start=each([w.start for w in windows]),
                  control_guidance_end=each([w.end for w in windows]))
    kwargs["image" if kind == "txt2img" else "control_image"] = each(list(images))
    if kind == "inpaint":
        assert init_rgb is not None
        kwargs["image"] = pixels_tensor(init_rgb)
        kwargs.pop("masked_image_latents", None)
    return ConditionedCall(kind, True, kwargs)


def condition_on_depth2img(kind: str, kwargs: dict[str, Any], near: np.ndarray,
                           control: PlannedControl, init_rgb: Optional[np.ndarray],
                           strength: float) -> ConditionedCall:
    """SD2-depth's call: the depth ``near`` (its one control's nearness at working size)
    as the UNet's fifth input channel."""
    kwargs = dict(kwargs)
    if kind == "inpaint":
        raise ProtocolError(ErrorCode.UNSUPPORTED,
                            "an SD2-depth model cannot inpaint; use txt2img or img2img with it",
                            "job.kind")
    if control.model is not None:
        raise ProtocolError(ErrorCode.UNSUPPORTED,
                            "an SD2-depth model conditions on depth itself and takes no "
                            "ControlNet", f"{control.field}.model")
    if init_rgb is None:
        # txt2img: start from pure noise over a neutral grey image.
        init_rgb = np.full(near.shape + (3,), 127, np.uint8)
        strength = 1.0
    for name in ("width", "height"):
        kwargs.pop(name, None)    # the pipeline reads the size off ``image``
    kwargs.update(image=pixels_tensor(init_rgb), depth_map=depth2img_tensor(near),
                  strength=strength)
    return ConditionedCall(DEPTH2IMG_KIND, False, kwargs)
