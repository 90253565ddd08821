"""Pixel conversions: upload frames -> numpy, numpy <-> PIL / torch, numpy -> ``Pixels``.

Arrays are uint8, rows top to bottom: RGB ``(H, W, 3)``, RGBA ``(H, W, 4)``, grey ``(H, W)``.
Tensors are float ``(B, 3, H, W)`` in [-1, 1], the range the VAE works in.
"""

from __future__ import annotations

import io
from typing import Mapping

import numpy as np
import PIL.Image
import torch

from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import FORMAT_NAMES, ImageFrame, PixelFormat

from ..generation import Pixels


def job_upload(uploads: Mapping[str, ImageFrame], upload_id: str, what: str,
               field: str) -> ImageFrame:
    """The frame ``upload_id`` among a job's uploads; ``unknown_upload`` on ``field``,
    calling it ``what``, when the submit brought no such upload."""
    frame = uploads.get(upload_id)
    if frame is None:
        raise ProtocolError(ErrorCode.UNKNOWN_UPLOAD,
                            f"{what} '{upload_id}' is not among this job's uploads", field)
    return frame


def frame_to_rgba(frame: ImageFrame, field: str) -> np.ndarray:
    """An RGBA8, RGB8 or PNG upload as an ``(H, W, 4)`` array (opaque where it had no alpha)."""
    if frame.format == PixelFormat.RGBA8:
        return np.frombuffer(frame.data, np.uint8).reshape(frame.height, frame.width, 4).copy()
    if frame.format == PixelFormat.RGB8:
        rgb = np.frombuffer(frame.data, np.uint8).reshape(frame.height, frame.width, 3)
        return rgb_to_rgba(rgb)
    if frame.format == PixelFormat.PNG:
        return np.asarray(_open_png(frame, field).convert("RGBA")).copy()
    raise ProtocolError(ErrorCode.INVALID_FIELD,
                        f"an image must be rgba8, rgb8 or png, not {_format_name(frame)}", field)


def frame_to_gray(frame: ImageFrame, field: str) -> np.ndarray:
    """A GRAY8 or PNG upload as an ``(H, W)`` array."""
    if frame.format == PixelFormat.GRAY8:
        return np.frombuffer(frame.data, np.uint8).reshape(frame.height, frame.width).copy()
    if frame.format == PixelFormat.PNG:
        return np.asarray(_open_png(frame, field).convert("L")).copy()
    raise ProtocolError(ErrorCode.INVALID_FIELD,
                        f"a mask must be gray8 or png, not {_format_name(frame)}", field)


def _format_name(frame: ImageFrame) -> str:
    return FORMAT_NAMES.get(PixelFormat(frame.format), str(frame.format))


def _open_png(frame: ImageFrame, field: str) -> PIL.Image.Image:
    try:
        image = PIL.Image.open(io.BytesIO(frame.data), formats=["PNG"])
    except (OSError, PIL.Image.DecompressionBombError) as exc:
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"the PNG does not decode: {exc}", field) from exc
    # The header's size was checked against the limits; a PNG claiming another size is refused
    # before its pixels are decompressed.
    if image.size != (frame.width, frame.height):
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            f"the PNG is {image.size[0]}x{image.size[1]} but its frame says "
                            f"{frame.width}x{frame.height}", field)
    try:
        image.load()
    except OSError as exc:
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"the PNG does not decode: {exc}", field) from exc
    return image


def rgb_to_rgba(rgb: np.ndarray) -> np.ndarray:
    alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
    return np.concatenate([rgb, alpha], axis=2)


def to_pixels(image: np.ndarray) -> Pixels:
    """``Pixels`` from an RGB (made opaque) or RGBA array."""
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3|4) array, got {image.dtype} {image.shape}")
    rgba = image if image.shape[2] == 4 else rgb_to_rgba(image)
    height, width = rgba.shape[:2]
    return Pixels(width, height, np.ascontiguousarray(rgba).tobytes())


def pixels_to_array(pixels: Pixels) -> np.ndarray:
    return np.frombuffer(pixels.rgba, np.uint8).reshape(pixels.height, pixels.width, 4)


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resample an RGB(A) uint8 or a float32 mask (or float32 ``(H, W, C)`` control image,
    channel by channel) array; a no-op at the same size."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    if image.dtype == np.float32 and image.ndim == 3:
        return np.stack([resize(np.ascontiguousarray(image[..., c]), width, height)
                         for c in range(image.shape[2])], axis=-1)
    if image.dtype == np.float32:
        # Masks: bilinear on the float values ("F" mode) so soft edges stay soft.
        resized = PIL.Image.fromarray(image).resize((width, height), PIL.Image.BILINEAR)
        return np.clip(np.asarray(resized), 0.0, 1.0).astype(np.float32)
    return np.asarray(PIL.Image.fromarray(image).resize((width, height), PIL.Image.LANCZOS))


def rgb_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(1, 3, H, W)`` float32 in [-1, 1]."""
    tensor = torch.tensor(rgb[..., :3]).permute(2, 0, 1)[None]
    return tensor.to(torch.float32) / 127.5 - 1.0


def tensor_to_rgb(images: torch.Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` in [-1, 1] -> ``(B, H, W, 3)`` uint8, rounded to nearest."""
    unit = (images.detach().to(torch.float32) / 2 + 0.5).clamp(0, 1)
    return (unit * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def mask_to_tensor(mask: np.ndarray) -> torch.Tensor:
    """``(H, W)`` float32 in [0, 1] -> ``(1, 1, H, W)``, what diffusers' mask processor takes."""
    return torch.tensor(mask, dtype=torch.float32)[None, None]
