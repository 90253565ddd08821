"""A job's controls -> control images at the output size; part of planning, no model needed.

A job names its controls in ``controls`` (``ControlLayer``s), and may also carry the first
form of protocol v1: ``depth`` (+ ``control`` settings). ``job_controls`` turns both into one
list of ``PlannedControl`` (the old pair first), so everything after planning has one
code path. Each planned control holds its control image as the kind's models take it
(``(H, W, 3)`` float32 in [0, 1] at the output size), made here from the upload:

- ``preprocess`` false: the upload is the control image (8-bit images as they are, with
  ``invert`` for dark lines on light; a float32 depth map read as ``DepthInput``);
- ``preprocess`` true: the built-in preprocessors (preprocess.py) make it from the picture;
  depth estimation needs a model, so it is left to the generator (``estimate`` set, with
  the picture in ``source``); pose detection is not available (model_not_found).

Errors name the field: ``job.controls[i].image`` and so on; for the old form ``job.depth``
and ``job.control`` as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np

from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import ImageFrame, PixelFormat
from protocol.messages import CONTROLS_MAX, ControlLayer, DepthInput, GenerateRequest

from .depth import check_control, depth_for_job
from .pixels import frame_to_gray, frame_to_rgba, job_upload, resize
from .preprocess import BUILT_IN, normal_from_height
from .tiling import TileAxes, tile_axes

POSE_HOW_TO = ("pose detection from a picture needs an OpenPose/DWPose detector, and this daemon "
               "has none it can run without unpickling weights; render or draw the pose "
               "skeleton (OpenPose colours) and send it with preprocess=false, together with a "
               "pose ControlNet (atelier models pull lllyasviel/control_v11p_sd15_openpose)")


@dataclass(frozen=True)
class PlannedControl:
    """One control of a job, resolved. ``field``: where it came from, for errors
    (``job.controls[0]``, or ``job.control`` for the old depth form). ``image``: the control
    image at the output size, None while depth is still to be ``estimate``d from ``source``
    (uint8 RGB at the output size)."""
    kind: str
    field: str
    model: Optional[str]
    scale: float
    start: float
    end: float
    image: Optional[np.ndarray] = field(default=None, compare=False, repr=False)
    estimate: bool = False
    source: Optional[np.ndarray] = field(default=None, compare=False, repr=False)
    legacy: bool = False       # the old depth + control pair (its errors keep their codes)

    def with_image(self, image: np.ndarray) -> "PlannedControl":
        return PlannedControl(self.kind, self.field, self.model, self.scale, self.start,
                              self.end, image, False, None, self.legacy)


def job_controls(job: GenerateRequest, uploads: Mapping[str, ImageFrame],
                 init_rgb: Optional[np.ndarray] = None) -> tuple[PlannedControl, ...]:
    """Every control of ``job`` at its output size. ``init_rgb``: the init image at the
    output size (uint8 RGB), what a control with ``preprocess`` and no image is made from."""
    controls: list[PlannedControl] = []
    legacy = _legacy_depth(job, uploads, init_rgb)
    if legacy is not None:
        controls.append(legacy)
    if len(controls) + len(job.controls) > CONTROLS_MAX:
        raise ProtocolError(ErrorCode.LIMIT_EXCEEDED,
                            f"{len(controls) + len(job.controls)} controls (job.depth counts as "
                            f"one); the limit is {CONTROLS_MAX}", "job.controls")
    axes = tile_axes(job.tiling)    # preprocessors wrap on tiled axes, as the networks do
    for index, layer in enumerate(job.controls):
        controls.append(plan_layer(layer, f"job.controls[{index}]", job.width, job.height,
                                   uploads, init_rgb, axes))
    return tuple(controls)


def plan_layer(layer: ControlLayer, where: str, width: int, height: int,
               uploads: Mapping[str, ImageFrame], init_rgb: Optional[np.ndarray],
               axes: TileAxes) -> PlannedControl:
    """One ``ControlLayer`` with its control image made at ``width`` x ``height``."""
    if layer.start > layer.end:
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            f"end {layer.end} is before start {layer.start}", f"{where}.end")
    planned = PlannedControl(layer.kind, where, layer.model, layer.scale, layer.start, layer.end)
    frame = None
    if layer.image is not None:
        frame = job_upload(uploads, layer.image, "control image", f"{where}.image")
    elif not layer.preprocess or init_rgb is None:
        need = "an image" if not layer.preprocess else "an image, or an init image to preprocess"
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"a {layer.kind} control needs {need}",
                            f"{where}.image")
    field_name = f"{where}.image"
    if layer.kind == "pose" and layer.preprocess:
        raise ProtocolError(ErrorCode.MODEL_NOT_FOUND, POSE_HOW_TO, f"{where}.preprocess")
    if frame is not None and frame.format == PixelFormat.FLOAT32X3:
        return planned.with_image(_exact_normals(frame, layer, width, height, field_name))
    if frame is not None and frame.format == PixelFormat.FLOAT32:
        if layer.kind not in ("depth", "normal"):
            raise ProtocolError(ErrorCode.INVALID_FIELD,
                                f"a float32 image is a depth map; a {layer.kind} control takes "
                                f"an 8-bit image", field_name)
        near = depth_for_job(frame, _depth_input(layer), width, height, field_name)
        if layer.kind == "depth":
            return planned.with_image(_grey_rgb(near))
        if not layer.preprocess:
            raise ProtocolError(ErrorCode.INVALID_FIELD,
                                "a normal control from a float32 depth map needs preprocess=true",
                                f"{where}.preprocess")
        return planned.with_image(normal_from_height(near, axes))
    picture = init_rgb if frame is None else _picture(frame, layer, field_name)
    picture = resize(picture, width, height)
    if not layer.preprocess:
        image = picture.astype(np.float32) / 255.0
        return planned.with_image(1.0 - image if layer.invert else image)
    if layer.invert:
        picture = 255 - picture     # a drawing's dark lines become light before detection
    if layer.kind == "depth":
        return PlannedControl(layer.kind, where, layer.model, layer.scale, layer.start,
                              layer.end, estimate=True, source=picture)
    return planned.with_image(BUILT_IN[layer.kind](picture, axes))


def _exact_normals(frame: ImageFrame, layer: ControlLayer, width: int, height: int,
                   field_name: str) -> np.ndarray:
    """A FLOAT32X3 upload of unit camera-space normals as the control image (H, W, 3) float32,
    each component n as (n + 1) / 2 (no surface, (0, 0, 0), stays black)."""
    if layer.kind != "normal":
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            f"a float32x3 image is a normal map; a {layer.kind} control takes "
                            f"an 8-bit image (or a float32 depth map)", field_name)
    if layer.preprocess:
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            "a float32x3 normal map is used as it is: preprocess must be false",
                            f"{field_name.rsplit('.', 1)[0]}.preprocess")
    normals = np.frombuffer(frame.data, "<f4").reshape(frame.height, frame.width, 3)
    if not np.isfinite(normals).all():
        raise ProtocolError(ErrorCode.INVALID_FIELD, "a float32x3 normal map holds a NaN or an "
                            "infinity", field_name)
    image = np.where(np.any(normals != 0.0, axis=2, keepdims=True),
                     (np.clip(normals, -1.0, 1.0) + 1.0) * 0.5, 0.0).astype(np.float32)
    image = resize(image, width, height)
    return 1.0 - image if layer.invert else image


def _depth_input(layer: ControlLayer) -> DepthInput:
    return DepthInput(convention=layer.convention, background_at=layer.background_at)


def _picture(frame: ImageFrame, layer: ControlLayer, field_name: str) -> np.ndarray:
    """An 8-bit upload as uint8 RGB; transparent pixels count as the (dark) ground."""
    if frame.format == PixelFormat.GRAY8:
        grey = frame_to_gray(frame, field_name)
        return np.repeat(grey[..., None], 3, axis=2)
    rgba = frame_to_rgba(frame, field_name)
    alpha = rgba[..., 3:4].astype(np.uint16)
    if layer.invert:   # dark lines on a light ground: transparency is the light ground
        return (255 - ((255 - rgba[..., :3].astype(np.uint16)) * alpha) // 255).astype(np.uint8)
    return ((rgba[..., :3].astype(np.uint16) * alpha) // 255).astype(np.uint8)


def _grey_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None].astype(np.float32), 3, axis=2)


def _legacy_depth(job: GenerateRequest, uploads: Mapping[str, ImageFrame],
                  init_rgb: Optional[np.ndarray]) -> Optional[PlannedControl]:
    """``job.depth`` (+ ``job.control``) as a planned depth control."""
    check_control(job.control, job.depth is not None)
    if job.depth is None:
        return None
    settings = job.control
    planned = PlannedControl("depth", "job.control", settings.model if settings else None,
                             settings.scale if settings else 1.0,
                             settings.start if settings else 0.0,
                             settings.end if settings else 1.0, legacy=True)
    if job.depth.estimate:
        if init_rgb is None:
            raise ProtocolError(ErrorCode.INVALID_FIELD,
                                "depth estimation works on the init image; this job has none",
                                "job.depth.estimate")
        return PlannedControl(planned.kind, planned.field, planned.model, planned.scale,
                              planned.start, planned.end, estimate=True, source=init_rgb,
                              legacy=True)
    if job.depth.upload is None:
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            "depth needs an upload (a float32 depth map) or estimate=true",
                            "job.depth.upload")
    frame = job_upload(uploads, job.depth.upload, "depth map", "job.depth.upload")
    return planned.with_image(_grey_rgb(depth_for_job(frame, job.depth, job.width, job.height)))


def nearness_of(control: PlannedControl) -> np.ndarray:
    """A depth control's image as the ``(H, W)`` nearness map it holds."""
    assert control.image is not None
    return np.ascontiguousarray(control.image[..., 0])

