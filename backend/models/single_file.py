"""Single-file checkpoints as A1111 and ComfyUI keep them (original LDM key names,
``.safetensors`` only), loaded offline with the config folders shipped in
``configs/<family>/``.

diffusers' ``from_single_file`` fetches configs from the hub unless it is given a
local ``config=`` folder; it always gets one here. The shipped folders hold no
tokenizer vocabulary (CLIP's is ~1.6 MB of OpenAI's data), so the tokenizer comes
from ``$ATELIER_HOME/tokenizers/clip/`` or from the Hugging Face cache, see
``find_clip_tokenizer``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import torch
from diffusers import ControlNetModel, DiffusionPipeline
from safetensors import SafetensorError, safe_open
from transformers import CLIPTokenizer

from protocol.errors import ErrorCode, ProtocolError

from . import families
from .sources import check_safetensors_file, hf_snapshot

CONFIGS = Path(__file__).parent / "configs"
CONFIG_FOLDERS = {families.SD15: "sd15", families.SD15_INPAINT: "sd15_inpaint",
                  families.SDXL: "sdxl", families.SDXL_INPAINT: "sdxl_inpaint"}
CONTROLNET_CONFIGS = {768: "controlnet_sd15"}   # by text embedding width
MAX_TOKENS = 77

# Where a CLIP BPE vocabulary (vocab.json + merges.txt) may already sit in the HF cache:
# (repo id, subfolder). All SD1.x/SDXL tokenizers share this vocabulary.
TOKENIZER_REPOS = (
    ("openai/clip-vit-large-patch14", ""),
    ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer"),
    ("runwayml/stable-diffusion-v1-5", "tokenizer"),
    ("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer"),
)
TOKENIZER_FILES = ("vocab.json", "merges.txt")


def _unreadable(path: Path, exc: Exception, field: str) -> ProtocolError:
    return ProtocolError(ErrorCode.MODEL_LOAD_FAILED,
                         f"{path.name} is not a readable safetensors file: {exc}", field=field)


def _header(path: Path, field: str = "model") -> tuple[list[str], Optional[tuple[int, ...]]]:
    """Tensor names and the UNet conv_in shape, read from the header only; ProtocolError
    (MODEL_LOAD_FAILED) for anything that is not a readable safetensors file."""
    check_safetensors_file(path, field)
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            conv_in = (tuple(f.get_slice(families.LDM_CONV_IN).get_shape())
                       if families.LDM_CONV_IN in keys else None)
    except (SafetensorError, OSError) as exc:
        raise _unreadable(path, exc, field) from exc
    return keys, conv_in


def checkpoint_family(path: Path) -> str:
    """The family of a ``.safetensors`` checkpoint ("unknown" when its tensor names match
    none); ProtocolError(MODEL_LOAD_FAILED) when it is not a readable safetensors file."""
    keys, conv_in = _header(path)
    return families.family_of_checkpoint_keys(keys, conv_in)


def find_clip_tokenizer(home: Path, hf_cache: Path) -> Optional[Path]:
    """A folder holding CLIP's vocab.json and merges.txt, or None."""
    candidates = [home / "tokenizers" / "clip"]
    for repo_id, subfolder in TOKENIZER_REPOS:
        snapshot = hf_snapshot(repo_id, hf_cache)
        if snapshot is not None:
            candidates.append(snapshot / subfolder)
    for folder in candidates:
        if all((folder / name).is_file() for name in TOKENIZER_FILES):
            return folder
    return None


def _missing_tokenizer(family: str, home: Path, hf_cache: Path) -> ProtocolError:
    return ProtocolError(
        ErrorCode.MODEL_LOAD_FAILED,
        f"loading a single-file {family} checkpoint needs the CLIP tokenizer vocabulary "
        f"(vocab.json and merges.txt), which Atelier does not ship. It was looked for in "
        f"{home / 'tokenizers' / 'clip'} and in the Hugging Face cache {hf_cache} "
        f"({', '.join(r for r, _ in TOKENIZER_REPOS)}). Fetch it once with: "
        f"atelier models pull {TOKENIZER_REPOS[0][0]} (downloads only the tokenizer files), "
        f"or copy those two files into {home / 'tokenizers' / 'clip'}.", field="model")


def _tokenizers(config: Path, family: str, home: Path, hf_cache: Path) -> dict[str, CLIPTokenizer]:
    """Tokenizers to pass to from_single_file when ``config`` has none of its own."""
    if (config / "tokenizer" / "vocab.json").is_file():
        return {}
    folder = find_clip_tokenizer(home, hf_cache)
    if folder is None:
        raise _missing_tokenizer(family, home, hf_cache)
    tokenizers = {"tokenizer": CLIPTokenizer.from_pretrained(str(folder), model_max_length=MAX_TOKENS)}
    if (config / "text_encoder_2").is_dir():
        # SDXL's OpenCLIP-G tokenizer: same vocabulary, pads with "!".
        tokenizers["tokenizer_2"] = CLIPTokenizer.from_pretrained(
            str(folder), model_max_length=MAX_TOKENS, pad_token="!")
    return tokenizers


def _unet_width(config: Path) -> int:
    unet = json.loads((config / "unet" / "config.json").read_text("utf-8"))
    return int(unet["block_out_channels"][0])


def config_folder(path: Path, family: str, conv_in: Optional[tuple[int, ...]],
                  tiny_config: Optional[Path]) -> Path:
    """The config folder describing ``path``: the shipped one for its family, or the tiny
    model's own folder for a tiny-shaped checkpoint (``tiny_config``)."""
    if family not in CONFIG_FOLDERS:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED,
            f"{path.name} looks like a {family} checkpoint; single files of these families load: "
            f"{', '.join(CONFIG_FOLDERS)}. Use a diffusers folder or Hugging Face id instead.",
            field="model")
    shipped = CONFIGS / CONFIG_FOLDERS[family]
    width = conv_in[0] if conv_in else None
    if width == _unet_width(shipped):
        return shipped
    if tiny_config is not None and width == _unet_width(tiny_config) and family == families.SD15:
        return tiny_config
    raise ProtocolError(
        ErrorCode.MODEL_LOAD_FAILED,
        f"{path.name}: its UNet is {width} channels wide where a {family} UNet has "
        f"{_unet_width(shipped)}; it is not a standard {family} checkpoint", field="model")


def prepare_single_file(path: Path, dtype: torch.dtype, home: Path, hf_cache: Path,
                        tiny_config: Optional[Path] = None
                        ) -> tuple[str, Callable[[], DiffusionPipeline]]:
    """Check an original-layout ``.safetensors`` checkpoint (family, config folder,
    tokenizer) from its header; returns (family, a function loading the pipeline)."""
    keys, conv_in = _header(path)
    family = families.family_of_checkpoint_keys(keys, conv_in)
    config = config_folder(path, family, conv_in, tiny_config)
    tokenizers = _tokenizers(config, family, home, hf_cache)
    cls = families.base_class(family)

    def load() -> DiffusionPipeline:
        try:
            return cls.from_single_file(
                str(path), config=str(config), local_files_only=True, torch_dtype=dtype,
                **tokenizers, **families.pipeline_extras(family))
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED,
                                f"could not load {path.name} as {family}: {exc}", field="model") from exc

    return family, load


def load_single_file_controlnet(path: Path, dtype: torch.dtype,
                                tiny_config: Optional[Path] = None) -> ControlNetModel:
    """Load a single-file SD1.x ControlNet (original ``control_model.*`` keys); one whose
    cross-attention matches the tiny ControlNet folder ``tiny_config`` uses that config."""
    check_safetensors_file(path, field="control.model")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            context = next((tuple(f.get_slice(k).get_shape()) for k in keys
                            if k.endswith("attn2.to_k.weight")), None)
    except (SafetensorError, OSError) as exc:
        raise _unreadable(path, exc, "control.model") from exc
    configs = {width: CONFIGS / name for width, name in CONTROLNET_CONFIGS.items()}
    if tiny_config is not None:
        tiny_width = json.loads((tiny_config / "config.json").read_text("utf-8"))["cross_attention_dim"]
        configs.setdefault(tiny_width, tiny_config)
    width = context[1] if context else None
    if families.is_transformer_controlnet(keys):
        raise ProtocolError(ErrorCode.UNSUPPORTED,
                            f"{path.name} is a ControlNet for Flux or SD3 transformers: it fits no "
                            f"SD1.x/SDXL model (name it in a job on a Flux model)",
                            field="control.model")
    if families.family_of_checkpoint_keys(keys, None) != families.CONTROLNET or width not in configs:
        raise ProtocolError(ErrorCode.UNSUPPORTED,
                            f"{path.name} is not an SD1.x ControlNet checkpoint; other ControlNets load "
                            f"from a diffusers folder or Hugging Face id", field="control.model")
    try:
        return ControlNetModel.from_single_file(
            str(path), config=str(configs[width]), local_files_only=True, torch_dtype=dtype)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED, f"could not load ControlNet {path.name}: {exc}",
                            field="control.model") from exc
