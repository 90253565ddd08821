"""Flux.1, Chroma, SD3/SD3.5 and Z-Image as ComfyUI keeps them: the transformer alone in one
``.safetensors`` or GGUF file (``models/unet`` or ``models/diffusion_models``; diffusers'
tensor names or the original ones), with its text encoders
and VAE as files of their own (dit_parts.py finds them); or a whole checkpoint holding some
or all of them. Files stored in fp8 (the transformer or the text encoders) stay fp8 in
memory (fp8_storage.py).

Configs come from the folders shipped in ``configs/`` (chosen from the transformer's
shapes: Flux.1-dev or -schnell, Chroma, SD3 medium, SD3.5 medium or large, Z-Image-Turbo),
or from the tiny model's own folder for a file exported from a tiny model; nothing is
fetched. The T5, CLIP and Qwen tokenizer vocabularies are not shipped; they are looked for
as ``single_file.py`` looks for CLIP's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from diffusers import (AutoencoderKL, ChromaTransformer2DModel, DiffusionPipeline,
                       FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel,
                       SD3Transformer2DModel, ZImageTransformer2DModel)
from safetensors import safe_open
from transformers import (CLIPTokenizer, PreTrainedModel, Qwen2Tokenizer, Qwen3Model,
                          T5EncoderModel, T5TokenizerFast)

from protocol.errors import ErrorCode, ProtocolError

from . import dit_keys, families
from .dit_parts import PARTS, Part, PartFile, find_part, models_folder, shape_of
from .file_kinds import TensorHeader, read_header
from .fp8_storage import keep_stored, stored_fp8
from .gguf_files import encoder_state, is_gguf, load_gguf_state, quantization, read_gguf_header
from .single_file import (CONFIGS, MAX_TOKENS, TOKENIZER_FILES, checkpoint_family,
                          find_clip_tokenizer)
from .sources import ModelRoots, hf_snapshot

log = logging.getLogger(__name__)
# Qwen3's chat template, cut to the one user turn Z-Image's prompt encoding uses, for a
# tokenizer folder that carries none (the vocabulary files alone)
from .tiny_zimage import CHAT_TEMPLATE as QWEN_CHAT_TEMPLATE

# Where a T5 tokenizer (spiece.model or tokenizer.json) may sit in the HF cache.
T5_TOKENIZER_REPOS = (
    ("google/t5-v1_1-xxl", ""),
    ("black-forest-labs/FLUX.1-dev", "tokenizer_2"),
    ("black-forest-labs/FLUX.1-schnell", "tokenizer_2"),
    ("stabilityai/stable-diffusion-3.5-large", "tokenizer_3"),
    ("stabilityai/stable-diffusion-3.5-medium", "tokenizer_3"),
)
T5_TOKENIZER_FILES = ("spiece.model", "tokenizer.json")
# Where a Qwen tokenizer (Z-Image's Qwen3: Qwen2's byte-level BPE) may sit in the HF cache.
QWEN_TOKENIZER_REPOS = (("Qwen/Qwen3-4B", ""), ("Tongyi-MAI/Z-Image-Turbo", "tokenizer"))
# ComfyUI ships the tokenizers of its text encoders inside its own code, beside its models
# folder: a ComfyUI user has them without fetching anything.
COMFY_TOKENIZERS = {"t5": "comfy/text_encoders/t5_tokenizer", "clip": "comfy/sd1_tokenizer",
                    "qwen": "comfy/text_encoders/qwen25_tokenizer"}
TRANSFORMER_CLASSES = {families.FLUX: FluxTransformer2DModel, families.FLUX_FILL: FluxTransformer2DModel,
                       families.FLUX_CONTROL: FluxTransformer2DModel,
                       families.SD3: SD3Transformer2DModel,
                       families.CHROMA: ChromaTransformer2DModel,
                       families.ZIMAGE: ZImageTransformer2DModel}
# Flux's layout (and its converter's fixed width, which dit_keys.py works around)
FLUX_LAYOUT = (families.FLUX, families.FLUX_FILL, families.FLUX_CONTROL, families.CHROMA)
FLUX_PACKED_LATENT = 64     # a Flux latent's channels, 2x2 patches packed into each token
TINY_MODELS = {families.FLUX: "tiny-flux", families.FLUX_FILL: "tiny-flux-fill",
               families.FLUX_CONTROL: "tiny-flux-control",
               families.SD3: "tiny-sd3", families.CHROMA: "tiny-chroma",
               families.ZIMAGE: "tiny-zimage"}



# ------------------------------------------------------------------ what a file holds

def transformer_header(path: Path) -> TensorHeader:
    """The tensor names and shapes of a ``.safetensors`` or GGUF file."""
    return read_gguf_header(path) if is_gguf(path) else read_header(path)


def file_family(path: Path) -> str:
    """The family of a single file, a GGUF one included (gguf_files.py). A Flux transformer
    whose input takes its packed latent and one more image's (128 channels) is a
    FLUX.1-Depth/Canny-dev control transformer's; one that takes more is FLUX.1-Fill's,
    which also takes the mask."""
    family = (families.family_of_checkpoint_keys(transformer_header(path).shapes, None)
              if is_gguf(path) else checkpoint_family(path))
    if family == families.FLUX:
        shape = shape_of(transformer_header(path), "img_in.weight", "x_embedder.weight")
        if shape is not None and shape[-1] == 2 * FLUX_PACKED_LATENT:
            return families.FLUX_CONTROL
        if shape is not None and shape[-1] > 2 * FLUX_PACKED_LATENT:
            return families.FLUX_FILL
    return family


def transformer_width(family: str, header: TensorHeader) -> Optional[int]:
    """The hidden width of a Flux, Chroma, SD3 or Z-Image transformer file, in either naming."""
    names = (("img_in.weight", "x_embedder.weight") if family in FLUX_LAYOUT else
             ("x_embedder.weight", "all_x_embedder.2-1.weight") if family == families.ZIMAGE else
             ("x_embedder.proj.weight", "pos_embed.proj.weight"))
    shape = shape_of(header, *names)
    return shape[0] if shape else None


def _count(header: TensorHeader, *prefixes: str) -> int:
    numbers = set()
    for key in header.shapes:
        key = key.removeprefix(dit_keys.PREFIX)
        for prefix in prefixes:
            if key.startswith(prefix):
                numbers.add(key[len(prefix):].split(".", 1)[0])
    return len(numbers)


def shipped_variant(family: str, header: TensorHeader) -> str:
    """The shipped config folder a full-size transformer file matches."""
    if family == families.CHROMA:
        return "chroma"
    if family == families.FLUX_FILL:
        return "flux_fill"
    if family == families.FLUX_CONTROL:
        return "flux_control"          # Depth-dev and Canny-dev have the same shapes
    if family == families.ZIMAGE:
        return "zimage_turbo"        # the base model has the same shapes
    if family == families.FLUX:
        guided = any("guidance_in." in k or "guidance_embedder." in k for k in header.shapes)
        return "flux_dev" if guided else "flux_schnell"
    layers = _count(header, "joint_blocks.", "transformer_blocks.")
    if layers >= 38:
        return "sd35_large"
    dual = any(".attn2." in k for k in header.shapes)
    return "sd35_medium" if dual else "sd3_medium"


def _config_width(config: Path) -> int:
    cfg = json.loads((config / "transformer" / "config.json").read_text("utf-8"))
    if "dim" in cfg:            # Z-Image
        return int(cfg["dim"])
    return int(cfg["attention_head_dim"]) * int(cfg["num_attention_heads"])


def config_folder(path: Path, family: str, header: TensorHeader,
                  tiny_folder: Callable[[str], Path]) -> Path:
    """The config folder describing a transformer file: the shipped one for its variant,
    or the tiny model's own folder for a file exported from it."""
    width = transformer_width(family, header)
    shipped = CONFIGS / shipped_variant(family, header)
    if width == _config_width(shipped):
        return shipped
    tiny = tiny_folder(TINY_MODELS[family])
    if width == _config_width(tiny):
        return tiny
    raise ProtocolError(
        ErrorCode.MODEL_LOAD_FAILED,
        f"{path.name}: its transformer is {width} wide where a {family} transformer is "
        f"{_config_width(shipped)}; it is not a standard {family} transformer",
        field="model")


# ------------------------------------------------------------------ tokenizers

def comfy_tokenizers(kind: str, installs: Sequence[Path]) -> list[Path]:
    """Where the ComfyUI installations ``installs`` keep their ``kind`` ("t5" or "clip")
    tokenizer."""
    return [install / COMFY_TOKENIZERS[kind] for install in installs]


def comfy_installs(path: Path, search_dirs: Sequence[Path]) -> list[Path]:
    """The ComfyUI folders a transformer file and the model folders may belong to: the
    parent of each ``models`` folder that has ComfyUI's ``comfy`` package beside it."""
    folders = [models_folder(path), *search_dirs]
    return list(dict.fromkeys(f.parent for f in folders
                              if f is not None and (f.parent / "comfy").is_dir()))


def find_t5_tokenizer(home: Path, hf_cache: Path, installs: Sequence[Path] = ()) -> Optional[Path]:
    """A folder holding a T5 tokenizer (spiece.model or tokenizer.json), or None."""
    candidates = [home / "tokenizers" / "t5", *comfy_tokenizers("t5", installs)]
    for repo_id, subfolder in T5_TOKENIZER_REPOS:
        snapshot = hf_snapshot(repo_id, hf_cache)
        if snapshot is not None:
            candidates.append(snapshot / subfolder)
    return next((c for c in candidates if any((c / n).is_file() for n in T5_TOKENIZER_FILES)),
                None)


def find_qwen_tokenizer(home: Path, hf_cache: Path, installs: Sequence[Path] = ()) -> Optional[Path]:
    """A folder holding a Qwen tokenizer, or None: tokenizer.json, or vocab.json and
    merges.txt with the tokenizer_config.json that marks the chat tokens special."""
    candidates = [home / "tokenizers" / "qwen", *comfy_tokenizers("qwen", installs)]
    for repo_id, subfolder in QWEN_TOKENIZER_REPOS:
        snapshot = hf_snapshot(repo_id, hf_cache)
        if snapshot is not None:
            candidates.append(snapshot / subfolder)
    return next((c for c in candidates if (c / "tokenizer.json").is_file() or all(
        (c / n).is_file() for n in ("vocab.json", "merges.txt", "tokenizer_config.json"))), None)


def _qwen_tokenizer(folder: Path) -> Qwen2Tokenizer:
    tokenizer = Qwen2Tokenizer.from_pretrained(str(folder))
    if not tokenizer.chat_template:
        tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def _clip_tokenizer(home: Path, hf_cache: Path, installs: Sequence[Path]) -> Optional[Path]:
    comfy = [c for c in comfy_tokenizers("clip", installs)
             if all((c / name).is_file() for name in TOKENIZER_FILES)]
    return comfy[0] if comfy else find_clip_tokenizer(home, hf_cache)


def _tokenizers(config: Path, family: str, home: Path, hf_cache: Path,
                installs: Sequence[Path] = (), absent: Sequence[str] = ()) -> dict[str, object]:
    """The tokenizers of the pipeline: the config folder's own (a tiny model's), else the
    vocabularies found on this machine (Atelier's home, the ComfyUI ``installs``, the
    Hugging Face cache). ``absent``: the components the model runs without (no tokenizer)."""
    out: dict[str, object] = {}
    for part in PARTS[family]:
        if part.tokenizer is None:
            continue
        if part.component in absent:
            out[part.tokenizer] = None
            continue
        kind = ("t5" if part.model_class is T5EncoderModel else
                "qwen" if part.model_class is Qwen3Model else "clip")
        own = config / part.tokenizer
        if own.is_dir():
            out[part.tokenizer] = {"t5": T5TokenizerFast.from_pretrained, "qwen": _qwen_tokenizer,
                                   "clip": CLIPTokenizer.from_pretrained}[kind](str(own))
            continue
        folder = {"t5": find_t5_tokenizer, "qwen": find_qwen_tokenizer,
                  "clip": _clip_tokenizer}[kind](home, hf_cache, installs)
        if folder is None:
            where = home / "tokenizers" / kind
            repo = {"t5": T5_TOKENIZER_REPOS[0][0], "qwen": QWEN_TOKENIZER_REPOS[0][0],
                    "clip": "openai/clip-vit-large-patch14"}[kind]
            raise ProtocolError(
                ErrorCode.MODEL_LOAD_FAILED,
                f"a single-file {family} model needs the {kind.upper() if kind != 'qwen' else 'Qwen'} "
                f"tokenizer vocabulary, which Atelier does not ship; it was looked for in {where}, "
                f"beside the models folders in a ComfyUI installation ({COMFY_TOKENIZERS[kind]}) "
                f"and in the Hugging Face cache. Fetch it once with: atelier models pull {repo}, "
                f"or copy the tokenizer files into {where}", field="model")
        if kind == "t5":
            out[part.tokenizer] = T5TokenizerFast.from_pretrained(str(folder))
        elif kind == "qwen":
            out[part.tokenizer] = _qwen_tokenizer(folder)
        else:
            pad = {"pad_token": "!"} if part.role == "clip_g" else {}
            out[part.tokenizer] = CLIPTokenizer.from_pretrained(
                str(folder), model_max_length=MAX_TOKENS, **pad)
    return out


# ------------------------------------------------------------------ loading

def read_tensors(source: PartFile) -> dict[str, torch.Tensor]:
    """The tensors of ``source``: a whole file, or those under its prefix (the prefix
    taken off), read one by one, so a whole checkpoint's other parts stay on disk."""
    with safe_open(str(source.path), framework="pt") as f:
        return {key[len(source.prefix):]: f.get_tensor(key) for key in f.keys()
                if key.startswith(source.prefix)}


def _load_encoder(part: Part, source: PartFile, config: Path,
                  dtype: torch.dtype) -> PreTrainedModel:
    """A text encoder from its tensors, through transformers' loader."""
    model_config = part.model_class.config_class.from_pretrained(str(config / part.component))
    if is_gguf(source.path):
        with torch.device("meta"):
            names = part.model_class(model_config)      # for its tensor names only
        state = encoder_state(source.path, names, dtype)
        if part.model_class is T5EncoderModel:          # tied to the shared embedding
            state["encoder.embed_tokens.weight"] = state["shared.weight"]
    else:
        state = read_tensors(source)
    if part.model_class is Qwen3Model:
        # ComfyUI's Qwen3 files are the causal LM's: the model under ``model.``, maybe its head
        state = {k.removeprefix("model."): v for k, v in state.items() if not k.startswith("lm_head.")}
    model, info = part.model_class.from_pretrained(
        None, config=model_config, state_dict=state, torch_dtype=dtype,
        output_loading_info=True)
    missing = set(info["missing_keys"])
    if missing == {"text_projection.weight"}:
        # Flux's clip_l files carry no projection; SD3 uses the identity there (as diffusers does).
        with torch.no_grad():
            model.text_projection.weight.copy_(torch.eye(*model.text_projection.weight.shape))
    elif missing:
        raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED,
                            f"{source.path.name} lacks {len(missing)} tensors of a {part.what} "
                            f"(e.g. {sorted(missing)[0]})", field="model")
    return model


def _load_transformer(source: PartFile, family: str, config: Path,
                      dtype: torch.dtype) -> torch.nn.Module:
    """The transformer of a ``.safetensors`` file (or a whole checkpoint's), or of a GGUF
    one with its weights kept quantized (diffusers' GGUF layers dequantize them to
    ``dtype`` as they run)."""
    gguf = is_gguf(source.path)
    state = load_gguf_state(source.path) if gguf else read_tensors(source)
    if family in FLUX_LAYOUT and dit_keys.is_original(list(state)):
        # diffusers' own Flux and Chroma converters assume full width; SD3's reads it from
        # the tensors.
        state = dit_keys.to_diffusers(family, state)   # quantized rows split and join as they are
    extra = {"quantization_config": quantization(dtype)} if gguf else {}
    return TRANSFORMER_CLASSES[family].from_single_file(
        state, config=str(config), subfolder="transformer", torch_dtype=dtype,
        local_files_only=True, **extra)


@dataclass(frozen=True)
class DiTFiles:
    """A transformer file and where the other parts of its model were found."""
    family: str
    transformer: PartFile
    config: Path
    parts: dict[str, PartFile]      # component -> where its tensors are
    # component ("transformer" too) -> the 8-bit float its tensors are stored in
    fp8: dict[str, torch.dtype] = field(default_factory=dict)
    comfy: tuple[Path, ...] = ()    # ComfyUI installations beside the models (their tokenizers)
    absent: tuple[str, ...] = ()    # optional components found nowhere: the model runs without


def find_dit_files(path: Path, family: str, home: Path, search_dirs: Sequence[Path],
                   roots: ModelRoots, tiny_folder: Callable[[str], Path],
                   named: Sequence[Path] = ()) -> DiTFiles:
    """Check a transformer file (or a whole checkpoint: transformer, and maybe its text
    encoders and VAE, in one file) and find the other parts, reading headers only."""
    header = transformer_header(path)
    whole = any(k.startswith(dit_keys.PREFIX) for k in header.shapes)
    config = config_folder(path, family, header, tiny_folder)
    transformer = PartFile(path, dit_keys.PREFIX if whole else "")
    parts: dict[str, PartFile] = {}
    absent: list[str] = []
    for part in PARTS[family]:
        try:
            parts[part.component] = find_part(part, config, path, named, search_dirs, roots,
                                              header if whole else None)
        except ProtocolError as exc:
            if not (part.optional and exc.code == ErrorCode.MODEL_NOT_FOUND):
                raise
            absent.append(part.component)
    sources = {**({} if is_gguf(path) else {"transformer": transformer}),
               **{component: source for component, source in parts.items()
                  if not is_gguf(source.path)}}
    fp8 = {component: dtype for component, source in sources.items()
           if component != "vae" and (dtype := stored_fp8(source.path, source.prefix)) is not None}
    return DiTFiles(family, transformer, config, parts, fp8,
                    tuple(comfy_installs(path, search_dirs)), tuple(absent))


def prepare_dit_file(files: DiTFiles, dtype: torch.dtype, home: Path,
                     hf_cache: Path) -> Callable[[], DiffusionPipeline]:
    """How to load the pipeline of ``files`` (tokenizers are checked now)."""
    family, config = files.family, files.config
    tokenizers = _tokenizers(config, family, home, hf_cache, files.comfy, files.absent)
    cls = families.base_class(family)
    for part in PARTS[family]:
        if part.component in files.absent:
            log.warning("%s: no %s was found beside it or in the model folders; the model runs "
                        "without it (prompts follow less closely)", files.transformer.path.name,
                        part.what)

    def load() -> DiffusionPipeline:
        current = files.transformer
        try:
            components: dict[str, object] = {
                "transformer": _load_transformer(files.transformer, family, config, dtype),
                "scheduler": FlowMatchEulerDiscreteScheduler.from_pretrained(
                    str(config), subfolder="scheduler", local_files_only=True)}
            for part in PARTS[family]:
                if part.component in files.absent:
                    components[part.component] = None
                    continue
                current = files.parts[part.component]
                components[part.component] = (
                    AutoencoderKL.from_single_file(read_tensors(current), config=str(config),
                                                   subfolder="vae", torch_dtype=dtype,
                                                   local_files_only=True)
                    if part.model_class is AutoencoderKL else
                    _load_encoder(part, current, config, dtype))
            for component, storage in files.fp8.items():
                keep_stored(components[component], storage, dtype)
        except ProtocolError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED,
                                f"could not load {current.path.name} for a {family} model: "
                                f"{type(exc).__name__}: {exc}", field="model") from exc
        return cls(**components, **tokenizers)

    return load
