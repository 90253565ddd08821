"""IP-Adapters (reference images): which files a job's ``references[i].model`` means, the
CLIP image encoder each one reads pictures with, and loading both for a model.

Where the files are looked for, ``.safetensors`` only (the ``.bin`` / ``.pth`` copies many
are shared as are pickles, never opened):

- adapters: inside the model roots (``sources.ModelRoots``: the model folders, Atelier's
  home, the Hugging Face cache; symlinks resolved, nothing outside) as ``NAME``,
  ``NAME.safetensors``, or either inside an adapter folder (ComfyUI's ``models/ipadapter``,
  A1111's ``models/ControlNet`` where its ControlNet extension keeps them,
  ``$ATELIER_HOME/ipadapter``); in the HF cache as ``h94/IP-Adapter/models/ip-adapter_sd15``
  (repo id, then the file's path in the repo without the suffix);
- image encoders (``CLIPVisionModelWithProjection``): the ``image_encoder`` folder beside
  the adapter file (h94/IP-Adapter's and diffusers' layout), single files or folders in a
  ``clip_vision`` folder of any root (ComfyUI), and h94/IP-Adapter's two encoders in the
  HF cache. The first whose width fits the adapter's image projection is taken: a plain
  adapter reads the encoder's projected image embedding (ViT-H/14: 1024 wide, ViT-bigG/14:
  1280), a "plus" one the encoder's penultimate hidden states (1280 / 1664).

Loading (``ReferenceModels``, one per loaded model): the adapter's image projection is
built by diffusers' own converter (``UNet2DConditionModel._convert_ip_adapter_image_proj_
to_diffusers``: plain, plus and full-face layouts), its key and value projections become
one ``nn.Linear`` pair per cross-attention layer of the UNet, in diffusers' numbering
(the n-th cross-attention layer holds ``ip_adapter.{2n+1}``). Both are kept per model and
move with it; the pipelines' attention processors are set per job (references.py).
"""

from __future__ import annotations

import collections
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from protocol.errors import ErrorCode, ProtocolError
from protocol.families import base_family
from protocol.messages import REFERENCES_MAX
from protocol.schema import shorten

from . import families, tiny_references
from .file_kinds import CROSS_ATTENTION_WIDTHS, IMAGE_ENCODER_MARK, is_ip_adapter, read_header
from .sources import (PICKLE_SUFFIXES, SINGLE_FILE_SUFFIX, ModelRoots, check_safetensors_file,
                      hf_snapshot)

IP_ADAPTER_FOLDERS = ("ipadapter", "ip_adapter", "IP-Adapter", "ControlNet")
IMAGE_ENCODER_FOLDERS = ("clip_vision",)
IP_ADAPTER_REPO = "h94/IP-Adapter"
# h94/IP-Adapter's encoders: ViT-H/14 for SD1.5 and the "vit-h" SDXL adapters, bigG for
# ip-adapter_sdxl.
REPO_ENCODERS = ("models/image_encoder", "sdxl_models/image_encoder")
# What a reference naming no model uses, by base family: the first of these found, else
# any IP-Adapter of the family in an adapter folder (in name order).
DEFAULT_IP_ADAPTERS = {
    families.SD15: ("ip-adapter_sd15", "ip-adapter-plus_sd15",
                    f"{IP_ADAPTER_REPO}/models/ip-adapter_sd15"),
    families.SDXL: ("ip-adapter_sdxl_vit-h", "ip-adapter-plus_sdxl_vit-h", "ip-adapter_sdxl",
                    f"{IP_ADAPTER_REPO}/sdxl_models/ip-adapter_sdxl_vit-h"),
}
PULL = {families.SD15: f"atelier models pull {IP_ADAPTER_REPO}/models/ip-adapter_sd15",
        families.SDXL: f"atelier models pull {IP_ADAPTER_REPO}/sdxl_models/ip-adapter_sdxl_vit-h"}
# CLIP vision towers' attention heads (and activation) by width: not in the weights, so a
# single-file encoder (ComfyUI's clip_vision) needs them from here. OpenAI's ViT-L, the
# LAION ViT-H and ViT-bigG, and the built-in tiny encoder.
ENCODER_HEADS = {1024: (16, "quick_gelu"), 1280: (16, "gelu"), 1664: (16, "gelu"),
                 tiny_references.ENCODER_HIDDEN: (tiny_references.ENCODER_HEADS, "gelu")}
# Adapters kept loaded per model (least recently used dropped first): as many as one job
# can name, so a job never drops its own.
MAX_LOADED_ADAPTERS = REFERENCES_MAX
_FACE_ID = ("image_proj.perceiver_resampler.proj_in.weight", "image_proj.norm.weight")


@dataclass(frozen=True)
class AdapterFile:
    """An IP-Adapter's file and what its header says: the text width of the UNet it was
    made for, its cross-attention layers, and what it reads from the image encoder
    (``hidden_states``: the penultimate hidden states, else the projected embedding) of
    which width."""
    name: str
    path: Path
    text_width: int
    layers: int
    hidden_states: bool
    encoder_width: int

    @property
    def family(self) -> str:
        return CROSS_ATTENTION_WIDTHS.get(self.text_width, families.UNKNOWN)


@dataclass(frozen=True)
class EncoderFile:
    """A CLIP image encoder: a folder with config.json, or a single ``.safetensors``."""
    path: Path
    hidden_width: int
    projection_width: int


def adapter_file(name: str, path: Path, field: str) -> AdapterFile:
    """What the IP-Adapter at ``path`` is; model_load_failed naming ``field`` for a file
    that is not one, unsupported for FaceID adapters (they read face embeddings from
    insightface, which this daemon has not)."""
    header = read_header(path, field)
    if not is_ip_adapter(header):
        raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED,
                            f"{path.name} is not an IP-Adapter (no image_proj / ip_adapter "
                            f"tensors)", field)
    shapes = header.shapes
    keys = [k for k in shapes if k.startswith("ip_adapter.") and k.endswith(".to_k_ip.weight")]
    text_width = shapes.get("ip_adapter.1.to_k_ip.weight", (0, 0))[-1]
    # The layouts in the order diffusers' converter tells them apart.
    if "image_proj.proj.weight" in shapes:            # plain: the projected embedding
        hidden, width = False, shapes["image_proj.proj.weight"][-1]
    elif "image_proj.proj.3.weight" in shapes:        # full face: hidden states, an MLP
        hidden, width = True, shapes["image_proj.proj.0.weight"][-1]
    elif any(key in shapes for key in _FACE_ID) or any("lora" in key for key in shapes):
        raise ProtocolError(ErrorCode.UNSUPPORTED,
                            f"{path.name} is a FaceID IP-Adapter: it reads face embeddings "
                            f"from insightface, which this daemon does not run", field)
    elif "image_proj.proj_in.weight" in shapes:       # plus: hidden states, a resampler
        hidden, width = True, shapes["image_proj.proj_in.weight"][-1]
    else:
        raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED,
                            f"{path.name} has an image projection of a layout Atelier does "
                            f"not know", field)
    return AdapterFile(name, path, text_width, len(keys), hidden, width)


# ------------------------------------------------------------------ finding adapters

def in_adapter_folder(path: Path, root: Path) -> bool:
    return any(part in IP_ADAPTER_FOLDERS for part in path.relative_to(root).parts[:-1])


def adapter_name(path: Path, root: Path) -> str:
    """How clients name the adapter at ``path`` below ``root``: its path without the
    suffix, and without the adapter folder it lies in (``ip-adapter_sd15``)."""
    parts = path.relative_to(root).parts
    for index, part in enumerate(parts[:-1]):
        if part in IP_ADAPTER_FOLDERS:
            parts = parts[index + 1:]
            break
    return "/".join(parts)[:-len(SINGLE_FILE_SUFFIX)]


def locate(name: str, roots: ModelRoots, hf_cache: Path) -> Optional[Path]:
    """The ``.safetensors`` file ``name`` means inside the roots, or None. A file of a
    cached repo keeps its snapshot path (its sibling ``image_encoder`` is found from it)."""
    file = name if name.lower().endswith(SINGLE_FILE_SUFFIX) else name + SINGLE_FILE_SUFFIX
    owner, _, rest = file.partition("/")
    repo, _, inner = rest.partition("/")
    snapshot = hf_snapshot(f"{owner}/{repo}", hf_cache) if owner and repo and inner else None
    if snapshot is not None and (snapshot / inner).is_file() and roots.holds(snapshot / inner):
        return snapshot / inner
    return roots.first_single_file([file, *(f"{folder}/{file}" for folder in IP_ADAPTER_FOLDERS)])


def find_adapter(name: str, roots: ModelRoots, hf_cache: Path, field: str) -> AdapterFile:
    """The IP-Adapter file ``name`` means; model_not_found naming ``field`` when none."""
    if Path(name).suffix.lower() in PICKLE_SUFFIXES:
        raise ProtocolError(
            ErrorCode.MODEL_LOAD_FAILED,
            f"IP-Adapter {shorten(name)!r} is a pickle file; Atelier never unpickles model "
            f"files because loading one can run arbitrary code. Use the .safetensors file "
            f"(h94/IP-Adapter has each adapter as one).", field)
    path = locate(name, roots, hf_cache)
    if path is None:
        raise ProtocolError(
            ErrorCode.MODEL_NOT_FOUND,
            f"no IP-Adapter named {shorten(name)!r} in the model folders (ComfyUI "
            f"models/ipadapter, A1111 models/ControlNet, an ipadapter folder in Atelier's "
            f"home, or {IP_ADAPTER_REPO} in the Hugging Face cache; .safetensors only); see "
            f"`atelier models list`", field)
    return adapter_file(name, path, field)


def adapter_files(roots: ModelRoots, hf_cache: Path) -> Iterator[tuple[str, Path]]:
    """(name, file) of every ``.safetensors`` in the adapter folders of the roots and in
    h94/IP-Adapter in the HF cache, in name order per place (not yet read)."""
    for root in roots.folders:
        for folder in IP_ADAPTER_FOLDERS:
            for path in sorted((root / folder).glob(f"**/*{SINGLE_FILE_SUFFIX}")):
                yield adapter_name(path, root), path
    snapshot = hf_snapshot(IP_ADAPTER_REPO, hf_cache)
    if snapshot is not None:
        for path in sorted(snapshot.glob(f"*/*{SINGLE_FILE_SUFFIX}")):
            relative = path.relative_to(snapshot).as_posix()[:-len(SINGLE_FILE_SUFFIX)]
            yield f"{IP_ADAPTER_REPO}/{relative}", path


def default_adapter(family: str, roots: ModelRoots, hf_cache: Path, field: str,
                    text_width: int) -> AdapterFile:
    """What a reference naming no model uses on a model of ``family`` whose UNet takes
    text ``text_width`` wide: the first of ``DEFAULT_IP_ADAPTERS`` found, else the first
    IP-Adapter in the adapter folders made for that width. model_not_found saying what to
    fetch when there is none; unsupported for families IP-Adapters do not exist for."""
    base = base_family(family)
    if base not in DEFAULT_IP_ADAPTERS:
        raise ProtocolError(ErrorCode.UNSUPPORTED,
                            f"reference images need an IP-Adapter, which exists for SD1.5 and "
                            f"SDXL models, not for {family}", field)
    for name in DEFAULT_IP_ADAPTERS[base]:
        path = locate(name, roots, hf_cache)
        if path is not None:
            found = _readable_adapter(name, path, field)
            if found is not None and found.text_width == text_width:
                return found
    for name, path in adapter_files(roots, hf_cache):
        found = _readable_adapter(name, path, field)
        if found is not None and found.text_width == text_width:
            return found
    raise ProtocolError(
        ErrorCode.MODEL_NOT_FOUND,
        f"reference images on {base} models need an IP-Adapter made for them and its CLIP "
        f"image encoder, and none is on this machine; fetch them with: {PULL[base]} (or put "
        f"ip-adapter_{base}.safetensors in ComfyUI's models/ipadapter and the ViT-H encoder in "
        f"models/clip_vision)", field)


def _readable_adapter(name: str, path: Path, field: str) -> Optional[AdapterFile]:
    try:
        return adapter_file(name, path, field)
    except ProtocolError:
        return None       # a broken or FaceID file among the defaults: look further


# ------------------------------------------------------------------ image encoders

def _encoder_of_folder(folder: Path) -> Optional[EncoderFile]:
    config_path = folder / "config.json"
    if not config_path.is_file() or not any(folder.glob(f"*{SINGLE_FILE_SUFFIX}")):
        return None
    try:
        config = json.loads(config_path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    config = config.get("vision_config", config)
    if not isinstance(config, dict) or "hidden_size" not in config:
        return None
    return EncoderFile(folder, int(config["hidden_size"]), int(config.get("projection_dim", 0)))


def _encoder_of_file(path: Path) -> Optional[EncoderFile]:
    try:
        shapes = read_header(path).shapes
    except ProtocolError:
        return None
    if IMAGE_ENCODER_MARK not in shapes or "visual_projection.weight" not in shapes:
        return None
    projection, hidden = shapes["visual_projection.weight"]
    return EncoderFile(path, hidden, projection)


def encoder_places(adapter: Path, roots: ModelRoots, hf_cache: Path) -> Iterator[Path]:
    """Where an encoder for the adapter at ``adapter`` may be, most specific first."""
    yield adapter.parent / "image_encoder"
    for root in roots.folders:
        for folder in IMAGE_ENCODER_FOLDERS:
            yield from sorted((root / folder).glob("*"))
    snapshot = hf_snapshot(IP_ADAPTER_REPO, hf_cache)
    if snapshot is not None:
        yield from (snapshot / place for place in REPO_ENCODERS)


def find_encoder(adapter: AdapterFile, roots: ModelRoots, hf_cache: Path,
                 field: str) -> EncoderFile:
    """The first image encoder (``encoder_places``) whose width fits ``adapter``;
    model_not_found naming ``field``, saying which encoder to fetch, when none does."""
    for place in encoder_places(adapter.path, roots, hf_cache):
        if not roots.holds(place):
            continue
        if place.is_dir():
            found = _encoder_of_folder(place)
        elif place.is_file() and place.suffix.lower() == SINGLE_FILE_SUFFIX:
            found = _encoder_of_file(place)
        else:
            found = None
        if found is None:
            continue
        width = found.hidden_width if adapter.hidden_states else found.projection_width
        if width == adapter.encoder_width:
            return found
    what = "hidden states" if adapter.hidden_states else "image embedding"
    which = {1024: "ViT-H/14 (CLIP-ViT-H-14-laion2B-s32B-b79K)",
             1280: ("ViT-H/14 (CLIP-ViT-H-14-laion2B-s32B-b79K)" if adapter.hidden_states
                    else "ViT-bigG/14 (CLIP-ViT-bigG-14-laion2B-39B-b160k)"),
             1664: "ViT-bigG/14 (CLIP-ViT-bigG-14-laion2B-39B-b160k)"}.get(
        adapter.encoder_width, f"an encoder with a {what} {adapter.encoder_width} wide")
    pull = PULL.get(base_family(adapter.family) or "", PULL[families.SD15])
    raise ProtocolError(
        ErrorCode.MODEL_NOT_FOUND,
        f"IP-Adapter {shorten(adapter.name)} reads pictures with a CLIP image encoder whose "
        f"{what} is {adapter.encoder_width} wide, {which}, and none is on this machine (looked "
        f"beside the adapter in image_encoder/, in clip_vision folders and in {IP_ADAPTER_REPO} "
        f"in the Hugging Face cache); fetch it with: {pull}, or put its .safetensors in "
        f"ComfyUI's models/clip_vision", field)


def load_encoder(encoder: EncoderFile, device: str, dtype: torch.dtype,
                 field: str) -> CLIPVisionModelWithProjection:
    """The encoder's network on ``device``; model_load_failed naming ``field``."""
    try:
        if encoder.path.is_dir():
            for weights in encoder.path.glob(f"*{SINGLE_FILE_SUFFIX}"):
                check_safetensors_file(weights, field)
            model = CLIPVisionModelWithProjection.from_pretrained(
                str(encoder.path), dtype=dtype, local_files_only=True, use_safetensors=True)
        else:
            model = _encoder_from_file(encoder, field)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED,
                            f"could not load the image encoder {encoder.path.name}: "
                            f"{type(exc).__name__}: {shorten(str(exc), 300)}", field) from exc
    return model.to(device=device, dtype=dtype).eval()


def _encoder_from_file(encoder: EncoderFile, field: str) -> CLIPVisionModelWithProjection:
    """A single-file encoder (transformers' tensor names, no config): its config read off
    the tensor shapes, its heads from ``ENCODER_HEADS``."""
    check_safetensors_file(encoder.path, field)
    state = load_file(str(encoder.path))
    heads = ENCODER_HEADS.get(encoder.hidden_width)
    if heads is None:
        raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED,
                            f"{encoder.path.name} is a CLIP image encoder {encoder.hidden_width} "
                            f"wide, whose attention heads its weights do not tell; use it as a "
                            f"folder with its config.json", field)
    prefix = "vision_model."
    patch = state[prefix + "embeddings.patch_embedding.weight"]
    positions = state[prefix + "embeddings.position_embedding.weight"].shape[0]
    layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith(prefix + "encoder.layers."))
    config = CLIPVisionConfig(
        hidden_size=encoder.hidden_width, projection_dim=encoder.projection_width,
        intermediate_size=state[prefix + "encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=layers, num_attention_heads=heads[0], hidden_act=heads[1],
        patch_size=patch.shape[-1], image_size=patch.shape[-1] * math.isqrt(positions - 1),
        layer_norm_eps=1e-5)
    model = CLIPVisionModelWithProjection(config)
    wanted = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    missing, _ = model.load_state_dict(wanted, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing:
        raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED,
                            f"{encoder.path.name} lacks {len(missing)} of the image encoder's "
                            f"tensors (e.g. {missing[0]}); is it in transformers' layout?", field)
    return model


# ------------------------------------------------------------------ loaded

@dataclass(eq=False)
class LoadedAdapter:
    """An IP-Adapter ready for one model's UNet: its image projection, a key and a value
    projection per cross-attention processor (by processor name), its encoder and the
    processor that turns pictures into the encoder's input."""
    file: AdapterFile
    projection: nn.Module
    keys: dict[str, nn.Linear]
    values: dict[str, nn.Linear]
    tokens: int                      # image tokens it adds to each cross-attention
    encoder: CLIPVisionModelWithProjection

    def modules(self) -> list[nn.Module]:
        return [self.projection, *self.keys.values(), *self.values.values()]


@dataclass
class ReferenceModels:
    """The IP-Adapters (at most ``MAX_LOADED_ADAPTERS``, least recently used dropped first)
    and the image encoders they read with, loaded for one model, by file."""
    adapters: collections.OrderedDict[Path, LoadedAdapter] = field(
        default_factory=collections.OrderedDict)
    encoders: dict[Path, CLIPVisionModelWithProjection] = field(default_factory=dict)

    def modules(self) -> list[nn.Module]:
        return [m for a in self.adapters.values() for m in a.modules()] + list(self.encoders.values())

    def clear(self) -> None:
        self.adapters.clear()
        self.encoders.clear()

    def load(self, adapter: AdapterFile, unet: nn.Module, roots: ModelRoots, hf_cache: Path,
             device: str, dtype: torch.dtype, field: str) -> LoadedAdapter:
        """``adapter`` for ``unet`` (loaded once; its encoder once per file). invalid_field
        naming ``field`` when it was made for another UNet."""
        if adapter.path in self.adapters:
            self.adapters.move_to_end(adapter.path)
            return self.adapters[adapter.path]
        cross = cross_attention_processors(unet)
        unet_width = unet.config.cross_attention_dim
        if adapter.text_width != unet_width or adapter.layers != len(cross):
            made_for = adapter.family if adapter.family != families.UNKNOWN else "another model"
            raise ProtocolError(
                ErrorCode.INVALID_FIELD,
                f"IP-Adapter {shorten(adapter.name)} is made for {made_for} (text {adapter.text_width} "
                f"wide, {adapter.layers} cross-attention layers); this model's UNet takes text "
                f"{unet_width} wide in {len(cross)} layers", field)
        encoder_file = find_encoder(adapter, roots, hf_cache, field)
        encoder = self.encoders.get(encoder_file.path)
        if encoder is None:
            encoder = load_encoder(encoder_file, device, dtype, field)
            self.encoders[encoder_file.path] = encoder
        loaded = _load_adapter(adapter, unet, cross, encoder, device, dtype, field)
        self.adapters[adapter.path] = loaded
        while len(self.adapters) > MAX_LOADED_ADAPTERS:
            self.adapters.popitem(last=False)
        kept = {id(a.encoder) for a in self.adapters.values()}
        self.encoders = {path: e for path, e in self.encoders.items() if id(e) in kept}
        return loaded


def cross_attention_processors(unet: nn.Module) -> list[str]:
    """Names of ``unet``'s cross-attention processors, in diffusers' order."""
    return [name for name in unet.attn_processors if not name.endswith("attn1.processor")]


def _load_adapter(adapter: AdapterFile, unet: nn.Module, cross: Sequence[str],
                  encoder: CLIPVisionModelWithProjection, device: str, dtype: torch.dtype,
                  field: str) -> LoadedAdapter:
    check_safetensors_file(adapter.path, field)
    state = load_file(str(adapter.path))
    image_proj = {k[len("image_proj."):]: v for k, v in state.items() if k.startswith("image_proj.")}
    try:
        projection = unet._convert_ip_adapter_image_proj_to_diffusers(image_proj,
                                                                      low_cpu_mem_usage=False)
    except Exception as exc:
        raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED,
                            f"{adapter.path.name}'s image projection does not load: "
                            f"{type(exc).__name__}: {shorten(str(exc), 300)}", field) from exc
    keys, values = {}, {}
    for index, name in enumerate(cross):
        key_id = 2 * index + 1
        for kind, into in (("k", keys), ("v", values)):
            weight = state[f"ip_adapter.{key_id}.to_{kind}_ip.weight"]
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
            linear.weight = nn.Parameter(weight, requires_grad=False)
            into[name] = linear.to(device=device, dtype=dtype)
    tokens = (image_proj["latents"].shape[1] if "latents" in image_proj
              else 257 if "proj.3.weight" in image_proj else 4)
    return LoadedAdapter(adapter, projection.to(device=device, dtype=dtype).eval(), keys, values,
                         tokens, encoder)
