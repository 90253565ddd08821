"""The pixel work of a job, done off Qt's thread.

Krita's API is called on Qt's thread only (``host.py``), and those calls are quick
copies. What turns the copies into uploads (mask grow and feather, scaling, channel
order, luminance) and the daemon's images into layer pixels is plain computation on
``bytes`` and ``QImage`` (which Qt allows on any thread): ``PixelWorker`` runs it on one
background thread, and the controller takes the results in ``pump`` on Qt's thread, in
the order it asked for them.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

from PyQt5.QtCore import Qt

from .geometry import Bounds, Extent, fit_within, thumbnail_extent
from .guides import REFERENCE_SIDE
from .history import ResultImage
from .jobs import JobPlan, JobSettings, UploadIds
from .pixels import (alpha, bgra_to_rgba, grow_and_feather, luminance, rgb_to_rgba, rgba_to_bgra,
                     with_alpha)
from .protocol.client import make_upload
from .protocol.errors import ErrorCode, ProtocolError
from .protocol.events import JobDone
from .protocol.frames import ImageFrame, PixelFormat
from .qt_pixels import decode_png_rgba, load_image_rgba, picture, resample, rows_rgba, scaled_rgba


@dataclass(frozen=True)
class ReferenceRead:
    """A reference image as read on Qt's thread: a layer's BGRA pixels (``extent``), or
    the path of an image file (read on the worker)."""
    bgra: bytes = b""
    extent: Extent = Extent(0, 0)
    path: str = ""


@dataclass(frozen=True)
class CanvasRead:
    """What a job read from the document on Qt's thread, region-sized: the selection (one
    byte a pixel), the visible canvas and the depth layer (BGRA); None = not needed. Then
    each control row's image (BGRA of its layer, or the selection's one byte a pixel),
    each reference, and each region layer's BGRA (its alpha is the region's mask)."""
    selection: Optional[bytes] = None
    canvas: Optional[bytes] = None
    depth: Optional[bytes] = None
    controls: tuple[bytes, ...] = ()
    references: tuple[ReferenceRead, ...] = ()
    regions: tuple[bytes, ...] = ()

    @property
    def empty(self) -> bool:
        return self.selection is None and self.canvas is None and self.depth is None and \
            not (self.controls or self.references or self.regions)


@dataclass(frozen=True)
class PreparedInputs:
    uploads: dict[str, ImageFrame]     # by role: "image", "mask", "depth"
    clip: Optional[bytes]              # region-sized alpha for the results, or None


def prepare_inputs(read: CanvasRead, plan: JobPlan, settings: JobSettings,
                   ids: UploadIds) -> PreparedInputs:
    """The uploads of a job (named by ``ids``) and the alpha its results get."""
    region, size = plan.region.extent, plan.model_extent
    uploads: dict[str, ImageFrame] = {}
    clip = None
    if read.selection is not None:
        clip = grow_and_feather(read.selection, region, settings.mask_grow, settings.mask_feather)
        if plan.send_mask:
            uploads["mask"] = _upload(ids.mask, PixelFormat.GRAY8, size,
                                      resample(clip, region, size, 1))
    if read.canvas is not None:
        uploads["image"] = _upload(ids.image, PixelFormat.RGBA8, size,
                                   resample(bgra_to_rgba(read.canvas), region, size, 4))
    if read.depth is not None:
        uploads["depth"] = _upload(ids.depth, PixelFormat.GRAY8, size,
                                   resample(luminance(read.depth), region, size, 1))
    _check_count(read.controls, ids.controls, "control layer")
    for index, (pixels, upload_id) in enumerate(zip(read.controls, ids.controls)):
        if len(pixels) == region.pixels:       # the selection: one byte a pixel
            uploads[f"control{index}"] = _upload(upload_id, PixelFormat.GRAY8, size,
                                                 resample(pixels, region, size, 1))
        else:
            uploads[f"control{index}"] = _upload(upload_id, PixelFormat.RGBA8, size,
                                                 resample(bgra_to_rgba(pixels), region, size, 4))
    _check_count(read.references, ids.references, "reference")
    for index, (ref, upload_id) in enumerate(zip(read.references, ids.references)):
        if ref.path:
            rgba, extent = load_image_rgba(ref.path)
        else:
            rgba, extent = bgra_to_rgba(ref.bgra), ref.extent
        target = fit_within(extent, REFERENCE_SIDE)
        uploads[f"reference{index}"] = _upload(upload_id, PixelFormat.RGBA8, target,
                                               resample(rgba, extent, target, 4))
    _check_count(read.regions, ids.regions, "region")
    for index, (bgra, upload_id) in enumerate(zip(read.regions, ids.regions)):
        uploads[f"region{index}"] = _upload(upload_id, PixelFormat.GRAY8, size,
                                            resample(alpha(bgra), region, size, 1))
    return PreparedInputs(uploads, clip)


def _check_count(read: tuple[Any, ...], ids: tuple[str, ...], what: str) -> None:
    if len(read) != len(ids):
        raise ValueError(f"{len(read)} {what} image(s) were read for {len(ids)} upload id(s)")


def _upload(upload_id: Optional[str], fmt: PixelFormat, size: Extent, data: bytes) -> ImageFrame:
    if upload_id is None:
        raise ValueError(f"no upload id for a {fmt.name} input")
    return replace(make_upload(fmt, size.width, size.height, data), id=upload_id)


def layer_pixels(frame: ImageFrame, region: Bounds, clip: Optional[bytes]) -> bytes:
    """A daemon image (a step preview or a result) as BGRA covering ``region``, its alpha
    multiplied by ``clip``."""
    rgba, extent = _frame_rgba(frame)
    rgba = resample(rgba, extent, region.extent, 4)
    if clip is not None:
        rgba = with_alpha(rgba, clip)
    return rgba_to_bgra(rgba)


def _frame_rgba(frame: ImageFrame) -> tuple[bytes, Extent]:
    if frame.format == PixelFormat.PNG:
        rgba, extent = decode_png_rgba(frame.data)
    elif frame.format == PixelFormat.RGBA8:
        rgba, extent = frame.data, Extent(frame.width, frame.height)
    elif frame.format == PixelFormat.RGB8:
        rgba, extent = rgb_to_rgba(frame.data), Extent(frame.width, frame.height)
    else:
        raise ProtocolError(ErrorCode.BAD_MESSAGE,
                            f"a result image in format {frame.format.name} is not a picture",
                            "frame.format")
    return rgba, extent


def result_layers(done: JobDone, region: Bounds,
                  clip: Optional[bytes]) -> list[tuple[bytes, int]]:
    """Every image of a finished job as (BGRA covering ``region``, seed)."""
    seeds = [info.seed for info in done.result.images]
    return [(layer_pixels(frame, region, clip), seed) for frame, seed in zip(done.images, seeds)]


THUMB_SIDE = 96     # history and batch thumbnails, pixels


def finished_images(done: JobDone, region: Bounds, clip: Optional[bytes]) -> list[ResultImage]:
    """Every image of a finished job with its seed and thumbnail (on the worker thread)."""
    size = thumbnail_extent(region.extent, THUMB_SIDE)
    # Scaling works channel by channel, so BGRA scales as it is; only the thumb is swapped.
    return [ResultImage(bgra, seed, bgra_to_rgba(resample(bgra, region.extent, size, 4)), size)
            for bgra, seed in result_layers(done, region, clip)]


# Bytes of one band of an asset result's rows: an 8192x8192 upscale is 256 MB, and one
# buffer that size (allocated, swapped, copied) holds Python's GIL, and so Qt's thread, for
# a tenth of a second or more; bands of this size never do.
BAND_BYTES = 1 << 20

Bands = tuple[tuple[Bounds, bytes], ...]


@dataclass(frozen=True)
class AssetImage:
    """One image of an upscale or a texture set: BGRA in bands of whole rows covering the
    region (``host.KritaDocument.add_layer`` writes them one by one), the daemon's label,
    and a ResultImage with its seed and thumbnail (no pixels: History keeps no more)."""
    bands: Bands
    label: Optional[str]
    result: ResultImage


def asset_images(done: JobDone, region: Bounds) -> list[AssetImage]:
    """Every image of a finished upscale or texture set, for layers over ``region``, in
    bands of rows (on the worker thread; Qt decodes, scales and copies the rows)."""
    out = []
    for frame, info in zip(done.images, done.result.images):
        image = _frame_picture(frame)
        if (image.width(), image.height()) != (region.width, region.height):
            image = image.scaled(region.width, region.height, Qt.IgnoreAspectRatio,
                                 Qt.SmoothTransformation)
        rows = max(1, BAND_BYTES // (4 * region.width))
        bands = tuple((Bounds(region.x, region.y + top, region.width,
                              min(rows, region.height - top)),
                       rgba_to_bgra(rows_rgba(image, top, min(rows, region.height - top))))
                      for top in range(0, region.height, rows))
        size = thumbnail_extent(region.extent, THUMB_SIDE)
        thumb = ResultImage(b"", info.seed, scaled_rgba(image, size), size)
        out.append(AssetImage(bands, info.label, thumb))
    return out


def _frame_picture(frame: ImageFrame) -> Any:
    if frame.format == PixelFormat.PNG:
        return picture(frame.data, None, 4)
    channels = {PixelFormat.RGBA8: 4, PixelFormat.RGB8: 3}.get(frame.format)
    if channels is None:
        raise ProtocolError(ErrorCode.BAD_MESSAGE,
                            f"a result image in format {frame.format.name} is not a picture",
                            "frame.format")
    return picture(frame.data, Extent(frame.width, frame.height), channels)


class PixelWorker:
    """One background thread for pixel work; ``submit`` returns a Future at once."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="atelier-pixels")

    def submit(self, work: Callable[..., Any], *args: Any) -> "Future[Any]":
        return self._pool.submit(work, *args)

    def close(self) -> None:
        """Drop the work not started yet; the piece running finishes on its own."""
        self._pool.shutdown(wait=False, cancel_futures=True)
