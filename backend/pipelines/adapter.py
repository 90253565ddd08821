"""Depth through a T2I-Adapter: features computed once per job, added inside the UNet.

A ControlNet runs beside the UNet at every step, about half a UNet's work again. A
T2I-Adapter runs once, on the depth image, and its features are added to the UNet's own
down blocks at every step (``UNet2DConditionModel``'s ``down_intrablock_additional_residuals``),
so depth conditioning costs one small forward per job instead of one per step.

diffusers' adapter pipelines cover txt2img only. The plain txt2img, img2img and inpaint
pipelines do not pass adapter residuals, so ``adapter_residuals`` adds them to each UNet
call through a forward pre-hook (torch's hook API) for the duration of one job's call;
the worker runs one job at a time, and the hook is removed however the call ends. The
generator hooks the job's view of the UNet (job_unet.py), not the shared, possibly
compiled UNet: which steps are conditioned is then decided in Python, and a compiled UNet
sees the residuals as one more input (one new graph, not one per step).

    guide = adapter_guide(adapter, control_tensor(near), unet, settings, axes)
    with adapter_residuals(unet, [guide], position=lambda: (steps_done, pipe.num_timesteps)):
        pipe(...)

Several adapters (one per control of a job) add their features up, each only during its
own steps: what diffusers' ``MultiAdapter`` does with its weights, but with a window per
adapter, which ``MultiAdapter`` has not.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence, Union

import torch
import torch.nn.functional as F
from diffusers import T2IAdapter
from torch import nn

from protocol.errors import ErrorCode, ProtocolError

from .tiling import TileAxes, wrapped_convolutions

Shape = tuple[int, int, int]      # channels, height, width


class Window(Protocol):
    """How strongly and during which share of the steps a control applies
    (``ControlSettings``, a planned control)."""
    scale: float
    start: float
    end: float


@dataclass(frozen=True)
class AdapterGuide:
    """One job's adapter features (batch 1, already scaled) and the share of the steps
    they apply to, ``start``..``end`` as in ``ControlSettings``."""
    features: tuple[torch.Tensor, ...]
    start: float
    end: float

    def active(self, step: int, total: int) -> bool:
        """Whether step ``step`` (0-based) of ``total`` is conditioned; the same rule as
        diffusers' ``control_guidance_start``/``end`` for ControlNets."""
        return not (step / total < self.start or (step + 1) / total > self.end)


def residual_shapes(unet_config: Any, latent_height: int, latent_width: int) -> list[Shape]:
    """Where a UNet adds adapter residuals at this latent size: one per down block, then
    the mid block. A cross-attention block adds its residual before its downsampler, a
    plain block after it (``UNet2DConditionModel.forward``)."""
    height, width = latent_height, latent_width
    channels = list(unet_config.block_out_channels)
    types = list(unet_config.down_block_types)
    shapes: list[Shape] = []
    for index, block in enumerate(types):
        cross_attention = "CrossAttn" in block
        if cross_attention:
            shapes.append((channels[index], height, width))
        if index < len(types) - 1:       # a downsampler: stride-2 conv, padding 1
            height, width = (height + 1) // 2, (width + 1) // 2
        if not cross_attention:
            shapes.append((channels[index], height, width))
    shapes.append((channels[-1], height, width))
    return shapes


def adapter_guide(adapter: T2IAdapter, depth: torch.Tensor, unet: nn.Module,
                  vae_scale: int, settings: Window, axes: TileAxes,
                  name: str, field: str = "control.model") -> AdapterGuide:
    """Run ``adapter`` once on ``depth`` (``(1, 3, H, W)`` in [0, 1] at the working size)
    and shape its features for ``unet``'s residuals at that size.

    The adapter needs a size divisible by its total downscale factor; other sizes are
    run at the next multiple and each feature is resized to what the UNet takes there.
    """
    height, width = depth.shape[-2:]
    wanted = residual_shapes(unet.config, height // vae_scale, width // vae_scale)
    factor = adapter.total_downscale_factor
    run_height, run_width = -(-height // factor) * factor, -(-width // factor) * factor
    image = depth.to(adapter.device, adapter.dtype)
    if (run_height, run_width) != (height, width):
        image = F.interpolate(image, size=(run_height, run_width), mode="bilinear",
                              align_corners=False)
    with torch.no_grad(), wrapped_convolutions([adapter], axes):
        raw = list(adapter(image))
    if len(raw) not in (len(wanted) - 1, len(wanted)) or any(
            feature.shape[1] != shape[0] for feature, shape in zip(raw, wanted)):
        raise ProtocolError(
            ErrorCode.UNSUPPORTED,
            f"T2I-Adapter {name} gives features of {[f.shape[1] for f in raw]} channels; this "
            f"model's UNet takes {[shape[0] for shape in wanted]} (an adapter made for another "
            f"model family?)", field=field)
    features = []
    for feature, (_, want_h, want_w) in zip(raw, wanted):
        if feature.shape[-2:] != (want_h, want_w):
            feature = F.interpolate(feature, size=(want_h, want_w), mode="bilinear",
                                    align_corners=False)
        features.append((feature * settings.scale).to(unet.dtype))
    return AdapterGuide(tuple(features), settings.start, settings.end)


@contextlib.contextmanager
def adapter_residuals(unet: nn.Module, guides: Union[AdapterGuide, Sequence[AdapterGuide]],
                      position: Callable[[], tuple[int, int]]) -> Iterator[None]:
    """Inside the block, every call of ``unet`` gets the summed features of the ``guides``
    whose steps cover the call as ``down_intrablock_additional_residuals``. ``position``
    says (steps done, steps in all) at the time of the call."""
    guides = [guides] if isinstance(guides, AdapterGuide) else list(guides)

    def add_residuals(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        step, total = position()
        active = [guide for guide in guides if guide.active(step, total)]
        if not active:
            return args, kwargs
        sample = args[0] if args else kwargs["sample"]
        features = active[0].features
        for guide in active[1:]:
            features = tuple(a + b for a, b in zip(features, guide.features))
        # Expanded to the batch (a view, no copy): the mid block only takes a residual of
        # exactly its own shape. The UNet pops from the list, so each call gets a new one.
        residuals = [f.expand(sample.shape[0], -1, -1, -1) for f in features]
        return args, {**kwargs, "down_intrablock_additional_residuals": residuals}

    handle = unet.register_forward_pre_hook(add_residuals, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
