"""Jobs on diffusion-transformer families (Flux.1, SD3/SD3.5): what differs from the UNet
families.

The generator runs such a job through the same four steps as any other (generator.py);
this module holds the parts that differ, each behind one hook there:

* ``refuse_unsupported``: what these families cannot do in Atelier yet (controls, LoRAs,
  regions, reference images, step caching, samplers other than flow-matching Euler, tiling
  of an inpaint) fails the job at once with ``unsupported`` naming the field.
* ``work_size`` / ``dit_call``: both cut the latent into 2x2 patches, so the size they run
  at is a multiple of 16 pixels; init images are encoded here (mean latents, as for SD)
  and passed as latents, the inpaint mask as a tensor.
* ``DiTLatents``: Flux's loop hands packed ``(B, tokens, 64)`` latents to the step
  callback and returns them packed (SD3's are plain ``(B, 16, h, w)``); it unpacks them for
  previews and for the VAE, and does seamless tiling.

Seamless tiling. Circular padding changes nothing in a transformer: it has no padding, and
its rotary position embedding puts the left and right edges far apart, so nothing makes
them agree. Instead the latent is rolled on the tiled axes by a new offset after every
step (the seam the model leaves moves somewhere else, and the next steps denoise across
the old one as interior), and rolled back by the sum of the offsets at the end; the VAE,
convolutional, decodes with circular padding (tiling.py). The offsets are drawn from the
job's seed, so a tiled job still reproduces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from protocol.errors import ErrorCode, ProtocolError
from protocol.families import SAMPLERS, unsupported_fields
from protocol.messages import GenerateRequest

from .latents import encode_rgb
from .pixels import mask_to_tensor
from .plan import GenerationPlan
from .tiling import TileAxes, tile_axes

PATCH_PIXELS = 16            # a token covers 2x2 latents of 8x8 pixels (Flux and SD3)
# T5 prompt length by family (Flux.1-dev 512, SD3 256); shorter tokenizers cap it
T5_MAX_TOKENS = {"flux": 512, "sd3": 256}
# Families that take a negative prompt (true classifier-free guidance); Flux.1's guidance
# is distilled into the model, it has none.
NEGATIVE_PROMPT_FAMILIES = ("sd3",)


def _unsupported(what: str, family: str, field: str) -> ProtocolError:
    return ProtocolError(ErrorCode.UNSUPPORTED,
                         f"{what} on {family} models are not supported yet", field)


# What each field of ``protocol.families.UNSUPPORTED_FIELDS`` is, in refusals.
_FIELD_WHAT = {
    "controls": "controls (ControlNets and T2I-Adapters made for SD1.5/SDXL do not fit a "
                "transformer; the families' own ControlNets are not wired up yet)",
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
    if plan.kind == "inpaint" and tile_axes(plan.tiling).any:
        what = "make_seamless" if job.kind == "make_seamless" else "tiled inpainting"
        raise _unsupported(f"{label} {what} (tiling wraps txt2img and img2img)", family,
                           "job.tiling")


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
    tokens): the prompt (and for SD3 the negative one), steps, guidance (Flux: its distilled
    guidance), one generator per seed, and for img2img / inpaint the init latents (and the
    mask) of the work area."""
    job = plan.request
    t5 = getattr(pipe, "tokenizer_3", None) or pipe.tokenizer_2
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
    init = encode_rgb(pipe.vae, work_rgb, pipe.device)
    kwargs.update(image=init, strength=job.strength)
    if plan.kind == "inpaint":
        assert work_mask is not None
        # Passing the init latents as the masked image spares the pipeline a VAE encode.
        kwargs.update(mask_image=mask_to_tensor(work_mask), masked_image_latents=init)
    return kwargs


@dataclass
class DiTLatents:
    """One job's view of a transformer's latents (Flux's packed): unpacking for previews
    and decoding, and the per-step roll that makes tiled jobs wrap."""
    pipe: DiffusionPipeline
    width: int                   # work size in pixels
    height: int
    axes: TileAxes
    seed: int
    shift: tuple[int, int] = (0, 0)   # (dx, dy) in latents, rolled so far

    @property
    def packed(self) -> bool:
        return hasattr(self.pipe, "_unpack_latents")

    def __post_init__(self) -> None:
        self._offsets = torch.Generator("cpu").manual_seed(self.seed)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """Flux's ``(B, tokens, 4C)`` -> ``(B, C, H/8, W/8)``; SD3's are that already."""
        if not self.packed:
            return packed
        return self.pipe._unpack_latents(packed, self.height, self.width,
                                         self.pipe.vae_scale_factor)

    def _pack(self, latents: torch.Tensor) -> torch.Tensor:
        if not self.packed:
            return latents
        b, c, h, w = latents.shape
        return self.pipe._pack_latents(latents, b, c, h, w)

    def after_step(self, packed: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the step callback returns: on a tiled job, the latents rolled by a fresh
        offset of whole tokens on each tiled axis (seeded: the job reproduces)."""
        if not self.axes.any:
            return {}
        latents = self.unpack(packed)
        h, w = latents.shape[-2:]
        dx = 2 * int(torch.randint(1, max(2, w // 2), (1,), generator=self._offsets)) if self.axes.x else 0
        dy = 2 * int(torch.randint(1, max(2, h // 2), (1,), generator=self._offsets)) if self.axes.y else 0
        self.shift = ((self.shift[0] + dx) % w, (self.shift[1] + dy) % h)
        return {"latents": self._pack(torch.roll(latents, (dy, dx), dims=(-2, -1)))}

    def finish(self, packed: torch.Tensor) -> torch.Tensor:
        """The final latents unpacked, rolled back to where the job's noise put them."""
        latents = self.unpack(packed)
        dx, dy = self.shift
        return torch.roll(latents, (-dy, -dx), dims=(-2, -1)) if (dx or dy) else latents
