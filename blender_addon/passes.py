"""Blender's render passes as a job's control layers, and the panel's reference image.

Render to Image and Project Texture send the passes the panel's Controls ask for (depth,
camera-space normals, Freestyle lines) from one render of the scene camera; multi-view
texturing needs the same per view (depth and normals of each view as two controls of one
job): :func:`render_passes` renders them, :func:`pass_uploads` makes them uploads and the
kind -> upload id map that ``settings.build_request(controls=...)`` turns into
``ControlLayer``s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional

import bpy

from . import capture, host, settings
from .protocol import GenerateRequest, ImageFrame, PixelFormat
from .protocol.client import make_upload

# The longest side a reference image is sent at: the daemon's image encoder takes a
# 224 px square of it, so larger pictures only cost upload time.
REFERENCE_SIDE = 1024


@dataclass(frozen=True)
class PassUploads:
    """A capture's passes as uploads, and which upload holds which control kind."""
    uploads: tuple[ImageFrame, ...]
    ids: dict[str, str]


def render_passes(scene: bpy.types.Scene, view_layer: bpy.types.ViewLayer, width: int,
                  height: int, kinds: Iterable[str], *, color: bool = False,
                  as_viewport: bool = False, samples: Optional[int] = None
                  ) -> capture.Capture:
    """Render the scene camera once with the passes control ``kinds`` (settings.PASS_CONTROLS)
    need, and the colour too when ``color``; the scene is left as it was."""
    kinds = set(kinds)
    unknown = sorted(kinds - set(settings.PASS_CONTROLS))
    if unknown:
        raise ValueError(f"no pass control of kind {unknown}; kinds: {settings.PASS_CONTROLS}")
    return capture.render_camera(scene, view_layer, width, height, color=color,
                                 depth="depth" in kinds, normal="normal" in kinds,
                                 lines="lineart" in kinds, as_viewport=as_viewport,
                                 samples=samples)


def pass_uploads(shot: capture.Capture, exact_normals: bool = False) -> PassUploads:
    """The control passes ``shot`` holds as uploads: depth as FLOAT32 (the Z pass), normals
    and lines as RGBA8 control images (with ``exact_normals``, for a daemon that takes
    them, normals as FLOAT32X3 vectors)."""
    uploads, ids = [], {}
    normal = (shot.normal_vectors, PixelFormat.FLOAT32X3) \
        if exact_normals and shot.normal_vectors is not None \
        else (shot.normal, PixelFormat.RGBA8)
    for kind, data, fmt in (("depth", shot.depth, PixelFormat.FLOAT32),
                            ("normal", *normal),
                            ("lineart", shot.lines, PixelFormat.RGBA8)):
        if data is not None:
            frame = make_upload(fmt, shot.width, shot.height, data)
            uploads.append(frame)
            ids[kind] = frame.id
    return PassUploads(tuple(uploads), ids)


def reference_upload(props: Any) -> Optional[ImageFrame]:
    """The panel's reference image (``props``: the scene's Atelier settings) as an RGBA8
    upload, at most REFERENCE_SIDE a side; None when Use Reference is off. HostError when
    it is on and no image with pixels is picked."""
    if not props.use_reference:
        return None
    image = props.reference_image
    if image is None:
        raise host.HostError("Use Reference is on but no reference image is picked: pick "
                             "one of the .blend's images, or turn Use Reference off")
    width, height = image.size   # (0, 0) when its file cannot be read
    if not width or not height:
        raise host.HostError(f"reference image '{image.name}' has no pixels (is its file "
                             "missing?)")
    scale = min(1.0, REFERENCE_SIDE / max(width, height))
    if scale >= 1.0:
        return make_upload(PixelFormat.RGBA8, width, height, host.read_rgba8(image))
    small = image.copy()
    try:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small.scale(*size)
        return make_upload(PixelFormat.RGBA8, *size, host.read_rgba8(small))
    finally:
        bpy.data.images.remove(small)


def camera_job(shot: capture.Capture, panel: "settings.PanelSettings", *,
               reference: Optional[ImageFrame] = None
               ) -> tuple[GenerateRequest, list[ImageFrame]]:
    """The request of ``panel`` on a camera render, with its uploads: img2img on the colour
    when it was rendered (else txt2img), each rendered pass as a control, and the
    reference image when given."""
    passes = pass_uploads(shot)
    uploads = list(passes.uploads)
    init_id = None
    if shot.color is not None:
        init = make_upload(PixelFormat.RGBA8, shot.width, shot.height, shot.color)
        uploads.insert(0, init)
        init_id = init.id
    if reference is not None:
        uploads.append(reference)
    request = settings.build_request(panel, kind="img2img" if init_id else "txt2img",
                                     init_image=init_id, controls=passes.ids,
                                     reference=reference.id if reference else None,
                                     width=shot.width, height=shot.height)
    return request, uploads
