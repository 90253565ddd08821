"""Binary frames: one image each, a fixed 36-byte header, then the payload.

    offset size  field
    0      4     magic b"ATF1"
    4      1     kind     (FrameKind)
    5      1     format   (PixelFormat)
    6      2     index    (batch index for results, step for previews, 0 for uploads)
    8      4     width
    12     4     height
    16     16    id       (job id for results/previews, upload id for uploads; UUID bytes)
    32     4     payload length in bytes
    36     ...   payload

All integers big-endian. Raw pixels are row-major, top row first. FLOAT32
depth is little-endian IEEE 754 (what every current CPU and GPU uses).
"""

from __future__ import annotations

import enum
import struct
import uuid
from dataclasses import dataclass, field

from .errors import ErrorCode, ProtocolError

MAGIC = b"ATF1"
_HEADER = struct.Struct(">4sBBHII16sI")
HEADER_SIZE = _HEADER.size


class FrameKind(enum.IntEnum):
    RESULT = 1
    PREVIEW = 2
    UPLOAD = 3


class PixelFormat(enum.IntEnum):
    RGBA8 = 1      # 4 bytes a pixel
    GRAY8 = 2      # 1 byte a pixel (masks)
    FLOAT32 = 3    # 4 bytes a pixel, one channel (depth)
    PNG = 4        # a PNG file; width/height in the header must match it
    RGB8 = 5       # 3 bytes a pixel
    FLOAT32X3 = 6  # 12 bytes a pixel, three floats (exact camera-space normals)

    @property
    def bytes_per_pixel(self) -> int | None:
        return {PixelFormat.RGBA8: 4, PixelFormat.GRAY8: 1, PixelFormat.FLOAT32: 4,
                PixelFormat.RGB8: 3, PixelFormat.FLOAT32X3: 12}.get(self)


FORMAT_NAMES = {PixelFormat.RGBA8: "rgba8", PixelFormat.GRAY8: "gray8",
                PixelFormat.FLOAT32: "float32", PixelFormat.PNG: "png", PixelFormat.RGB8: "rgb8",
                PixelFormat.FLOAT32X3: "float32x3"}


@dataclass(frozen=True)
class ImageFrame:
    kind: FrameKind
    format: PixelFormat
    index: int
    width: int
    height: int
    id: str          # 32 lowercase hex digits
    data: bytes = field(repr=False)

    def __post_init__(self) -> None:
        check_payload(self.format, self.width, self.height, len(self.data))


def new_id() -> str:
    return uuid.uuid4().hex


def check_payload(fmt: PixelFormat, width: int, height: int, size: int) -> None:
    if width <= 0 or height <= 0:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"image size {width}x{height} is empty", "frame")
    bpp = PixelFormat(fmt).bytes_per_pixel
    if bpp is not None and size != width * height * bpp:
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE,
            f"{FORMAT_NAMES[PixelFormat(fmt)]} {width}x{height} needs {width * height * bpp} bytes, "
            f"frame has {size}", "frame")


def encode_frame(frame: ImageFrame) -> bytes:
    raw_id = bytes.fromhex(frame.id)
    return _HEADER.pack(MAGIC, frame.kind, frame.format, frame.index, frame.width,
                        frame.height, raw_id, len(frame.data)) + frame.data


def decode_frame(blob: bytes) -> ImageFrame:
    """Parse one binary frame; ProtocolError(BAD_MESSAGE) for anything malformed."""
    if len(blob) < HEADER_SIZE:
        raise ProtocolError(ErrorCode.BAD_MESSAGE,
                            f"binary frame of {len(blob)} bytes is shorter than the "
                            f"{HEADER_SIZE}-byte header", "frame")
    magic, kind, fmt, index, width, height, raw_id, length = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"binary frame magic {magic!r} is not {MAGIC!r}",
                            "frame")
    try:
        kind = FrameKind(kind)
    except ValueError:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"unknown frame kind {kind}", "frame.kind") from None
    try:
        fmt = PixelFormat(fmt)
    except ValueError:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"unknown pixel format {fmt}", "frame.format") from None
    payload = blob[HEADER_SIZE:]
    if len(payload) != length:
        raise ProtocolError(ErrorCode.BAD_MESSAGE,
                            f"frame says {length} payload bytes but carries {len(payload)} "
                            "(truncated?)", "frame")
    return ImageFrame(kind, fmt, index, width, height, raw_id.hex(), bytes(payload))
