"""A miniature random-weight Flux.1 pipeline, built by our own code (as tiny.py builds SD).

The real parts of Flux at a width of 32: a ``FluxTransformer2DModel`` (one double-stream
and one single-stream block, guidance embedding as in Flux.1-dev), a 16-channel
``AutoencoderKL`` with Flux's shift and scale, a CLIP text encoder (pooled prompt) with
the tiny CLIP tokenizer, a T5 encoder with a T5 tokenizer made here from a small
Unigram vocabulary, and ``FlowMatchEulerDiscreteScheduler``. Saved with
``save_pretrained`` as safetensors: an ordinary diffusers folder with ``model_index.json``
naming ``FluxPipeline``, loaded by the same loader as a user's Flux folder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxControlPipeline,
                       FluxFillPipeline, FluxPipeline, FluxTransformer2DModel)
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import CLIPTextModel, T5Config, T5EncoderModel, T5TokenizerFast

from .tiny import (_WORDS, MAX_TOKENS, SEED, TEXT_HIDDEN, VAE_CHANNELS, _save_atomically,
                   _text_config, _write_tokenizer)

FLUX_LATENT_CHANNELS = 16
FLUX_VAE_SCALING = 0.3611      # Flux.1's VAE config
FLUX_VAE_SHIFT = 0.1159
T5_MAX_TOKENS = 32             # Flux pads T5 prompts to max_sequence_length (512 for dev)
VAE_SAMPLE_SIZE = 64           # the side the tiny model "was trained at" (native_side)


def t5_encoder(vocab_size: int, width: int = TEXT_HIDDEN) -> T5EncoderModel:
    """A two-layer T5 encoder over ``t5_tokenizer``'s vocabulary (Flux, SD3 and Chroma)."""
    return T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=width, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0))


def t5_tokenizer(dest: Path) -> T5TokenizerFast:
    """A T5-style tokenizer (Unigram, "▁" word starts, </s> appended) over a tiny vocabulary:
    whole words for ``_WORDS``, single letters and digits for the rest."""
    pieces = ["<pad>", "</s>", "<unk>"]
    pieces += [f"\u2581{w}" for w in _WORDS]
    pieces += ["\u2581", *"abcdefghijklmnopqrstuvwxyz0123456789.,!?-'"]
    vocab = [(p, 0.0 if i < 3 else -float(len(p))) for i, p in enumerate(pieces)]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Lowercase(),
                                                 normalizers.Replace(" ", "\u2581")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always",
                                                       split=True)
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    fast = T5TokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", unk_token="<unk>",
                           pad_token="<pad>", extra_ids=0, model_max_length=T5_MAX_TOKENS)
    fast.save_pretrained(str(dest))
    return T5TokenizerFast.from_pretrained(str(dest))


def flow_vae(scaling: float = FLUX_VAE_SCALING, shift: float = FLUX_VAE_SHIFT) -> AutoencoderKL:
    """The 16-channel VAE of the flow-matching families (Flux, SD3), at a width of 16-32."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=FLUX_LATENT_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_CHANNELS),
        block_out_channels=VAE_CHANNELS, layers_per_block=1, norm_num_groups=8,
        sample_size=VAE_SAMPLE_SIZE, scaling_factor=scaling, shift_factor=shift,
        use_quant_conv=False, use_post_quant_conv=False)


def _tiny_flux(out: Path, seed: int, variant: str = "") -> None:
    """A tiny Flux.1-dev-shaped pipeline written to ``out``. ``variant`` "fill": FLUX.1-Fill's,
    whose transformer also reads the masked image's latents and the mask, folded into the
    latent's patches (a vae_scale_factor x vae_scale_factor block of mask pixels per
    latent pixel), on its input; "control": FLUX.1-Depth/Canny-dev's, which reads a control
    image's latents beside the picture's."""
    torch.manual_seed(seed)
    tokenizer = _write_tokenizer(out / "tokenizer")
    text_encoder = CLIPTextModel(_text_config(
        len(tokenizer), tokenizer.eos_token_id, tokenizer.bos_token_id))
    tokenizer_2 = t5_tokenizer(out / "tokenizer_2")
    text_encoder_2 = t5_encoder(len(tokenizer_2))
    packed = 4 * FLUX_LATENT_CHANNELS
    scale = 2 ** (len(VAE_CHANNELS) - 1)
    inputs = {"": packed, "fill": 2 * packed + 4 * scale * scale, "control": 2 * packed}
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=inputs[variant],
        out_channels=packed, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=TEXT_HIDDEN,
        pooled_projection_dim=TEXT_HIDDEN, guidance_embeds=True, axes_dims_rope=(4, 4, 8))
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    cls = {"": FluxPipeline, "fill": FluxFillPipeline, "control": FluxControlPipeline}[variant]
    pipe = cls(scheduler=scheduler, vae=flow_vae(), text_encoder=text_encoder,
               tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
               transformer=transformer)
    pipe.save_pretrained(out, safe_serialization=True)


def build_tiny_flux_model(dest: Path) -> Path:
    """Write a tiny Flux.1-dev-shaped ``FluxPipeline`` folder to ``dest``."""
    return _save_atomically(dest, lambda out: _tiny_flux(out, SEED + 10))


def build_tiny_flux_fill_model(dest: Path) -> Path:
    """Write a tiny FLUX.1-Fill-dev-shaped ``FluxFillPipeline`` folder to ``dest``."""
    return _save_atomically(dest, lambda out: _tiny_flux(out, SEED + 15, "fill"))


def build_tiny_flux_control_model(dest: Path) -> Path:
    """Write a tiny FLUX.1-Depth-dev-shaped ``FluxControlPipeline`` folder to ``dest``."""
    return _save_atomically(dest, lambda out: _tiny_flux(out, SEED + 17, "control"))


__all__ = ["build_tiny_flux_model", "build_tiny_flux_fill_model", "build_tiny_flux_control_model",
           "MAX_TOKENS", "T5_MAX_TOKENS"]
