"""Model families: which architecture a folder or checkpoint holds, and which
diffusers pipeline class serves each job kind for it.

Family names are the strings of ``protocol.messages.ModelInfo.family``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

from diffusers import (
    ChromaPipeline,
    ControlNetModel,
    DiffusionPipeline,
    FluxControlNetImg2ImgPipeline,
    FluxControlNetInpaintPipeline,
    FluxControlNetPipeline,
    FluxControlImg2ImgPipeline,
    FluxControlInpaintPipeline,
    FluxControlPipeline,
    FluxFillPipeline,
    FluxImg2ImgPipeline,
    FluxInpaintPipeline,
    FluxPipeline,
    StableDiffusion3ControlNetPipeline,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3InpaintPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionDepth2ImgPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetInpaintPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
    T2IAdapter,
    ZImagePipeline,
)

from protocol.errors import ErrorCode, ProtocolError

from .latent_init_pipelines import (ChromaImg2ImgLatents, ChromaInpaintLatents,
                                    ZImageImg2ImgLatents, ZImageInpaintLatents)

SD15 = "sd15"
SD15_INPAINT = "sd15_inpaint"
SD2 = "sd2"
SD2_DEPTH = "sd2_depth"
SD2_INPAINT = "sd2_inpaint"
SDXL = "sdxl"
SDXL_INPAINT = "sdxl_inpaint"
SDXL_REFINER = "sdxl_refiner"
FLUX = "flux"                 # Flux.1 (dev, schnell and their fine-tunes): a diffusion transformer
FLUX_FILL = "flux_fill"       # FLUX.1-Fill: Flux's inpainting transformer (it reads the mask)
FLUX_CONTROL = "flux_control" # FLUX.1-Depth/Canny-dev: Flux transformers that read a control image
SD3 = "sd3"                   # Stable Diffusion 3 and 3.5 (medium, large, turbo): MMDiT
CHROMA = "chroma"             # Chroma (Lodestone Rabbits): a Flux-derived transformer, T5 only
ZIMAGE = "zimage"             # Z-Image (Tongyi-MAI; Turbo and base): single-stream DiT, Qwen3 text
CONTROLNET = "controlnet"
T2I_ADAPTER = "t2i_adapter"
# Families of the models that condition a base model on depth (``ControlSettings.model``).
DEPTH_CONDITIONERS = (CONTROLNET, T2I_ADAPTER)
UNKNOWN = "unknown"

# Pipeline kinds the store hands out. "depth" is SD2-depth's own depth-conditioned img2img.
TXT2IMG, IMG2IMG, INPAINT, DEPTH = "txt2img", "img2img", "inpaint", "depth"
PIPELINE_KINDS = (TXT2IMG, IMG2IMG, INPAINT, DEPTH)

_SD15_CLASSES = {TXT2IMG: StableDiffusionPipeline, IMG2IMG: StableDiffusionImg2ImgPipeline,
                 INPAINT: StableDiffusionInpaintPipeline}
_SD15_CONTROL = {TXT2IMG: StableDiffusionControlNetPipeline,
                 IMG2IMG: StableDiffusionControlNetImg2ImgPipeline,
                 INPAINT: StableDiffusionControlNetInpaintPipeline}
_SDXL_CLASSES = {TXT2IMG: StableDiffusionXLPipeline, IMG2IMG: StableDiffusionXLImg2ImgPipeline,
                 INPAINT: StableDiffusionXLInpaintPipeline}
_SDXL_CONTROL = {TXT2IMG: StableDiffusionXLControlNetPipeline,
                 IMG2IMG: StableDiffusionXLControlNetImg2ImgPipeline,
                 INPAINT: StableDiffusionXLControlNetInpaintPipeline}

# family -> (plain pipelines by kind, ControlNet pipelines by kind)
_PIPELINES: dict[str, tuple[dict[str, type[DiffusionPipeline]], dict[str, type[DiffusionPipeline]]]] = {
    SD15: (_SD15_CLASSES, _SD15_CONTROL),
    SD2: (_SD15_CLASSES, _SD15_CONTROL),
    # An inpaint UNet (9 input channels) only runs in the inpaint pipelines.
    SD15_INPAINT: ({INPAINT: StableDiffusionInpaintPipeline},
                   {INPAINT: StableDiffusionControlNetInpaintPipeline}),
    SD2_INPAINT: ({INPAINT: StableDiffusionInpaintPipeline},
                  {INPAINT: StableDiffusionControlNetInpaintPipeline}),
    SDXL: (_SDXL_CLASSES, _SDXL_CONTROL),
    SDXL_INPAINT: ({INPAINT: StableDiffusionXLInpaintPipeline},
                   {INPAINT: StableDiffusionXLControlNetInpaintPipeline}),
    SD2_DEPTH: ({DEPTH: StableDiffusionDepth2ImgPipeline}, {}),
    # Flux's and SD3's ControlNet pipelines take their family's ControlNets
    # (dit_controlnets.py); diffusers has no SD3 ControlNet img2img, and its SD3 ControlNet
    # inpainting takes an inpainting ControlNet of its own.
    FLUX: ({TXT2IMG: FluxPipeline, IMG2IMG: FluxImg2ImgPipeline, INPAINT: FluxInpaintPipeline},
           {TXT2IMG: FluxControlNetPipeline, IMG2IMG: FluxControlNetImg2ImgPipeline,
            INPAINT: FluxControlNetInpaintPipeline}),
    # Fill's transformer reads the masked image and the mask: it inpaints only.
    FLUX_FILL: ({INPAINT: FluxFillPipeline}, {}),
    # Depth/Canny-dev's transformers read the control image's latents beside the picture's
    FLUX_CONTROL: ({TXT2IMG: FluxControlPipeline, IMG2IMG: FluxControlImg2ImgPipeline,
                    INPAINT: FluxControlInpaintPipeline}, {}),
    SD3: ({TXT2IMG: StableDiffusion3Pipeline, IMG2IMG: StableDiffusion3Img2ImgPipeline,
           INPAINT: StableDiffusion3InpaintPipeline},
          {TXT2IMG: StableDiffusion3ControlNetPipeline}),
    # Chroma's and Z-Image's init-image pipelines as subclasses that take init latents
    # (latent_init_pipelines.py).
    CHROMA: ({TXT2IMG: ChromaPipeline, IMG2IMG: ChromaImg2ImgLatents,
              INPAINT: ChromaInpaintLatents}, {}),
    ZIMAGE: ({TXT2IMG: ZImagePipeline, IMG2IMG: ZImageImg2ImgLatents,
              INPAINT: ZImageInpaintLatents}, {}),
}

# The pipeline class a family's base model is loaded as.
BASE_KIND = {SD15: TXT2IMG, SD2: TXT2IMG, SDXL: TXT2IMG, SD15_INPAINT: INPAINT,
             SD2_INPAINT: INPAINT, SDXL_INPAINT: INPAINT, SD2_DEPTH: DEPTH, FLUX: TXT2IMG,
             FLUX_FILL: INPAINT, FLUX_CONTROL: TXT2IMG, SD3: TXT2IMG, CHROMA: TXT2IMG,
             ZIMAGE: TXT2IMG}
# Families whose denoiser is a transformer over latent patches, not a UNet.
TRANSFORMER_FAMILIES = frozenset({FLUX, FLUX_FILL, FLUX_CONTROL, SD3, CHROMA, ZIMAGE})
# A transformer family by the ``_class_name`` of its folder's model_index.json: its
# text-to-image pipeline's name, or Fill's (Flux Kontext's transformer is another: unknown).
_TRANSFORMER_INDEX = {FluxPipeline.__name__: FLUX, FluxFillPipeline.__name__: FLUX_FILL,
                      FluxControlPipeline.__name__: FLUX_CONTROL,
                      StableDiffusion3Pipeline.__name__: SD3,
                      ChromaPipeline.__name__: CHROMA, ZImagePipeline.__name__: ZIMAGE}


def is_transformer(family: str) -> bool:
    return family in TRANSFORMER_FAMILIES


def is_sdxl(family: str) -> bool:
    return family in (SDXL, SDXL_INPAINT, SDXL_REFINER)


def pipeline_class(family: str, kind: str, controlnet: bool = False) -> Optional[type[DiffusionPipeline]]:
    """The pipeline class for ``kind`` on ``family`` (with a ControlNet if asked), or None."""
    plain, control = _PIPELINES.get(family, ({}, {}))
    return (control if controlnet else plain).get(kind)


def kinds_of(family: str, controlnet: bool = False) -> tuple[str, ...]:
    plain, control = _PIPELINES.get(family, ({}, {}))
    return tuple(control if controlnet else plain)


def base_class(family: str) -> type[DiffusionPipeline]:
    cls = pipeline_class(family, BASE_KIND[family])
    assert cls is not None
    return cls


def pipeline_extras(family: str) -> dict:
    """Keyword arguments for loading a family's base pipeline without its optional extras."""
    if family in (SD15, SD15_INPAINT, SD2, SD2_INPAINT):
        # SD1.x/2.x repos list a safety checker; Atelier, like A1111 and ComfyUI, does not run it.
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    if family == SD2_DEPTH:
        # Jobs bring their depth maps; the DPT depth estimator is not loaded.
        return {"depth_estimator": None, "feature_extractor": None}
    return {}


def _read_json(path: Path) -> dict:
    """A config file of a model folder; ProtocolError(MODEL_LOAD_FAILED) naming it when
    it is not a JSON object."""
    where = f"{path.parent.name}/{path.name}"
    try:
        value = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:    # ValueError: bad JSON or bad UTF-8
        raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED, f"{where} cannot be read as JSON: {exc}",
                            field="model") from exc
    if not isinstance(value, dict):
        raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED,
                            f"{where} holds a JSON {type(value).__name__}, not an object",
                            field="model")
    return value


def family_of_folder(folder: Path) -> str:
    """Family of a diffusers folder: a pipeline (model_index.json), or a ControlNet or
    T2I-Adapter (config.json). A config that is not a JSON object is a ProtocolError
    (MODEL_LOAD_FAILED), so a broken folder fails alike wherever it is named."""
    index = folder / "model_index.json"
    if not index.is_file():
        config = folder / "config.json"
        class_name = _read_json(config).get("_class_name") if config.is_file() else None
        return {ControlNetModel.__name__: CONTROLNET,
                T2IAdapter.__name__: T2I_ADAPTER}.get(str(class_name), UNKNOWN)
    class_name = str(_read_json(index).get("_class_name", ""))
    if class_name in _TRANSFORMER_INDEX:
        return _TRANSFORMER_INDEX[class_name]
    unet_config = folder / "unet" / "config.json"
    unet = _read_json(unet_config) if unet_config.is_file() else {}
    in_channels = unet.get("in_channels", 4)
    if "Depth2Img" in class_name or in_channels == 5:
        return SD2_DEPTH
    if "XL" in class_name:
        if unet.get("addition_embed_type") == "text_time" and not (folder / "text_encoder").is_dir():
            return SDXL_REFINER
        return SDXL_INPAINT if in_channels == 9 else SDXL
    if class_name.startswith("StableDiffusion") or (class_name == "DiffusionPipeline" and unet):
        # SD2.x text encoders are OpenCLIP-H (1024 wide); SD1.x use CLIP-L (768).
        sd2 = unet.get("cross_attention_dim") == 1024
        if in_channels == 9:
            return SD2_INPAINT if sd2 else SD15_INPAINT
        return SD2 if sd2 else SD15
    return UNKNOWN


# Key prefixes of original (LDM / A1111 / ComfyUI) single-file checkpoints.
LDM_UNET = "model.diffusion_model."
LDM_CONV_IN = LDM_UNET + "input_blocks.0.0.weight"


def is_transformer_controlnet(keys: Iterable[str]) -> bool:
    """Whether tensor names are a Flux or SD3 ControlNet's (InstantX's and diffusers'
    ``controlnet_blocks``), which fit no UNet."""
    return any(k.startswith("controlnet_blocks.") for k in keys)


def family_of_checkpoint_keys(keys: Iterable[str], conv_in_shape: Optional[tuple[int, ...]]) -> str:
    """Family of an original-layout checkpoint from its tensor names and the UNet's first
    conv weight shape (out, in, kh, kw); ``in`` is 4 plain, 5 depth, 9 inpaint."""
    keys = list(keys)
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if has("control_model.") or has("controlnet_cond_embedding.") or has("input_hint_block.") \
            or is_transformer_controlnet(keys):
        return CONTROLNET
    transformer = _transformer_of_keys(keys)
    if transformer is not None:
        return transformer
    if conv_in_shape is None:
        return UNKNOWN
    in_channels = conv_in_shape[1]
    if has("conditioner.embedders.1."):
        return SDXL_INPAINT if in_channels == 9 else SDXL
    if has("conditioner.embedders.0."):
        return SDXL_REFINER
    if has("cond_stage_model.model.") or has("cond_stage_model.transformer.resblocks"):
        return {5: SD2_DEPTH, 9: SD2_INPAINT}.get(in_channels, SD2)
    if has("cond_stage_model.transformer."):
        return {9: SD15_INPAINT}.get(in_channels, SD15)
    return UNKNOWN


# Tensor-name prefixes of diffusion transformers saved as one file: Black Forest Labs' and
# Stability's original layouts (ComfyUI's models/unet and models/diffusion_models files, or
# whole checkpoints under LDM_UNET), and diffusers' own transformer layout.
_TRANSFORMER_PREFIXES = (
    # Chroma first: it has Flux's blocks, and its modulation network besides.
    (CHROMA, ("distilled_guidance_layer.",)),
    (ZIMAGE, ("noise_refiner.", "context_refiner.")),
    (FLUX, ("double_blocks.", "single_transformer_blocks.")),
    (SD3, ("joint_blocks.", "pos_embed.pos_embed")),
)


def _transformer_of_keys(keys: list[str]) -> Optional[str]:
    """The transformer family whose tensor names these are, else None."""
    for family, prefixes in _TRANSFORMER_PREFIXES:
        for prefix in prefixes:
            if any(k.startswith(prefix) or k.startswith(LDM_UNET + prefix) for k in keys):
                return family
    return None
