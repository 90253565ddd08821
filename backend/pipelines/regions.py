"""Regions: parts of the canvas with prompts of their own (PROTOCOL.md 4.7).

Per-region noise-prediction blending (MultiDiffusion's "regional prompting"): at every
step the UNet predicts the noise once with each region's text embedding as well as with
the job's own (the base), and the predictions are mixed pixel by pixel (at latent
resolution) by the regions' weights. Planning turns each region's mask upload into a
float mask at the output size (``job_regions``); the generator maps the masks to its
working area and wraps the job's UNet in a ``RegionalUNet`` (``with_regions``), so the
pipelines call it as they call the UNet and nothing else changes:

- weights (``region_weights``): each mask averaged down to latent size, feathered by a
  small binomial blur (``FEATHER`` latent pixels each way, so borders blend softly), and
  where the regions sum to more than 1 scaled so they sum to 1; the base takes what is
  left. Blurs wrap on tiled axes, and so does resizing a mask of another size, so
  regions follow a seamless texture's wrap;
- passes: one batch per step holds the unconditional pass(es) and one conditional pass
  per region whose weight is not zero everywhere, plus the base's where it has weight.
  A region's own ``negative_prompt``, where it differs from the job's, adds an
  unconditional pass; otherwise the job's unconditional pass serves it. Classifier-free
  guidance is linear, so blending the unconditional and the conditional halves by the
  same weights is blending the guided predictions;
- everything else the pipeline passes the UNet per image (ControlNet residuals, SDXL's
  time ids, a T2I-Adapter's or an IP-Adapter's features) goes to every pass of its half
  of the batch. A ControlNet reads the job's own prompt; its residuals steer each region.

Where a region's weight is 1 the blended prediction is exactly that region's (1 * x + 0
* y), and passes without weight are not run: a region with an empty mask leaves the job
as it was, and one covering everything at full strength is the job with its prompt.
With one call per step and a fixed batch, step caching (step_cache.py, wrapped inside)
works unchanged; a compiled UNet compiles once more for the larger batch. In low-memory
mode the passes run a guided step's worth per call instead, so a step needs no more
activation memory than a plain one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Optional, Sequence

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from torch import nn

from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import ImageFrame
from protocol.messages import GenerateRequest

from ..models.accel import CPU_OFFLOAD, classifier_free_guidance, encode_prompt
from ..models.store import LoadedModel
from .job_unet import JobUNet
from .lora_tags import extract_lora_tags
from .pixels import frame_to_gray, job_upload
from .seamless import roll_image
from .tiling import TileAxes, tile_axes

if TYPE_CHECKING:
    from .plan import GenerationPlan    # plan.py plans regions with job_regions

FEATHER = 2            # latent pixels the blur reaches each way (binomial 1 4 6 4 1)
EXACT = 1e-6           # resampling error below which a weight is exactly 0 or 1
Half = Literal["uncond", "cond"]
# (pipe, prompt, negative prompt, guided) -> embeddings, as accel.encode_prompt makes them
Encode = Callable[[Any, str, Optional[str], bool], Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class PlannedRegion:
    """One region of a job, resolved: ``mask`` at the output size, float32 in [0, 1];
    ``negative_prompt`` None = the job's; ``field``: ``job.regions[i]``, for errors."""
    field: str
    prompt: str
    negative_prompt: Optional[str]
    mask: np.ndarray = field(compare=False, repr=False)

    def rolled(self, offset: tuple[int, int]) -> "PlannedRegion":
        """The region with its mask rolled (make_seamless rolls the texture)."""
        return PlannedRegion(self.field, self.prompt, self.negative_prompt,
                             roll_image(self.mask, offset))


def job_regions(job: GenerateRequest, uploads: Mapping[str, ImageFrame],
                axes: TileAxes) -> tuple[PlannedRegion, ...]:
    """Every region of ``job`` with its mask at the job's size (wrapping on ``axes``).
    Raises ``unknown_upload`` / ``invalid_field`` on ``job.regions[i].mask``, and
    ``invalid_field`` on a region's prompt that holds a LoRA tag (LoRAs are per job)."""
    regions = []
    for index, region in enumerate(job.regions):
        where = f"job.regions[{index}]"
        frame = job_upload(uploads, region.mask, "region mask", f"{where}.mask")
        for name in ("prompt", "negative_prompt"):
            if extract_lora_tags(getattr(region, name) or "", f"{where}.{name}").loras:
                raise ProtocolError(ErrorCode.INVALID_FIELD,
                                    "a LoRA changes the model for the whole job: name it in the "
                                    "job's prompt or loras, not in a region's", f"{where}.{name}")
        mask = fit_mask(frame_to_gray(frame, f"{where}.mask"), job.width, job.height, axes)
        regions.append(PlannedRegion(where, region.prompt, region.negative_prompt, mask))
    return tuple(regions)


def fit_mask(gray: np.ndarray, width: int, height: int, axes: TileAxes) -> np.ndarray:
    """A GRAY8 mask at ``width`` x ``height`` as float32 in [0, 1]: resized bilinearly,
    on 8-bit levels (255 stays exactly 1). On a tiled axis the mask is resized as a
    tile between copies of itself, so its edges blend with the opposite edge."""
    height0, width0 = gray.shape
    if (width0, height0) != (width, height):
        reps_x, reps_y = (3 if axes.x else 1), (3 if axes.y else 1)
        tiled = np.tile(gray, (reps_y, reps_x))
        resized = np.asarray(PIL.Image.fromarray(tiled).resize(
            (width * reps_x, height * reps_y), PIL.Image.BILINEAR))
        top, left = (height if axes.y else 0), (width if axes.x else 0)
        gray = resized[top:top + height, left:left + width]
    return gray.astype(np.float32) / 255.0


def region_weights(masks: Sequence[np.ndarray], latent_size: tuple[int, int],
                   axes: TileAxes) -> np.ndarray:
    """``(1 + len(masks), h, w)`` float32 blend weights at ``latent_size`` (h, w): the
    base's first, then each region's; they sum to 1 at every latent pixel.

    Each mask (float, at the working size) is averaged over the pixels of each latent,
    blurred (``FEATHER``; wrapping on ``axes``, the border repeated elsewhere), and
    where the regions sum past 1 they are scaled to sum to 1."""
    height, width = latent_size
    if not masks:
        return np.ones((1, height, width), np.float32)
    stack = torch.from_numpy(np.stack([m.astype(np.float64) for m in masks]))
    pooled = F.adaptive_avg_pool2d(stack[:, None], (height, width))[:, 0].numpy()
    soft = _binomial_blur(pooled, axes)
    soft = np.where(soft < EXACT, 0.0, np.where(soft > 1 - EXACT, 1.0, soft))
    total = soft.sum(axis=0)
    regions = soft / np.maximum(total, 1.0)
    base = np.clip(1.0 - regions.sum(axis=0), 0.0, 1.0)
    base = np.where(base < EXACT, 0.0, base)
    return np.concatenate([base[None], regions]).astype(np.float32)


def _binomial_blur(stack: np.ndarray, axes: TileAxes) -> np.ndarray:
    """``(R, h, w)`` blurred along h and w by the binomial kernel of radius ``FEATHER``,
    as shifted sums (exact for constant areas: a full mask stays 1, an empty one 0)."""
    kernel = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
    assert len(kernel) == 2 * FEATHER + 1
    for axis, wraps in ((1, axes.y), (2, axes.x)):
        widths = [(0, 0)] * 3
        widths[axis] = (FEATHER, FEATHER)
        padded = np.pad(stack, widths, mode="wrap" if wraps else "edge")
        size = stack.shape[axis]
        out = np.zeros_like(stack)
        for shift, weight in enumerate(kernel):
            out += weight * np.take(padded, range(shift, shift + size), axis=axis)
        stack = out
    return stack


# ------------------------------------------------------------------ the UNet side

@dataclass(frozen=True)
class Pass:
    """One UNet pass per step: which half of the pipeline's batch it stands for, its
    weight map ``(1, 1, h, w)``, and its text (``(1, T, D)``; SDXL: ``pooled`` ``(1, P)``),
    None = the pipeline's own embeddings of that half (the job's prompt / negative)."""
    half: Half
    weight: torch.Tensor
    text: Optional[torch.Tensor] = None
    pooled: Optional[torch.Tensor] = None


class RegionalUNet(JobUNet):
    """Runs every ``Pass`` per call of ``unet`` (the job's UNet or its view of it) and
    returns the weighted sums of each half's predictions. ``guided``: the pipeline's
    batch holds an unconditional half before its conditional one. ``passes_per_call``:
    at most this many passes go through ``unet`` at once (None: all in one batch), so
    that low-memory mode needs no more activation memory than a plain guided step."""

    def __init__(self, unet: nn.Module, passes: Sequence[Pass], guided: bool,
                 passes_per_call: Optional[int] = None):
        super().__init__(unet)
        halves = {p.half for p in passes}
        if "cond" not in halves or guided != ("uncond" in halves):
            raise ValueError(f"passes {sorted(halves)} do not fit a batch with guided={guided}")
        if passes_per_call is not None and passes_per_call < 1:
            raise ValueError(f"passes_per_call must be 1 or more, got {passes_per_call}")
        self.passes = tuple(passes)
        self.guided = guided
        self.passes_per_call = passes_per_call or len(self.passes)

    def forward(self, sample: torch.Tensor, timestep: Any,
                encoder_hidden_states: Optional[torch.Tensor] = None, **kwargs: Any) -> Any:
        total = sample.shape[0]
        if self.guided and total % 2:
            raise RuntimeError(f"a guided batch of {total} has no two equal halves")
        assert encoder_hidden_states is not None
        batch = total // 2 if self.guided else total
        return_dict = kwargs.pop("return_dict", True)
        size = self.passes_per_call
        predictions = torch.cat([
            self._predict(self.passes[i:i + size], batch, sample, timestep,
                          encoder_hidden_states, kwargs)
            for i in range(0, len(self.passes), size)]).unflatten(0, (len(self.passes), batch))
        if predictions.shape[-2:] != self.passes[0].weight.shape[-2:]:
            raise RuntimeError(f"region weights are {tuple(self.passes[0].weight.shape[-2:])} "
                               f"but the latents are {tuple(predictions.shape[-2:])}")
        halves: list[Half] = ["uncond", "cond"] if self.guided else ["cond"]
        blended = torch.cat([self._blend(predictions, half) for half in halves])
        return UNet2DConditionOutput(sample=blended) if return_dict else (blended,)

    def _predict(self, passes: Sequence[Pass], batch: int, sample: torch.Tensor,
                 timestep: Any, encoder_hidden_states: torch.Tensor,
                 kwargs: dict[str, Any]) -> torch.Tensor:
        """``unet``'s predictions for ``passes`` in one call, pass after pass: each takes
        the rows of its half of the pipeline's batch with its own text."""
        total = sample.shape[0]
        rows = {"uncond": torch.arange(0, batch), "cond": torch.arange(total - batch, total)}
        index = torch.cat([rows[p.half] for p in passes]).to(sample.device)
        texts = torch.cat([encoder_hidden_states[rows[p.half].to(sample.device)] if p.text is None
                           else p.text.to(encoder_hidden_states).expand(batch, -1, -1)
                           for p in passes])
        kwargs = _take_rows(kwargs, index, total)
        added = kwargs.get("added_cond_kwargs")
        if added is not None and "text_embeds" in added:
            own = added["text_embeds"].unflatten(0, (len(passes), batch))
            added["text_embeds"] = torch.cat([
                own[i] if p.pooled is None else p.pooled.to(own).expand(batch, -1)
                for i, p in enumerate(passes)])
        return self.unet(sample[index], _take_rows(timestep, index, total),
                         encoder_hidden_states=texts, return_dict=False, **kwargs)[0]

    def _blend(self, predictions: torch.Tensor, half: Half) -> torch.Tensor:
        """Sum of ``half``'s predictions times their weights, in float32."""
        blended: Optional[torch.Tensor] = None
        for prediction, p in zip(predictions, self.passes):
            if p.half != half:
                continue
            term = prediction.float() * p.weight.to(prediction.device)
            blended = term if blended is None else blended + term
        assert blended is not None
        return blended.to(predictions.dtype)


def _take_rows(value: Any, index: torch.Tensor, total: int) -> Any:
    """``value`` with every tensor whose first dimension is the batch (``total``) taken
    at ``index``, through lists, tuples and dicts; anything else as it is."""
    if isinstance(value, torch.Tensor):
        if value.ndim >= 1 and value.shape[0] == total:
            return value[index.to(value.device)]
        return value
    if isinstance(value, dict):
        return {key: _take_rows(item, index, total) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_take_rows(item, index, total) for item in value)
    return value


def region_passes(pipe: Any, job: GenerateRequest, regions: Sequence[PlannedRegion],
                  weights: np.ndarray, guided: bool,
                  encode: Encode = encode_prompt) -> list[Pass]:
    """The passes of a job with ``regions`` and their ``weights`` (``region_weights``):
    passes without weight left out. ``encode(pipe, prompt, negative, guided)`` gives a
    prompt's embeddings as ``accel.encode_prompt`` does."""
    job_negative = job.negative_prompt or None
    maps = [torch.from_numpy(w)[None, None] for w in weights]
    negative_weight: dict[Optional[str], torch.Tensor] = {job_negative: maps[0]}
    negatives: dict[Optional[str], dict[str, torch.Tensor]] = {}
    passes = [Pass("cond", maps[0])] if weights[0].any() else []
    for region, weight in zip(regions, maps[1:]):
        if not weight.any():
            continue
        negative = (region.negative_prompt if region.negative_prompt is not None
                    else job.negative_prompt) or None
        own_negative = guided and negative != job_negative
        embeds = encode(pipe, region.prompt, negative, own_negative)
        passes.append(Pass("cond", weight, embeds["prompt_embeds"],
                           embeds.get("pooled_prompt_embeds")))
        negative_weight[negative] = negative_weight.get(negative, 0) + weight
        if own_negative:
            negatives.setdefault(negative, embeds)
    if not guided:
        return passes
    job_weight = negative_weight.pop(job_negative)
    uncond = [Pass("uncond", job_weight)] if job_weight.any() else []
    for negative, weight in negative_weight.items():
        embeds = negatives[negative]
        uncond.append(Pass("uncond", weight, embeds["negative_prompt_embeds"],
                           embeds.get("negative_pooled_prompt_embeds")))
    return uncond + passes


def prompt_encoder(model: LoadedModel, job: GenerateRequest) -> Encode:
    """How the generator encodes region prompts: through the model's prompt cache when it
    has one and the job has no LoRAs (which may change the text encoder), else afresh."""
    cache = model.accel.prompt_cache
    return encode_prompt if cache is None or job.loras else cache.prompt_kwargs


def with_regions(unet: nn.Module, pipe: Any, model: LoadedModel, plan: GenerationPlan,
                 work_masks: Sequence[np.ndarray]) -> nn.Module:
    """``unet`` wrapped to run ``plan``'s regions (their masks at the working size in
    ``work_masks``) in the job's copy ``pipe`` of ``model``'s pipeline; ``unet`` itself
    when no region has weight anywhere. In low-memory mode (CPU offload) the passes go
    through the UNet a guided step's worth at a time; step caching, which keeps one
    call's deep features per step, is refused there."""
    scale = pipe.vae_scale_factor
    weights = region_weights(work_masks, (plan.work_height // scale, plan.work_width // scale),
                             tile_axes(plan.tiling))
    if not weights[1:].any():
        return unet
    job = plan.request
    guided = classifier_free_guidance(pipe, job.guidance)
    passes_per_call = None
    if CPU_OFFLOAD in model.accel.applied:
        if job.cache_interval > 1:
            raise ProtocolError(ErrorCode.UNSUPPORTED,
                                "step caching does not combine with regions in low-memory mode "
                                "(the regions' passes run one UNet call after another there); "
                                "use cache_interval 1", "job.cache_interval")
        passes_per_call = 2 if guided else 1
    passes = region_passes(pipe, job, plan.regions, weights, guided, prompt_encoder(model, job))
    return RegionalUNet(unet, passes, guided, passes_per_call)


def region_texts(regions: Sequence[PlannedRegion]) -> list[str]:
    """The prompts of ``regions`` (textual-inversion embeddings they name get loaded)."""
    return [text for r in regions for text in (r.prompt, r.negative_prompt or "")]
