"""Flux.1 transformer tensor names: Black Forest Labs' original layout (the
``flux1-dev.safetensors`` files ComfyUI keeps in ``models/unet``) and diffusers'
``FluxTransformer2DModel`` layout, both ways, from one table.

diffusers' own converter splits the single blocks' fused projection at a hard-coded
width of 3072 (full-size Flux), so a narrower transformer cannot go through it; this one
reads the width from ``img_in.weight``. Where the layouts differ beyond a name: the
double blocks fuse q, k and v into one ``qkv`` tensor, the single blocks fuse q, k, v and
the MLP's input into ``linear1``, and the final modulation holds (shift, scale) where
diffusers holds (scale, shift).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, Literal, Mapping

import torch

PREFIX = "model.diffusion_model."       # whole checkpoints nest the transformer under this
Fuse = Literal["same", "qkv", "linear1", "swap"]


@dataclass(frozen=True)
class Rule:
    """One original tensor and the diffusers tensors it holds."""
    original: str
    diffusers: tuple[str, ...]
    fuse: Fuse = "same"


def _pair(original: str, diffusers: str, fuse: Fuse = "same") -> Iterator[Rule]:
    for param in ("weight", "bias"):
        yield Rule(f"{original}.{param}", (f"{diffusers}.{param}",), fuse)


def _split(original: str, diffusers: tuple[str, ...], fuse: Fuse) -> Iterator[Rule]:
    for param in ("weight", "bias"):
        yield Rule(f"{original}.{param}", tuple(f"{d}.{param}" for d in diffusers), fuse)


def rules(double_blocks: int, single_blocks: int, guidance: bool) -> Iterator[Rule]:
    """Every tensor of a Flux transformer with these block counts."""
    embedders = {"time_in": "timestep_embedder", "vector_in": "text_embedder"}
    if guidance:
        embedders["guidance_in"] = "guidance_embedder"
    for original, diffusers in embedders.items():
        yield from _pair(f"{original}.in_layer", f"time_text_embed.{diffusers}.linear_1")
        yield from _pair(f"{original}.out_layer", f"time_text_embed.{diffusers}.linear_2")
    yield from _pair("txt_in", "context_embedder")
    yield from _pair("img_in", "x_embedder")
    for i in range(double_blocks):
        o, d = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        yield from _pair(o + "img_mod.lin", d + "norm1.linear")
        yield from _pair(o + "txt_mod.lin", d + "norm1_context.linear")
        yield from _split(o + "img_attn.qkv", (d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"), "qkv")
        yield from _split(o + "txt_attn.qkv", (d + "attn.add_q_proj", d + "attn.add_k_proj",
                                               d + "attn.add_v_proj"), "qkv")
        for stream, added in (("img", ""), ("txt", "added_")):
            yield Rule(f"{o}{stream}_attn.norm.query_norm.scale", (f"{d}attn.norm_{added}q.weight",))
            yield Rule(f"{o}{stream}_attn.norm.key_norm.scale", (f"{d}attn.norm_{added}k.weight",))
        yield from _pair(o + "img_mlp.0", d + "ff.net.0.proj")
        yield from _pair(o + "img_mlp.2", d + "ff.net.2")
        yield from _pair(o + "txt_mlp.0", d + "ff_context.net.0.proj")
        yield from _pair(o + "txt_mlp.2", d + "ff_context.net.2")
        yield from _pair(o + "img_attn.proj", d + "attn.to_out.0")
        yield from _pair(o + "txt_attn.proj", d + "attn.to_add_out")
    for i in range(single_blocks):
        o, d = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        yield from _pair(o + "modulation.lin", d + "norm.linear")
        yield from _split(o + "linear1", (d + "attn.to_q", d + "attn.to_k", d + "attn.to_v",
                                          d + "proj_mlp"), "linear1")
        yield Rule(o + "norm.query_norm.scale", (d + "attn.norm_q.weight",))
        yield Rule(o + "norm.key_norm.scale", (d + "attn.norm_k.weight",))
        yield from _pair(o + "linear2", d + "proj_out")
    yield from _pair("final_layer.linear", "proj_out")
    yield from _pair("final_layer.adaLN_modulation.1", "norm_out.linear", "swap")


def _blocks(keys: list[str], prefix: str) -> int:
    numbers = {int(m[1]) for k in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(numbers) + 1 if numbers else 0


def is_original(keys: list[str]) -> bool:
    """Whether these are Black Forest Labs' names (else diffusers')."""
    return any(k.startswith(("double_blocks.", PREFIX + "double_blocks.")) for k in keys)


def _swap(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def to_diffusers(original: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Diffusers' names for an original-layout Flux transformer (``model.diffusion_model.``
    prefix or none); KeyError naming a tensor the file lacks."""
    state = {k.removeprefix(PREFIX): v for k, v in original.items()}
    keys = list(state)
    width = state["img_in.weight"].shape[0]
    out: dict[str, torch.Tensor] = {}
    for rule in rules(_blocks(keys, "double_blocks."), _blocks(keys, "single_blocks."),
                      guidance="guidance_in.in_layer.weight" in state):
        tensor = state[rule.original]
        if rule.fuse == "qkv":
            parts = tensor.chunk(3, dim=0)
        elif rule.fuse == "linear1":
            parts = tensor.split([width, width, width, tensor.shape[0] - 3 * width], dim=0)
        elif rule.fuse == "swap":
            parts = (_swap(tensor),)
        else:
            parts = (tensor,)
        out.update(zip(rule.diffusers, parts))
    return out


def to_original(diffusers: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Black Forest Labs' names for a diffusers Flux transformer's state dict."""
    keys = list(diffusers)
    out = {}
    for rule in rules(_blocks(keys, "transformer_blocks."), _blocks(keys, "single_transformer_blocks."),
                      guidance=any(".guidance_embedder." in k for k in keys)):
        parts = [diffusers[name] for name in rule.diffusers]
        out[rule.original] = _swap(parts[0]) if rule.fuse == "swap" else torch.cat(parts, dim=0)
    return out
