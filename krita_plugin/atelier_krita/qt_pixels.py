"""Resampling and decoding through QImage (PyQt5 ships with every Krita build)."""

from __future__ import annotations

from PyQt5.QtCore import QBuffer, QByteArray, QIODevice, Qt
from PyQt5.QtGui import QImage, QImageReader

from .geometry import Extent
from .pixels import check_size

_FORMATS = {4: QImage.Format_RGBA8888, 1: QImage.Format_Grayscale8, 3: QImage.Format_RGB888}


def _image(data: bytes, extent: Extent, channels: int) -> QImage:
    check_size(data, extent, channels)
    return QImage(data, extent.width, extent.height, extent.width * channels, _FORMATS[channels])


def _bytes(image: QImage, channels: int) -> bytes:
    image = image.convertToFormat(_FORMATS[channels])
    width, height, stride = image.width(), image.height(), image.bytesPerLine()
    bits = image.constBits()
    bits.setsize(stride * height)
    raw = bits.asstring()
    row = width * channels
    if stride == row:
        return raw
    return b"".join(raw[y * stride:y * stride + row] for y in range(height))


def resample(data: bytes, source: Extent, target: Extent, channels: int) -> bytes:
    """RGBA8 (channels=4) or GRAY8 (channels=1) pixels scaled to ``target`` (smooth)."""
    if source == target:
        check_size(data, source, channels)
        return bytes(data)
    image = _image(data, source, channels)
    scaled = image.scaled(target.width, target.height, Qt.IgnoreAspectRatio,
                          Qt.SmoothTransformation)
    return _bytes(scaled, channels)


def read_png(png: bytes) -> QImage:
    """A PNG file as a QImage. Read through QImageReader, which lets go of Python's GIL
    while it decodes: ``QImage.fromData`` holds it, 0.5-1.2 s for an 8192x8192 result,
    and Qt's thread (whose timers call Python) waits all that time."""
    buffer = QBuffer()
    buffer.setData(QByteArray(png))
    buffer.open(QIODevice.ReadOnly)
    image = QImageReader(buffer, b"png").read()
    buffer.close()
    if image.isNull():
        raise ValueError("the daemon sent a PNG that Qt cannot read")
    return image


def decode_png_rgba(png: bytes) -> tuple[bytes, Extent]:
    """RGBA8 pixels of a PNG file."""
    image = read_png(png)
    return _bytes(image, 4), Extent(image.width(), image.height())


def load_image_rgba(path: str) -> tuple[bytes, Extent]:
    """RGBA8 pixels of an image file Qt can read (PNG, JPEG, WebP, ...); ValueError naming
    the file when it cannot."""
    image = QImage(path)
    if image.isNull():
        raise ValueError(f"cannot read the image file '{path}' (missing, or not a picture Qt "
                         "reads)")
    return _bytes(image, 4), Extent(image.width(), image.height())


def picture(data: bytes, extent: "Extent | None", channels: int) -> QImage:
    """A QImage of RGBA8 / RGB8 pixels (``extent``), or of a PNG file (``extent`` None),
    without copying the pixels in Python."""
    if extent is None:
        return read_png(data)
    return _image(data, extent, channels)


def rows_rgba(image: QImage, top: int, count: int) -> bytes:
    """RGBA8 of ``count`` rows of ``image`` from row ``top``: Qt copies and converts them
    (without Python's GIL), Python only gets those rows, never the whole image."""
    return _bytes(image.copy(0, top, image.width(), count), 4)


THUMB_PRESCALE = 4      # a thumbnail's source is first cut to this many times its size


def scaled_rgba(image: QImage, target: Extent) -> bytes:
    """RGBA8 of ``image`` scaled to ``target`` (smooth), for thumbnails. A large image is
    first reduced to THUMB_PRESCALE times ``target`` by nearest pixels: Qt's smooth scaling
    of a whole 8192x8192 image takes a third of a second and holds Python's GIL all along
    (so Qt's thread, were it on the worker), the two steps 20 ms."""
    coarse = Extent(target.width * THUMB_PRESCALE, target.height * THUMB_PRESCALE)
    if image.width() > 2 * coarse.width or image.height() > 2 * coarse.height:
        image = image.scaled(coarse.width, coarse.height, Qt.IgnoreAspectRatio,
                             Qt.FastTransformation)
    return _bytes(image.scaled(target.width, target.height, Qt.IgnoreAspectRatio,
                               Qt.SmoothTransformation), 4)
