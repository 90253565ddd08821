"""A miniature random-weight Stable Diffusion 3 pipeline, built by our own code (as
tiny.py builds SD and tiny_flux.py builds Flux).

SD3's real parts at a width of 32-64: an ``SD3Transformer2DModel`` (MMDiT, 2x2 patches,
one joint block), the 16-channel VAE with SD3's shift and scale, two CLIP text encoders
with projection (their pooled outputs joined), a T5 encoder with the T5 tokenizer made in
tiny_flux.py, and ``FlowMatchEulerDiscreteScheduler``. Saved with ``save_pretrained`` as
safetensors: a diffusers folder whose ``model_index.json`` names
``StableDiffusion3Pipeline``, loaded like a user's SD3/SD3.5 folder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from transformers import CLIPTextModelWithProjection

from .tiny import SEED, TEXT_HIDDEN, _save_atomically, _text_config, _write_tokenizer
from .tiny_flux import flow_vae, t5_encoder, t5_tokenizer

SD3_VAE_SCALING = 1.5305       # SD3's VAE config
SD3_VAE_SHIFT = 0.0609
T5_WIDTH = 2 * TEXT_HIDDEN     # SD3 pads the two CLIPs' joined embeddings to T5's width


def build_tiny_sd3_model(dest: Path) -> Path:
    """Write a tiny SD3-shaped ``StableDiffusion3Pipeline`` folder to ``dest``."""
    def write(out: Path) -> None:
        torch.manual_seed(SEED + 20)
        tokenizer = _write_tokenizer(out / "tokenizer")
        tokenizer_2 = _write_tokenizer(out / "tokenizer_2", pad_token="!")
        eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
        text_encoder = CLIPTextModelWithProjection(_text_config(len(tokenizer), eos, bos))
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(len(tokenizer_2), eos, bos))
        tokenizer_3 = t5_tokenizer(out / "tokenizer_3")
        text_encoder_3 = t5_encoder(len(tokenizer_3), T5_WIDTH)
        transformer = SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=1,
            attention_head_dim=8, num_attention_heads=4, joint_attention_dim=T5_WIDTH,
            caption_projection_dim=32, pooled_projection_dim=2 * TEXT_HIDDEN,
            pos_embed_max_size=32)
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
        pipe = StableDiffusion3Pipeline(
            scheduler=scheduler, vae=flow_vae(SD3_VAE_SCALING, SD3_VAE_SHIFT),
            text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
            transformer=transformer)
        pipe.save_pretrained(out, safe_serialization=True)

    return _save_atomically(dest, write)
