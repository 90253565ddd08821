"""Diffusion-transformer tensor names: the original layouts (Black Forest Labs' Flux.1,
Lodestone Rabbits' Chroma, Stability's SD3/SD3.5 and Tongyi-MAI's Z-Image, the files
ComfyUI keeps in ``models/unet``) and diffusers' layouts of their transformers, both ways,
from one table per family.

diffusers' own Flux and Chroma converters split the single blocks' fused projection at a
hard-coded width of 3072 (full size), so a narrower transformer cannot go through them;
this one reads the width from ``img_in.weight``, and loads Flux and Chroma files. SD3 and
Z-Image files load through diffusers' converters (they read every width from the
tensors); their tables here write the tiny models in the original names for the tests.
Where the layouts differ beyond a name: q, k and v are fused into one ``qkv`` tensor,
Flux's single blocks fuse q, k, v and the MLP's input into ``linear1``, and the final
modulations (and SD3's last context block's) hold (shift, scale) where diffusers holds
(scale, shift).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, Literal, Mapping

import torch

from .families import CHROMA, FLUX, FLUX_CONTROL, FLUX_FILL, ZIMAGE

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


def flux_rules(double_blocks: int, single_blocks: int, guidance: bool,
               modulated: bool = True) -> Iterator[Rule]:
    """Every tensor of a Flux transformer with these block counts; not ``modulated``: the
    blocks of a Chroma transformer, whose modulation (and embedders) are one network of
    their own (chroma_rules)."""
    embedders = {"time_in": "timestep_embedder", "vector_in": "text_embedder"} if modulated else {}
    if guidance:
        embedders["guidance_in"] = "guidance_embedder"
    for original, diffusers in embedders.items():
        yield from _pair(f"{original}.in_layer", f"time_text_embed.{diffusers}.linear_1")
        yield from _pair(f"{original}.out_layer", f"time_text_embed.{diffusers}.linear_2")
    yield from _pair("txt_in", "context_embedder")
    yield from _pair("img_in", "x_embedder")
    for i in range(double_blocks):
        o, d = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        if modulated:
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
        if modulated:
            yield from _pair(o + "modulation.lin", d + "norm.linear")
        yield from _split(o + "linear1", (d + "attn.to_q", d + "attn.to_k", d + "attn.to_v",
                                          d + "proj_mlp"), "linear1")
        yield Rule(o + "norm.query_norm.scale", (d + "attn.norm_q.weight",))
        yield Rule(o + "norm.key_norm.scale", (d + "attn.norm_k.weight",))
        yield from _pair(o + "linear2", d + "proj_out")
    yield from _pair("final_layer.linear", "proj_out")
    if modulated:
        yield from _pair("final_layer.adaLN_modulation.1", "norm_out.linear", "swap")


def chroma_rules(double_blocks: int, single_blocks: int, approximator_layers: int
                 ) -> Iterator[Rule]:
    """Every tensor of a Chroma transformer: Flux's blocks without their modulation, and
    the approximator (``distilled_guidance_layer``) that makes it for every block."""
    approximator = "distilled_guidance_layer."
    yield from _pair(approximator + "in_proj", approximator + "in_proj")
    for i in range(approximator_layers):
        layer = f"{approximator}layers.{i}."
        yield from _pair(layer + "in_layer", layer + "linear_1")
        yield from _pair(layer + "out_layer", layer + "linear_2")
        yield Rule(f"{approximator}norms.{i}.scale", (f"{approximator}norms.{i}.weight",))
    yield from _pair(approximator + "out_proj", approximator + "out_proj")
    yield from flux_rules(double_blocks, single_blocks, guidance=False, modulated=False)


def sd3_rules(blocks: int, dual_attention: tuple[int, ...], qk_norm: bool) -> Iterator[Rule]:
    """Every tensor of an SD3/SD3.5 transformer: ``blocks`` joint blocks, those in
    ``dual_attention`` with a second attention (SD3.5 medium), RMS q/k norms (SD3.5)."""
    yield Rule("pos_embed", ("pos_embed.pos_embed",))
    yield from _pair("x_embedder.proj", "pos_embed.proj")
    yield from _pair("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1")
    yield from _pair("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2")
    yield from _pair("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1")
    yield from _pair("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2")
    yield from _pair("context_embedder", "context_embedder")
    for i in range(blocks):
        x, c, d = f"joint_blocks.{i}.x_block.", f"joint_blocks.{i}.context_block.", f"transformer_blocks.{i}."
        last = i == blocks - 1          # its context block only modulates (pre_only)
        yield from _split(x + "attn.qkv", (d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"), "qkv")
        yield from _split(c + "attn.qkv", (d + "attn.add_q_proj", d + "attn.add_k_proj",
                                           d + "attn.add_v_proj"), "qkv")
        if qk_norm:
            yield Rule(x + "attn.ln_q.weight", (d + "attn.norm_q.weight",))
            yield Rule(x + "attn.ln_k.weight", (d + "attn.norm_k.weight",))
            yield Rule(c + "attn.ln_q.weight", (d + "attn.norm_added_q.weight",))
            yield Rule(c + "attn.ln_k.weight", (d + "attn.norm_added_k.weight",))
        yield from _pair(x + "attn.proj", d + "attn.to_out.0")
        if not last:
            yield from _pair(c + "attn.proj", d + "attn.to_add_out")
        if i in dual_attention:
            yield from _split(x + "attn2.qkv", (d + "attn2.to_q", d + "attn2.to_k", d + "attn2.to_v"),
                              "qkv")
            if qk_norm:
                yield Rule(x + "attn2.ln_q.weight", (d + "attn2.norm_q.weight",))
                yield Rule(x + "attn2.ln_k.weight", (d + "attn2.norm_k.weight",))
            yield from _pair(x + "attn2.proj", d + "attn2.to_out.0")
        yield from _pair(x + "adaLN_modulation.1", d + "norm1.linear")
        yield from _pair(c + "adaLN_modulation.1", d + "norm1_context.linear",
                         "swap" if last else "same")
        yield from _pair(x + "mlp.fc1", d + "ff.net.0.proj")
        yield from _pair(x + "mlp.fc2", d + "ff.net.2")
        if not last:
            yield from _pair(c + "mlp.fc1", d + "ff_context.net.0.proj")
            yield from _pair(c + "mlp.fc2", d + "ff_context.net.2")
    yield from _pair("final_layer.linear", "proj_out")
    yield from _pair("final_layer.adaLN_modulation.1", "norm_out.linear", "swap")


# Z-Image's original names (Tongyi-MAI's, ComfyUI's files) -> diffusers': the prefixes of
# the final layer and the patch embedder, then parts of every attention's names
_ZIMAGE_PREFIXES = (("final_layer.", "all_final_layer.2-1."), ("x_embedder.", "all_x_embedder.2-1."))
_ZIMAGE_PARTS = ((".attention.out.", ".attention.to_out.0."),
                 (".attention.q_norm.", ".attention.norm_q."),
                 (".attention.k_norm.", ".attention.norm_k."))


def _zimage_name(key: str, to_diffusers: bool) -> str:
    for original, diffusers in _ZIMAGE_PREFIXES:
        old, new = (original, diffusers) if to_diffusers else (diffusers, original)
        if key.startswith(old):
            return new + key[len(old):]
    for original, diffusers in _ZIMAGE_PARTS:
        old, new = (original, diffusers) if to_diffusers else (diffusers, original)
        key = key.replace(old, new)
    return key


def zimage_rules(keys: list[str], original: bool) -> Iterator[Rule]:
    """Every tensor of a Z-Image transformer with these names: renamed, and each attention's
    q, k and v fused into one ``qkv``."""
    fused = ".attention.qkv.weight" if original else ".attention.to_q.weight"
    for key in keys:
        if key.endswith(fused):
            stem = key[:-len(fused)] + ".attention."
            yield Rule(stem + "qkv.weight", tuple(f"{stem}to_{x}.weight" for x in "qkv"), "qkv")
        elif original:
            yield Rule(key, (_zimage_name(key, to_diffusers=True),))
        elif not key.endswith((".attention.to_k.weight", ".attention.to_v.weight")):
            yield Rule(_zimage_name(key, to_diffusers=False), (key,))


def _blocks(keys: list[str], prefix: str) -> int:
    numbers = {int(m[1]) for k in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(numbers) + 1 if numbers else 0


def _numbers(keys: list[str], prefix: str, part: str) -> tuple[int, ...]:
    return tuple(sorted({int(m[1]) for k in keys
                         if (m := re.match(re.escape(prefix) + r"(\d+)\." + part, k))}))


def _rules(family: str, keys: list[str], original: bool) -> Iterator[Rule]:
    """The table of a transformer of ``family`` with the blocks ``keys`` name."""
    if family == ZIMAGE:
        return zimage_rules(keys, original)
    if family == CHROMA:
        double, single = (("double_blocks.", "single_blocks.") if original else
                          ("transformer_blocks.", "single_transformer_blocks."))
        return chroma_rules(_blocks(keys, double), _blocks(keys, single),
                            _blocks(keys, "distilled_guidance_layer.layers."))
    if family in (FLUX, FLUX_FILL, FLUX_CONTROL):
        if original:
            return flux_rules(_blocks(keys, "double_blocks."), _blocks(keys, "single_blocks."),
                              guidance="guidance_in.in_layer.weight" in keys)
        return flux_rules(_blocks(keys, "transformer_blocks."), _blocks(keys, "single_transformer_blocks."),
                          guidance=any(".guidance_embedder." in k for k in keys))
    prefix = "joint_blocks." if original else "transformer_blocks."
    return sd3_rules(_blocks(keys, prefix), _numbers(keys, prefix, r"(x_block\.)?attn2\."),
                     qk_norm=any(".ln_q." in k or ".norm_q." in k for k in keys))


def is_original(keys: list[str]) -> bool:
    """Whether these are the original names (else diffusers')."""
    return any(k.removeprefix(PREFIX).startswith(("double_blocks.", "joint_blocks.")) or
               k.endswith(".attention.qkv.weight") for k in keys)


def _swap(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def to_diffusers(family: str, original: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Diffusers' names for an original-layout transformer (``model.diffusion_model.``
    prefix or none); KeyError naming a tensor the file lacks."""
    state = {k.removeprefix(PREFIX): v for k, v in original.items()}
    width = state["img_in.weight"].shape[0] if family in (FLUX, FLUX_FILL, FLUX_CONTROL, CHROMA) else 0
    out: dict[str, torch.Tensor] = {}
    for rule in _rules(family, list(state), original=True):
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


def to_original(family: str, diffusers: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original names for a diffusers transformer's state dict."""
    out = {}
    for rule in _rules(family, list(diffusers), original=False):
        parts = [diffusers[name] for name in rule.diffusers]
        out[rule.original] = _swap(parts[0]) if rule.fuse == "swap" else torch.cat(parts, dim=0)
    return out
