"""Jobs on diffusion-transformer families (Flux.1, SD3/SD3.5, Chroma, Z-Image): what
differs from the UNet families.

The generator runs such a job through the same four steps as any other (generator.py);
this module holds the parts that differ, each behind one hook there:

* ``refuse_unsupported``: what these families cannot do in Atelier yet (the table in
  ``protocol.families``: regions, reference images, step caching, samplers other than
  flow-matching Euler) fails the job at once with ``unsupported`` naming the field.
  Controls and LoRAs run (dit_controls.py, the LoRA path of SD).
* ``work_size`` / ``dit_call``: both cut the latent into 2x2 patches, so the size they run
  at is a multiple of 16 pixels; init images are encoded here (mean latents, as for SD)
  and passed as latents, the inpaint mask as a tensor.
* ``DiTLatents``: Flux's loop hands packed ``(B, tokens, 64)`` latents to the step
  callback and returns them packed (SD3's are plain ``(B, 16, h, w)``); they are unpacked
  for previews and for the VAE.
* ``RolledTransformer``: seamless tiling.

Seamless tiling. Circular padding changes nothing in a transformer: it has no padding, and
its rotary (Flux) or learned (SD3) position embedding puts the left and right edges far
apart, so nothing makes them agree. Instead each call of the transformer sees the latent
rolled on the tiled axes by a new offset and its prediction is rolled back: the edge the
model would leave moves from step to step, and the other steps denoise across it as
interior. The VAE, convolutional, decodes with circular padding (tiling.py). The
offsets are drawn from the job's seed, so a tiled job still reproduces; the pipeline's
latents never move, so this serves inpainting and make_seamless as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import nn

from protocol.errors import ErrorCode, ProtocolError
from protocol.families import SAMPLERS, unsupported_fields
from protocol.messages import GenerateRequest

from .job_unet import ModelView
from .latents import encode_rgb
from .control import pixels_tensor
from .pixels import mask_to_tensor
from .plan import GenerationPlan
from .tiling import TileAxes, tile_axes

PATCH_PIXELS = 16            # a token covers 2x2 latents of 8x8 pixels (Flux and SD3)
# The transformer's keyword arguments that carry a ControlNet's per-block residuals
CONTROLNET_RESIDUALS = ("controlnet_block_samples", "controlnet_single_block_samples",
                        "block_controlnet_hidden_states")
# Prompt length of the long text encoder by family (T5: Flux.1-dev and Chroma 512, SD3 256;
# Z-Image's Qwen3 512); shorter tokenizers cap it
T5_MAX_TOKENS = {"flux": 512, "flux_fill": 512, "flux_control": 512, "sd3": 256, "chroma": 512,
                 "zimage": 512}
# Families that take a negative prompt (true classifier-free guidance); Flux.1's guidance
# is distilled into the model, it has none.
NEGATIVE_PROMPT_FAMILIES = ("sd3", "chroma", "zimage")


def _unsupported(what: str, family: str, field: str) -> ProtocolError:
    return ProtocolError(ErrorCode.UNSUPPORTED,
                         f"{what} on {family} models are not supported yet", field)


# What each field of ``protocol.families.UNSUPPORTED_FIELDS`` is, in refusals.
_FIELD_WHAT = {
    "controls": "controls (ControlNets and T2I-Adapters made for other families do not fit; "
                "this family's own ControlNets are not wired up yet)",
    "depth": "depth controls", "control": "depth controls", "loras": "LoRAs",
    "regions": "regional prompts", "references": "reference images (IP-Adapter)",
    "cache_interval": "step caching (a UNet feature)",
}
_FIELD_NAME = {"loras": "loras[0].name"}     # where the job's LoRA errors point elsewhere too


def _is_set(job: GenerateRequest, name: str) -> bool:
    """Whether the job asks for what field ``name`` gives (1 is cache_interval's "off")."""
    value = getattr(job, name)
    if name == "cache_interval":
        return value > 1
    return bool(value) if isinstance(value, list) else value is not None


def refuse_unsupported(plan: GenerationPlan, model_name: str, family: str) -> None:
    """Raise ``unsupported`` naming the first field of ``plan``'s job a model of
    ``family`` cannot serve in Atelier yet (``protocol.families``)."""
    job = plan.request
    label = f"model {model_name} ({family}):"
    for name in unsupported_fields(family):
        if _is_set(job, name):
            raise _unsupported(f"{label} {_FIELD_WHAT[name]}", family,
                               _FIELD_NAME.get(name, f"job.{name}"))
    samplers = SAMPLERS.get(family)
    if samplers is not None and job.scheduler not in samplers:
        # A preset's sampler (plan.py applied it) is the preset's doing: name that field.
        where, what = (("job.sampler_preset", f"sampler preset {job.sampler_preset!r} samples "
                        f"with {job.scheduler!r}, made for UNet models")
                       if job.sampler_preset is not None else
                       ("job.scheduler", f"scheduler {job.scheduler!r} is for UNet models"))
        raise ProtocolError(ErrorCode.UNSUPPORTED,
                            f"{label} samples with flow-matching Euler; {what} (the samplers "
                            f"here: {', '.join(samplers)})", where)


def flow_scheduler(shared: SchedulerMixin) -> FlowMatchEulerDiscreteScheduler:
    """A fresh flow-matching Euler scheduler for one job, from the model's own config."""
    return FlowMatchEulerDiscreteScheduler.from_config(shared.config)


def work_size(width: int, height: int) -> tuple[int, int]:
    """The size a transformer pipeline runs at for a ``width`` x ``height`` work area: rounded up
    to whole tokens (the result is resized back, as an inpaint crop is)."""
    up = lambda side: -(-side // PATCH_PIXELS) * PATCH_PIXELS   # noqa: E731
    return up(width), up(height)


def dit_call(plan: GenerationPlan, pipe: DiffusionPipeline, family: str,
             work_rgb: Optional[np.ndarray], work_mask: Optional[np.ndarray]) -> dict[str, Any]:
    """The keyword arguments of a transformer pipeline call for ``plan`` (sizes already in
    tokens): the prompt (and, where guidance is true CFG, the negative one), steps, guidance
    (Flux: its distilled guidance), one generator per seed, and for img2img / inpaint the
    init latents (and the mask) of the work area."""
    job = plan.request
    # the long text encoder's tokenizer: SD3's third, Flux's second, Chroma's and Z-Image's only
    t5 = getattr(pipe, "tokenizer_3", None) or getattr(pipe, "tokenizer_2", None) or pipe.tokenizer
    kwargs: dict[str, Any] = dict(
        prompt=job.prompt, num_inference_steps=job.steps, guidance_scale=job.guidance,
        num_images_per_prompt=plan.batch_size, width=plan.work_width, height=plan.work_height,
        max_sequence_length=min(T5_MAX_TOKENS[family], t5.model_max_length),
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in plan.seeds],
        output_type="latent")
    if family in NEGATIVE_PROMPT_FAMILIES:
        kwargs.update(negative_prompt=job.negative_prompt or None)
    if plan.kind == "txt2img":
        return kwargs
    assert work_rgb is not None
    if family == "flux_fill":
        # Fill's pipeline encodes the image itself: the masked image and the mask are
        # inputs of its transformer, which it prepares from pixels
        assert work_mask is not None
        kwargs.update(image=pixels_tensor(work_rgb), mask_image=mask_to_tensor(work_mask),
                      strength=job.strength)
        return kwargs
    init = encode_rgb(pipe.vae, work_rgb, pipe.device)
    kwargs.update(image=init, strength=job.strength)
    if plan.kind == "inpaint":
        assert work_mask is not None
        # Passing the init latents as the masked image spares the pipeline a VAE encode.
        kwargs.update(mask_image=mask_to_tensor(work_mask), masked_image_latents=init)
    return kwargs


@dataclass(frozen=True)
class DiTLatents:
    """One job's view of a transformer's latents: Flux's loop hands packed
    ``(B, tokens, 64)`` latents to the step callback and returns them packed; previews and
    the VAE want ``(B, C, H/8, W/8)``. SD3's latents are that already."""
    pipe: DiffusionPipeline
    width: int                   # work size in pixels
    height: int

    def unpack(self, latents: torch.Tensor) -> torch.Tensor:
        if not hasattr(self.pipe, "_unpack_latents"):
            return latents
        return self.pipe._unpack_latents(latents, self.height, self.width,
                                         self.pipe.vae_scale_factor)


class RolledTransformer(ModelView):
    """A tiled job's view of the shared transformer: every call sees the latent rolled by
    a fresh offset of whole tokens on the tiled axes, and its prediction is rolled back.

    The pipeline's own latents never move, so everything it does with them (img2img's
    start, inpainting's blend with the init latents at every step) stays as it is; only
    where the model's position embedding puts the image changes from step to step, so the
    edge it would leave wanders and the other steps denoise across it as interior. The
    offsets come from the job's seed: a tiled job reproduces.

    Public attributes fall through to the transformer (``config``, ``dtype``,
    ``cache_context``), as ``JobUNet`` does for a UNet."""
    WRAPPED = "transformer"

    def __init__(self, transformer: nn.Module, axes: TileAxes, width: int, height: int,
                 packed: bool, seed: int):
        super().__init__()
        self.transformer = transformer
        self.axes = axes
        self.packed = packed
        self.rows, self.cols = height // PATCH_PIXELS, width // PATCH_PIXELS   # tokens
        self.offsets: list[tuple[int, int]] = []     # (dx, dy) in tokens, one per call
        self._draw = torch.Generator("cpu").manual_seed(seed)

    def _offset(self, tokens: int, on: bool) -> int:
        return int(torch.randint(0, tokens, (1,), generator=self._draw)) if on and tokens > 1 else 0

    def draw(self) -> tuple[int, int]:
        """The next call's offset (dx, dy) in tokens, kept in ``offsets``."""
        dx, dy = self._offset(self.cols, self.axes.x), self._offset(self.rows, self.axes.y)
        self.offsets.append((dx, dy))
        return dx, dy

    def roll_tokens(self, tokens: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
        """Roll ``(B, rows * cols, D)`` image tokens (a ControlNet's residuals, for either
        family) by (dx, dy) on their grid."""
        b, _, d = tokens.shape
        grid = tokens.reshape(b, self.rows, self.cols, d)
        return torch.roll(grid, (dy, dx), dims=(1, 2)).reshape(b, self.rows * self.cols, d)

    def roll(self, latents: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
        """Roll by (dx, dy) tokens: Flux's packed ``(B, rows * cols, D)`` on its token grid,
        SD3's ``(B, C, h, w)`` by two latents (one 2x2 patch) per token."""
        if not self.packed:
            return torch.roll(latents, (2 * dy, 2 * dx), dims=(-2, -1))
        b, _, d = latents.shape
        grid = latents.reshape(b, self.rows, self.cols, d)
        return torch.roll(grid, (dy, dx), dims=(1, 2)).reshape(b, self.rows * self.cols, d)

    def _roll_all(self, latents: torch.Tensor | list[torch.Tensor], dx: int, dy: int) -> Any:
        """``roll`` a batch, or Z-Image's list of one ``(C, 1, h, w)`` latent per image."""
        if isinstance(latents, list):
            return [self.roll(one, dx, dy) for one in latents]
        return self.roll(latents, dx, dy)

    def forward(self, hidden_states: torch.Tensor | list[torch.Tensor], *args: Any,
                **kwargs: Any) -> Any:
        dx, dy = self.draw()
        # A ControlNet's residuals are image tokens: they move with the latent (dit_controls.py).
        kwargs.update({name: [None if r is None else self.roll_tokens(r, dx, dy)
                              for r in kwargs[name]]
                       for name in CONTROLNET_RESIDUALS if kwargs.get(name) is not None})
        out = self.transformer(self._roll_all(hidden_states, dx, dy), *args, **kwargs)
        if isinstance(out, tuple):
            return (self._roll_all(out[0], -dx, -dy), *out[1:])
        out.sample = self._roll_all(out.sample, -dx, -dy)
        return out


def rolled_transformer(pipe: DiffusionPipeline, plan: GenerationPlan) -> Optional[RolledTransformer]:
    """The transformer a tiled job's copy of ``pipe`` runs (None for an untiled job)."""
    axes = tile_axes(plan.tiling)
    if not axes.any:
        return None
    return RolledTransformer(pipe.transformer, axes, plan.work_width, plan.work_height,
                             packed=hasattr(pipe, "_unpack_latents"), seed=plan.seeds[0])
