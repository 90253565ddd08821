"""Reference images (IP-Adapter, PROTOCOL.md 4.6): planning a job's references, turning
their pictures into image embeddings, and the UNet's attention for one job.

- Planning (``job_references``, no model): each reference's upload decoded to RGB
  (transparent pixels over mid grey, so a painted layer's empty parts read as neutral);
  references of weight 0 are dropped there, so they cost nothing and change nothing.
- Embeddings (``reference_setup``): the adapter's CLIP encoder reads a centred square of
  the picture (shortest side scaled to the encoder's size, bicubic, CLIP's normalisation);
  plain adapters take its projected image embedding, "plus" ones its penultimate hidden
  states. Classifier-free guidance's unconditional half gets zeros (plain) or the
  encoding of a zero image (plus), as diffusers' ``encode_image`` gives them. They reach the
  pipeline as ``ip_adapter_image_embeds``, one entry per reference.
- Attention (``reference_attention``): for the duration of the job's call every
  cross-attention processor of the UNet is diffusers' ``IPAdapterAttnProcessor2_0`` with
  one slot per reference, the slots of references that share an adapter sharing its
  key and value projections (the weights are held once, ip_adapters.py); the UNet's
  ``encoder_hid_proj`` holds each slot's image projection. Each slot has its own scale,
  set through diffusers' ``set_ip_adapter_scale``: a "content" reference its weight on every
  layer, a "style" one (InstantStyle) its weight on only the middle attention of the
  lowest-resolution up block with attention (SDXL: ``up_blocks.0.attentions.1``, as
  InstantStyle; SD1.5: ``up_blocks.1.attentions.1``, its counterpart) and 0 elsewhere.
  Afterwards the UNet's own processors and projection are put back, the same objects,
  so the next job runs exactly as if no reference had been there.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Optional, Union

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import MultiIPAdapterImageProjection
from torch import nn

from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import ImageFrame
from protocol.messages import GenerateRequest

from ..models.ip_adapters import LoadedAdapter, cross_attention_processors
from .pixels import frame_to_rgba, job_upload

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
GROUND = 127                  # what transparent pixels of a reference read as
Scale = Union[float, dict]    # a reference's scale as set_ip_adapter_scale takes it


@dataclass(frozen=True)
class PlannedReference:
    """One reference of a job with weight above 0, resolved. ``field``: where it came
    from (``job.references[i]``), for errors; ``picture``: uint8 RGB at its own size."""
    field: str
    weight: float
    flavour: str
    model: Optional[str]
    picture: np.ndarray = field(compare=False, repr=False)


def job_references(job: GenerateRequest,
                   uploads: Mapping[str, ImageFrame]) -> tuple[PlannedReference, ...]:
    """The references of ``job`` that steer (weight above 0), their pictures decoded.
    Every upload is checked, also those of weight 0: ``unknown_upload`` / ``invalid_field``
    naming ``job.references[i].image``."""
    planned = []
    for index, reference in enumerate(job.references):
        where = f"job.references[{index}]"
        frame = job_upload(uploads, reference.image, "reference image", f"{where}.image")
        rgba = frame_to_rgba(frame, f"{where}.image").astype(np.uint16)
        alpha = rgba[..., 3:4]
        rgb = ((rgba[..., :3] * alpha + GROUND * (255 - alpha) + 127) // 255).astype(np.uint8)
        if reference.weight > 0:
            planned.append(PlannedReference(where, reference.weight, reference.flavour,
                                            reference.model, rgb))
    return tuple(planned)


# ------------------------------------------------------------------ embeddings

def encoder_input(picture: np.ndarray, side: int) -> torch.Tensor:
    """``(1, 3, side, side)`` float32: the centred square of ``picture``, its shortest
    side scaled to ``side`` (bicubic), normalised as CLIP was trained."""
    height, width = picture.shape[:2]
    scale = side / min(width, height)
    size = (max(side, round(width * scale)), max(side, round(height * scale)))
    image = np.asarray(PIL.Image.fromarray(picture).resize(size, PIL.Image.BICUBIC))
    top, left = (size[1] - side) // 2, (size[0] - side) // 2
    square = image[top:top + side, left:left + side].astype(np.float32) / 255.0
    normalised = (square - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))[None]


@torch.no_grad()
def image_embeds(adapter: LoadedAdapter, picture: np.ndarray, guided: bool) -> torch.Tensor:
    """What ``ip_adapter_image_embeds`` holds for one reference: ``(1, 1, ...)``, with the
    unconditional half first (``(2, 1, ...)``) when ``guided``."""
    encoder = adapter.encoder
    pixels = encoder_input(picture, encoder.config.image_size).to(encoder.device, encoder.dtype)
    if adapter.file.hidden_states:
        positive = encoder(pixels, output_hidden_states=True).hidden_states[-2]
        negative = encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
    else:
        positive = encoder(pixels).image_embeds
        negative = torch.zeros_like(positive)
    positive, negative = positive[None], negative[None]
    return torch.cat([negative, positive]) if guided else positive


@dataclass(frozen=True)
class ReferenceSetup:
    """A job's references as its call needs them: one adapter slot, scale and embedding
    per reference, for ``unet``."""
    unet: nn.Module
    slots: tuple[LoadedAdapter, ...]
    scales: tuple[Scale, ...]
    embeds: tuple[torch.Tensor, ...]


def reference_setup(references: tuple[PlannedReference, ...],
                    adapter_for: Callable[[PlannedReference], LoadedAdapter],
                    unet: nn.Module, guided: bool) -> ReferenceSetup:
    """The setup of ``references`` on ``unet``; ``adapter_for`` loads a reference's
    adapter (its errors name the reference's model field)."""
    slots = tuple(adapter_for(reference) for reference in references)
    scales = tuple(flavour_scale(unet, r.flavour, r.weight) for r in references)
    embeds = tuple(image_embeds(adapter, r.picture, guided)
                   for adapter, r in zip(slots, references))
    return ReferenceSetup(unet, slots, scales, embeds)


def style_block(unet: nn.Module) -> tuple[int, int, int]:
    """(up block, its attention, attentions in it) that carries style (InstantStyle): the
    middle attention of the first (lowest-resolution) up block with attentions."""
    for index, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None)
        if attentions:
            return index, len(attentions) // 2, len(attentions)
    raise ProtocolError(ErrorCode.UNSUPPORTED, "this model's UNet has no up block with "
                        "attention, where a style reference acts", "job.references")


def flavour_scale(unet: nn.Module, flavour: str, weight: float) -> Scale:
    """A reference's scale in ``set_ip_adapter_scale``'s terms: its weight everywhere
    ("content"), or only on the style block ("style", the dict form)."""
    if flavour == "content":
        return weight
    block, attention, count = style_block(unet)
    return {"up": {f"block_{block}": [weight if i == attention else 0.0 for i in range(count)]}}


# ------------------------------------------------------------------ attention

def _processor(name: str, slots: tuple[LoadedAdapter, ...]) -> IPAdapterAttnProcessor2_0:
    """An IP-Adapter processor for the attention ``name`` with one slot per reference,
    holding the adapters' own projections (made on the meta device: nothing allocated)."""
    first = slots[0].keys[name]
    with torch.device("meta"):
        processor = IPAdapterAttnProcessor2_0(first.out_features, first.in_features,
                                              num_tokens=[s.tokens for s in slots],
                                              scale=[0.0] * len(slots))
    processor.to_k_ip = nn.ModuleList([slot.keys[name] for slot in slots])
    processor.to_v_ip = nn.ModuleList([slot.values[name] for slot in slots])
    return processor


@contextlib.contextmanager
def reference_attention(setup: Optional[ReferenceSetup], pipe: DiffusionPipeline) -> Iterator[None]:
    """The UNet of ``setup`` with its references' attention for the duration of the
    block (nothing when ``setup`` is None), their scales set by ``pipe``'s
    ``set_ip_adapter_scale``. The UNet's own processors and projection come back after,
    however the block ends."""
    if setup is None:
        yield
        return
    unet = setup.unet
    originals = unet.attn_processors
    projection, projection_type = unet.encoder_hid_proj, unet.config.encoder_hid_dim_type
    processors = dict(originals)
    for name in cross_attention_processors(unet):
        processors[name] = _processor(name, setup.slots)
    try:
        unet.set_attn_processor(processors)
        unet.encoder_hid_proj = MultiIPAdapterImageProjection([s.projection for s in setup.slots])
        unet.config.encoder_hid_dim_type = "ip_image_proj"
        pipe.set_ip_adapter_scale(list(setup.scales))
        yield
    finally:
        # The projection first: a plus adapter's has attention layers of its own, which
        # set_attn_processor would count. Deleted before it is set: a None set over a
        # submodule stays a (None) submodule entry, which compiled graphs guard on.
        del unet.encoder_hid_proj
        unet.encoder_hid_proj = projection
        unet.config.encoder_hid_dim_type = projection_type
        unet.set_attn_processor(originals)
