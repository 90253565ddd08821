"""Miniature random-weight Stable Diffusion pipelines, built by our own code.

They have the real architectures (UNet with cross-attention, AutoencoderKL,
CLIP text encoders, ControlNet, T2I-Adapter) at a width of 32-64 channels, so every code
path a real model takes is taken, in well under a second per 64x64 job on a
CPU. The weights are random: the pictures are noise.

Everything is written with ``save_pretrained`` as safetensors, so the result
is an ordinary diffusers folder loaded by the same loader as user models.
Builds are deterministic: the same builder gives the same bytes twice.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    PNDMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionDepth2ImgPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    T2IAdapter,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

SEED = 20240611
MARKER_FILE = "ATELIER_TINY_MODEL.md"
MARKER_TEXT = (
    "# Atelier tiny test model\n\n"
    "Random weights, produces noise. Built by backend/models/tiny.py for tests and\n"
    "demos of the daemon without a real checkpoint. Safe to delete; it is rebuilt on use.\n"
)

TEXT_HIDDEN = 32          # CLIP hidden size of the tiny text encoders
MAX_TOKENS = 77           # SD's prompt length; pipelines break without it
UNET_CHANNELS = (32, 64)
# Four VAE levels keep SD's 8x latent downscale, so pixel/latent arithmetic matches real models.
VAE_CHANNELS = (16, 16, 32, 32)
VAE_SCALING = 0.18215     # SD1.x/2.x latent scaling factor
SDXL_VAE_SCALING = 0.13025

# Words that get whole-word BPE tokens; anything else falls back to single characters.
_WORDS = (
    "a", "an", "the", "of", "and", "with", "in", "on", "photo", "painting", "cat", "dog",
    "red", "blue", "green", "stone", "wall", "brick", "wood", "texture", "seamless", "tile",
    "grass", "sky", "portrait", "landscape", "house", "tree", "metal", "rust", "moss", "sand",
)


# ------------------------------------------------------------------ tokenizer

def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for raw bytes (index = byte value)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def tokenizer_files() -> tuple[dict[str, int], list[str]]:
    """A small CLIP-style byte-level BPE vocabulary and merge list."""
    symbols = _byte_symbols()
    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        if token not in vocab:
            vocab[token] = len(vocab)

    for s in symbols:
        add(s)
    for s in symbols:
        add(s + "</w>")
    merges: list[str] = []
    for word in _WORDS:
        pieces = list(word)
        pieces[-1] += "</w>"
        merged = pieces[0]
        for piece in pieces[1:]:
            rule = f"{merged} {piece}"
            if rule not in merges:
                merges.append(rule)
            merged += piece
            add(merged)
    add("<|startoftext|>")
    add("<|endoftext|>")
    return vocab, merges


def _write_tokenizer(dest: Path, pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    dest.mkdir(parents=True, exist_ok=True)
    vocab, merges = tokenizer_files()
    (dest / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0), "utf-8")
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", "utf-8")
    (dest / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": pad_token}), "utf-8")
    (dest / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_TOKENS,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": pad_token,
        "do_lower_case": True}, indent=1), "utf-8")
    return CLIPTokenizer.from_pretrained(str(dest))


# ---------------------------------------------------------------- components

def _text_config(vocab_size: int, eos_id: int, bos_id: int, projection_dim: int = 0) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=TEXT_HIDDEN, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
        hidden_act="quick_gelu", projection_dim=projection_dim or TEXT_HIDDEN,
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=eos_id,
    )


def _vae(scaling: float) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_CHANNELS),
        block_out_channels=VAE_CHANNELS, layers_per_block=1, norm_num_groups=8,
        sample_size=64, scaling_factor=scaling,
    )


def _unet(in_channels: int = 4, cross_attention_dim: int = TEXT_HIDDEN, **extra) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4,
        block_out_channels=UNET_CHANNELS, layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=32,
        **extra,
    )


def _sd_scheduler() -> PNDMScheduler:
    # SD1.5's own scheduler settings.
    return PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1,
                         set_alpha_to_one=False)


def _save_atomically(dest: Path, write: Callable[[Path], None]) -> Path:
    """Build into a sibling temp folder and rename, so a crash never leaves half a model
    and two processes building the same model at once both end up with a whole one."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".building-", dir=dest.parent))
    try:
        write(tmp)
        (tmp / MARKER_FILE).write_text(MARKER_TEXT, "utf-8")
        if dest.exists() and not (dest / MARKER_FILE).is_file():
            shutil.rmtree(dest)      # an unfinished folder from an older layout or a crash
        try:
            tmp.rename(dest)
        except OSError:
            if not (dest / MARKER_FILE).is_file():   # not another builder winning the race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dest


# ------------------------------------------------------------------ builders

def build_tiny_model(dest: Path) -> Path:
    """Write a tiny SD1.5-shaped ``StableDiffusionPipeline`` folder to ``dest``."""
    def write(out: Path) -> None:
        torch.manual_seed(SEED)
        tokenizer = _write_tokenizer(out / "tokenizer")
        text_encoder = CLIPTextModel(_text_config(
            len(tokenizer), tokenizer.eos_token_id, tokenizer.bos_token_id))
        pipe = StableDiffusionPipeline(
            vae=_vae(VAE_SCALING), text_encoder=text_encoder, tokenizer=tokenizer,
            unet=_unet(), scheduler=_sd_scheduler(), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)
        pipe.save_pretrained(out, safe_serialization=True)

    return _save_atomically(dest, write)


def build_tiny_controlnet(dest: Path, unet_folder: Path, seed: int = SEED + 1) -> Path:
    """Write a tiny ``ControlNetModel`` matching the UNet in ``unet_folder``, its random
    weights drawn from ``seed`` (one per control kind, so each kind steers differently).

    ``unet_folder`` is either a UNet folder or a pipeline folder with a ``unet/`` inside.
    """
    unet_folder = Path(unet_folder)
    if (unet_folder / "unet" / "config.json").exists():
        unet_folder = unet_folder / "unet"

    def write(out: Path) -> None:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_pretrained(str(unet_folder))
        # Fresh weights rather than a copy of the UNet's, so the control branch is not a no-op twin.
        controlnet = ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=(8, 8, 16, 16), load_weights_from_unet=False)
        _randomise_zero_convolutions(controlnet)
        controlnet.save_pretrained(out, safe_serialization=True)

    return _save_atomically(dest, write)


def build_tiny_adapter(dest: Path, unet_folder: Path) -> Path:
    """Write a tiny depth ``T2IAdapter`` matching the tiny UNet in ``unet_folder``.

    The tiny UNets (a plain down block with a downsampler, then a cross-attention block)
    take their adapter residuals at 1/2 and 1/2 of the latent size, the layout of SDXL's
    adapters (``full_adapter_xl``: 1/16 of the image, no further downsampling here).
    """
    unet_folder = Path(unet_folder)
    if (unet_folder / "unet" / "config.json").exists():
        unet_folder = unet_folder / "unet"
    config = UNet2DConditionModel.load_config(str(unet_folder))
    if tuple(config["down_block_types"]) != ("DownBlock2D", "CrossAttnDownBlock2D"):
        raise ValueError(f"{unet_folder} is not a tiny UNet: {config['down_block_types']}")

    def write(out: Path) -> None:
        torch.manual_seed(SEED + 4)
        adapter = T2IAdapter(in_channels=3, channels=list(config["block_out_channels"]),
                             num_res_blocks=1, downscale_factor=16, adapter_type="full_adapter_xl")
        adapter.save_pretrained(out, safe_serialization=True)

    return _save_atomically(dest, write)


def _randomise_zero_convolutions(controlnet: ControlNetModel) -> None:
    """A new ControlNet's output convolutions start at zero, so it adds nothing to the UNet;
    a tiny one must have an effect for depth tests to mean anything."""
    zeroed = [controlnet.controlnet_cond_embedding.conv_out, *controlnet.controlnet_down_blocks,
              controlnet.controlnet_mid_block]
    with torch.no_grad():
        for conv in zeroed:
            conv.weight.normal_(0.0, 0.3)
            conv.bias.normal_(0.0, 0.3)


def build_tiny_sdxl_model(dest: Path) -> Path:
    """Write a tiny SDXL-shaped ``StableDiffusionXLPipeline`` folder (two text encoders,
    UNet with text-and-time addition embeddings)."""
    def write(out: Path) -> None:
        torch.manual_seed(SEED + 2)
        tokenizer = _write_tokenizer(out / "tokenizer")
        # SDXL's second tokenizer pads with "!" instead of end-of-text.
        tokenizer_2 = _write_tokenizer(out / "tokenizer_2", pad_token="!")
        eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
        text_encoder = CLIPTextModel(_text_config(len(tokenizer), eos, bos))
        text_encoder_2 = CLIPTextModelWithProjection(
            _text_config(len(tokenizer_2), eos, bos, projection_dim=TEXT_HIDDEN))
        time_dim = 8
        unet = _unet(
            cross_attention_dim=2 * TEXT_HIDDEN, addition_embed_type="text_time",
            addition_time_embed_dim=time_dim,
            # six size/crop numbers, each embedded, plus the pooled text embedding
            projection_class_embeddings_input_dim=6 * time_dim + TEXT_HIDDEN,
            transformer_layers_per_block=(1, 2))
        scheduler = EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
        pipe = StableDiffusionXLPipeline(
            vae=_vae(SDXL_VAE_SCALING), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
            tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
            force_zeros_for_empty_prompt=True)
        pipe.save_pretrained(out, safe_serialization=True)

    return _save_atomically(dest, write)


def build_tiny_depth_model(dest: Path) -> Path:
    """Write a tiny SD2-depth-shaped ``StableDiffusionDepth2ImgPipeline`` folder.

    The UNet takes 5 input channels (4 latent + depth). There is no depth estimator:
    jobs must supply a depth map, which is how Atelier's hosts use it.
    """
    def write(out: Path) -> None:
        torch.manual_seed(SEED + 3)
        tokenizer = _write_tokenizer(out / "tokenizer")
        text_encoder = CLIPTextModel(_text_config(
            len(tokenizer), tokenizer.eos_token_id, tokenizer.bos_token_id))
        pipe = StableDiffusionDepth2ImgPipeline(
            vae=_vae(VAE_SCALING), text_encoder=text_encoder, tokenizer=tokenizer,
            unet=_unet(in_channels=5), scheduler=_sd_scheduler(),
            depth_estimator=None, feature_extractor=None)
        pipe.save_pretrained(out, safe_serialization=True)

    return _save_atomically(dest, write)
