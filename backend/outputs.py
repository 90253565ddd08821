"""Turning generated pixels into result frames: raw RGBA8, or PNG with the parameters inside."""

from __future__ import annotations

import io
import json

from PIL import Image, PngImagePlugin

from protocol.frames import FrameKind, ImageFrame, PixelFormat
from protocol.messages import GenerateRequest
from protocol.schema import to_dict

from .generation import GeneratedImage, Pixels

PNG_PARAMETERS_KEY = "parameters"        # the key A1111 and many tools read
PNG_ATELIER_KEY = "atelier"              # the full request as JSON


def one_line(text: str) -> str:
    """``text`` with its line breaks as spaces. In A1111's text a line may start a new
    part ("Negative prompt: ...", the settings line), so a prompt's own line breaks would
    forge one. CLIP's tokenizer reads any whitespace run as one space, so the prompt
    means the same to the model; the ``atelier`` chunk keeps the exact text."""
    return " ".join(text.splitlines())


def a1111_parameters(params: GenerateRequest, seed: int, model: str) -> str:
    """The one-paragraph settings text A1111 writes, so other tools can read ours. LoRAs
    go back into the prompt as A1111's inline tags, which is where its readers (and
    Civitai's) look for them."""
    tags = "".join(f" <lora:{one_line(lora.name)}:{lora.weight:g}>" for lora in params.loras)
    lines = [one_line(params.prompt) + tags]
    if params.negative_prompt:
        lines.append(f"Negative prompt: {one_line(params.negative_prompt)}")
    lines.append(f"Steps: {params.steps}, Sampler: {params.scheduler}, CFG scale: {params.guidance}, "
                 f"Seed: {seed}, Size: {params.width}x{params.height}, Model: {one_line(model)}"
                 + (f", Denoising strength: {params.strength}" if params.kind != "txt2img" else "")
                 + (f", Tiling: {params.tiling}" if params.tiling != "none" else "")
                 + (f", Step cache: {params.cache_interval}" if params.cache_interval > 1 else "")
                 + (f", Sampler preset: {params.sampler_preset}" if params.sampler_preset else ""))
    return "\n".join(lines)


def encode_png(pixels: Pixels, text: dict[str, str] | None = None) -> bytes:
    image = Image.frombytes("RGBA", (pixels.width, pixels.height), pixels.rgba)
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info, compress_level=1)
    return out.getvalue()


def png_text(params: GenerateRequest, seed: int, model: str) -> dict[str, str]:
    exact = to_dict(params)
    exact["seed"] = seed
    return {PNG_PARAMETERS_KEY: a1111_parameters(params, seed, model),
            PNG_ATELIER_KEY: json.dumps({"model": model, "request": exact}, sort_keys=True)}


def result_frame(job_id: str, index: int, image: GeneratedImage, params: GenerateRequest,
                 model: str) -> ImageFrame:
    px = image.pixels
    if params.output_format == "png":
        data = encode_png(px, png_text(params, image.seed, model))
        return ImageFrame(FrameKind.RESULT, PixelFormat.PNG, index, px.width, px.height, job_id, data)
    return ImageFrame(FrameKind.RESULT, PixelFormat.RGBA8, index, px.width, px.height, job_id,
                      px.rgba)


def preview_frame(job_id: str, step: int, pixels: Pixels) -> ImageFrame:
    return ImageFrame(FrameKind.PREVIEW, PixelFormat.RGBA8, step, pixels.width, pixels.height,
                      job_id, pixels.rgba)
