"""A miniature random-weight Z-Image pipeline, built by our own code (as tiny_flux.py
builds Flux).

Z-Image's real parts at a width of 32: a ``ZImageTransformer2DModel`` (single-stream DiT
over 2x2 latent patches, one refiner and one main layer), Flux's 16-channel VAE (Z-Image
uses it as it is), a ``Qwen3Model`` text encoder of two layers (the pipeline reads the
hidden states before the last), a byte-level BPE tokenizer with Qwen's chat template made
here (no merges: one token per byte, so any prompt encodes without a vocabulary file from
the hub), and ``FlowMatchEulerDiscreteScheduler``. Saved with ``save_pretrained`` as
safetensors: a diffusers folder whose ``model_index.json`` names ``ZImagePipeline``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

from .tiny import SEED, TEXT_HIDDEN, _save_atomically
from .tiny_flux import FLUX_LATENT_CHANNELS, flow_vae

QWEN_MAX_TOKENS = 64          # Z-Image pads prompts (with the chat template) to 512
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Qwen3's chat template, cut to what Z-Image's prompt encoding uses (one user turn and
# the generation prompt; the pipeline asks for thinking, which adds nothing).
CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
                 "{{ message['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def qwen_tokenizer(dest: Path) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2's byte alphabet, as Qwen's) without merges, with
    Qwen's special tokens and chat template."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: index for index, token in enumerate(sorted(alphabet))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]), model_max_length=QWEN_MAX_TOKENS)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(dest))
    return PreTrainedTokenizerFast.from_pretrained(str(dest))


def build_tiny_zimage_model(dest: Path) -> Path:
    """Write a tiny Z-Image-shaped ``ZImagePipeline`` folder to ``dest``."""
    def write(out: Path) -> None:
        torch.manual_seed(SEED + 40)
        tokenizer = qwen_tokenizer(out / "tokenizer")
        text_encoder = Qwen3Model(Qwen3Config(
            vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
            max_position_embeddings=QWEN_MAX_TOKENS, pad_token_id=tokenizer.pad_token_id))
        transformer = ZImageTransformer2DModel(
            all_patch_size=(2,), all_f_patch_size=(1,), in_channels=FLUX_LATENT_CHANNELS, dim=32,
            n_layers=1, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=TEXT_HIDDEN,
            axes_dims=[4, 6, 6], axes_lens=[256, 64, 64])
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
        pipe = ZImagePipeline(scheduler=scheduler, vae=flow_vae(), text_encoder=text_encoder,
                              tokenizer=tokenizer, transformer=transformer)
        pipe.save_pretrained(out, safe_serialization=True)

    return _save_atomically(dest, write)
