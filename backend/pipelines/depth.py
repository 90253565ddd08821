"""Depth maps: uploads -> the "nearness" map depth models want, and estimation from RGB.

Every depth model Atelier drives (ControlNet depth for SD1.5/SDXL, SD2-depth) was trained
on the output of MiDaS-style estimators: relative inverse depth, near = bright, far = dark.
``nearness`` turns what a host sends into exactly that: an ``(H, W)`` float32 array in
[0, 1], rows top first like every frame, near = 1, background = 0.

- "z" uploads (depth along the camera axis: a renderer's Z pass, Blender's 1e10 for empty
  background) and "distance" uploads (distance from the camera's centre) are treated alike:
  inverted (1 / value, the disparity an estimator would report) and stretched over the
  foreground's own min/max, so the object's relief uses the whole range however far away
  it is. When the map has background, the foreground is stretched to
  [FOREGROUND_FLOOR, 1] instead of [0, 1], so even the farthest surface stays apart from
  the empty background and the silhouette survives.
- "normalized" uploads are already near = 1, far = 0 and are only clipped to [0, 1].
- Background (no geometry): non-finite values; for "z"/"distance" also values >= ``background_at``
  and values <= 0 (no distance); for "normalized" values <= ``background_at``. Background -> 0.

Normalisation happens at the upload's own resolution, before resampling, so the huge
background numbers never blend into the foreground.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import torch

from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import FORMAT_NAMES, ImageFrame, PixelFormat
from protocol.messages import ControlSettings, DepthInput

from .pixels import resize

FOREGROUND_FLOOR = 0.1
METRIC_CONVENTIONS = ("z", "distance")   # camera units, near is small: nearness is 1 / value
DEPTH_MODEL_ENV = "ATELIER_DEPTH_MODEL"
# Depth estimators looked for in the local Hugging Face cache, in this order.
KNOWN_DEPTH_MODELS = (
    "depth-anything/Depth-Anything-V2-Small-hf",
    "LiheYoung/depth-anything-small-hf",
    "Intel/dpt-hybrid-midas",
    "Intel/dpt-large",
)


def check_control(control: Optional[ControlSettings], has_depth: bool) -> None:
    """Request-level rules, checked while planning (no model needed)."""
    if control is None:
        return
    if not has_depth:
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            "control settings need a depth map (job.depth)", "job.control")
    if control.start > control.end:
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            f"control.end {control.end} is before control.start {control.start}",
                            "job.control.end")


def frame_depth_values(frame: ImageFrame, field: str) -> np.ndarray:
    """A FLOAT32 or GRAY8 upload as ``(H, W)`` float32 (GRAY8 scaled to 0..1)."""
    if frame.format == PixelFormat.FLOAT32:
        return np.frombuffer(frame.data, "<f4").reshape(frame.height, frame.width).astype(np.float32)
    if frame.format == PixelFormat.GRAY8:
        return np.frombuffer(frame.data, np.uint8).reshape(frame.height, frame.width) \
            .astype(np.float32) / 255.0
    name = FORMAT_NAMES.get(PixelFormat(frame.format), str(frame.format))
    raise ProtocolError(ErrorCode.INVALID_FIELD, f"a depth map must be float32 or gray8, not {name}",
                        field)


def background_mask(values: np.ndarray, depth: DepthInput) -> np.ndarray:
    """True where the map has no geometry."""
    with np.errstate(invalid="ignore"):
        background = ~np.isfinite(values)
        if depth.convention in METRIC_CONVENTIONS:
            background |= values <= 0
            if depth.background_at is not None:
                background |= values >= depth.background_at
        elif depth.background_at is not None:
            background |= values <= depth.background_at
    return background


def nearness(values: np.ndarray, depth: DepthInput) -> np.ndarray:
    """Raw depth values -> near = 1, background = 0, float32, same size."""
    background = background_mask(values, depth)
    out = np.zeros(values.shape, np.float32)
    if background.all():
        return out
    foreground = values[~background].astype(np.float64)
    if depth.convention == "normalized":
        out[~background] = np.clip(foreground, 0.0, 1.0)
        return out
    disparity = 1.0 / foreground
    low, high = disparity.min(), disparity.max()
    floor = FOREGROUND_FLOOR if background.any() else 0.0
    if high > low:
        out[~background] = floor + (1.0 - floor) * (disparity - low) / (high - low)
    else:
        out[~background] = 1.0      # one flat surface facing the camera
    return out


def depth_for_job(frame: ImageFrame, depth: DepthInput, width: int, height: int,
                  field: str = "job.depth.upload") -> np.ndarray:
    """The upload as a nearness map at ``width`` x ``height``."""
    return resize(nearness(frame_depth_values(frame, field), depth), width, height)


def control_tensor(near: np.ndarray) -> torch.Tensor:
    """Nearness ``(H, W)`` -> ``(1, 3, H, W)`` in [0, 1]: a ControlNet's conditioning image."""
    grey = torch.from_numpy(np.ascontiguousarray(near, dtype=np.float32))
    return grey[None, None].expand(1, 3, *grey.shape).contiguous()


def depth2img_tensor(near: np.ndarray) -> torch.Tensor:
    """Nearness ``(H, W)`` -> ``(1, H, W)``, SD2-depth's ``depth_map`` (it rescales it itself)."""
    if float(near.max()) <= float(near.min()):
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            "the depth map is flat (one value everywhere); SD2-depth needs some "
                            "variation in depth", "job.depth")
    return torch.from_numpy(np.ascontiguousarray(near, dtype=np.float32))[None]


# ------------------------------------------------------------------ estimation

_GET_ONE = (f"download one that ships .safetensors weights once, e.g. `huggingface-cli download "
            f"{KNOWN_DEPTH_MODELS[0]}`, or point {DEPTH_MODEL_ENV} at a local DPT / Depth "
            f"Anything folder with .safetensors weights; or send a depth map instead of "
            f"estimate=true")


def has_safetensors(folder: Path) -> bool:
    return any(folder.glob("*.safetensors"))


def require_safetensors(folder: Path) -> None:
    """Refuse a depth model folder without ``.safetensors`` weights: its ``.bin`` weights
    would be unpickled, and unpickling can run arbitrary code."""
    if not has_safetensors(folder):
        raise ProtocolError(ErrorCode.MODEL_NOT_FOUND,
                            f"the depth model {folder} has no .safetensors weights and Atelier "
                            f"never unpickles .bin weights; {_GET_ONE}", "job.depth.estimate")


def find_depth_model(environ: Mapping[str, str], hf_cache: Optional[Path]) -> Path:
    """The local folder of a depth estimator with safetensors weights: ``$ATELIER_DEPTH_MODEL``
    or a known model in the Hugging Face cache. ProtocolError(MODEL_NOT_FOUND) saying how
    to get one."""
    configured = environ.get(DEPTH_MODEL_ENV)
    if configured:
        folder = Path(configured).expanduser()
        if not (folder / "config.json").is_file():
            raise ProtocolError(ErrorCode.MODEL_NOT_FOUND,
                                f"{DEPTH_MODEL_ENV}={configured} is not a transformers model "
                                "folder (no config.json)", "job.depth.estimate")
        require_safetensors(folder)
        return folder
    pickle_only: list[str] = []
    if hf_cache is not None:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
        for repo_id in KNOWN_DEPTH_MODELS:
            try:
                folder = Path(snapshot_download(repo_id, cache_dir=str(hf_cache),
                                                local_files_only=True))
            except LocalEntryNotFoundError:
                continue    # not in the cache: try the next known model
            if has_safetensors(folder):
                return folder
            pickle_only.append(repo_id)
    skipped = (f" ({', '.join(pickle_only)} is cached with .bin weights only, which Atelier "
               f"never unpickles)" if pickle_only else "")
    raise ProtocolError(
        ErrorCode.MODEL_NOT_FOUND,
        f"depth estimation needs a depth model on this machine and none was found{skipped}. "
        f"To get one, {_GET_ONE}", "job.depth.estimate")


class DepthEstimator:
    """A transformers depth model (DPT, Depth Anything) loaded once from a local folder,
    in ``dtype`` (half precision on a GPU halves its memory). With ``keep_on_device``
    False (low-memory mode) it waits in CPU memory and visits ``device`` only while it
    estimates."""

    def __init__(self, folder: Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 keep_on_device: bool = True):
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation
        self.folder = Path(folder)
        self.device = device
        self.dtype = dtype
        self.keep_on_device = keep_on_device
        require_safetensors(self.folder)
        try:
            self.processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
            model = AutoModelForDepthEstimation.from_pretrained(
                str(folder), local_files_only=True, use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED,
                                f"depth model {folder} does not load: {exc}",
                                "job.depth.estimate") from exc
        self.model = model.to(device=device if keep_on_device else "cpu", dtype=dtype).eval()

    def estimate(self, rgb: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 -> nearness ``(H, W)``: these models predict relative inverse
        depth (near = large), stretched here to [0, 1]."""
        pixels = self.processor(images=rgb, return_tensors="pt")["pixel_values"]
        predicted = self._predict(pixels)
        if self.dtype == torch.float16 and not torch.isfinite(predicted).all():
            # Some estimators overflow in fp16: from now on this one runs in fp32.
            self.dtype = torch.float32
            self.model.to(dtype=torch.float32)
            predicted = self._predict(pixels)
        predicted = torch.nn.functional.interpolate(
            predicted[:, None].float(), size=rgb.shape[:2], mode="bicubic", align_corners=False)
        values = predicted[0, 0].cpu().numpy()
        low, high = values.min(), values.max()
        if high <= low:
            return np.zeros(values.shape, np.float32)
        return ((values - low) / (high - low)).astype(np.float32)

    def _predict(self, pixels: torch.Tensor) -> torch.Tensor:
        if not self.keep_on_device:
            self.model.to(self.device)
        try:
            with torch.no_grad():
                return self.model(pixel_values=pixels.to(self.device, self.dtype)).predicted_depth
        finally:
            if not self.keep_on_device:
                self.model.to("cpu")
