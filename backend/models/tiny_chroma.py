"""A miniature random-weight Chroma pipeline, built by our own code (as tiny_flux.py builds
Flux).

Chroma is Flux.1-schnell's architecture with its modulation moved out of the blocks into
one small network (the "approximator") and CLIP dropped: a ``ChromaTransformer2DModel`` at
a width of 32 (one double-stream and one single-stream block), Flux's 16-channel VAE, the
T5 encoder and tokenizer of tiny_flux.py, and ``FlowMatchEulerDiscreteScheduler``. Saved
with ``save_pretrained`` as safetensors: a diffusers folder whose ``model_index.json``
names ``ChromaPipeline``, loaded like a user's Chroma folder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

from .tiny import SEED, TEXT_HIDDEN, _save_atomically
from .tiny_flux import FLUX_LATENT_CHANNELS, flow_vae, t5_encoder, t5_tokenizer


def build_tiny_chroma_model(dest: Path) -> Path:
    """Write a tiny Chroma-shaped ``ChromaPipeline`` folder to ``dest``."""
    def write(out: Path) -> None:
        torch.manual_seed(SEED + 30)
        tokenizer = t5_tokenizer(out / "tokenizer")
        text_encoder = t5_encoder(len(tokenizer))
        transformer = ChromaTransformer2DModel(
            patch_size=1, in_channels=4 * FLUX_LATENT_CHANNELS, num_layers=1,
            num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=TEXT_HIDDEN, axes_dims_rope=(4, 4, 8),
            approximator_num_channels=16, approximator_hidden_dim=32, approximator_layers=1)
        scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
            max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
        pipe = ChromaPipeline(scheduler=scheduler, vae=flow_vae(), text_encoder=text_encoder,
                              tokenizer=tokenizer, transformer=transformer)
        pipe.save_pretrained(out, safe_serialization=True)

    return _save_atomically(dest, write)
