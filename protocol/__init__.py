"""Atelier protocol v1: message records, binary image frames, and a threaded client.

Standard library only (Python 3.10+), so Blender's and Krita's own Pythons can
import it. The codec (``codec``, ``frames``, ``schema``) does no I/O; the
client (``client``) is a thin layer on top. See PROTOCOL.md beside this file.
"""

from .codec import decode_message, encode_message
from .errors import ErrorCode, ProtocolError
from .events import Connected, Disconnected, JobDone, PreviewImage
from .frames import (FORMAT_NAMES, HEADER_SIZE, FrameKind, ImageFrame, PixelFormat,
                     decode_frame, encode_frame, new_id)
from .messages import *  # noqa: F401,F403  (the records are the public API)
from .messages import PROTOCOL_VERSION, GenerateRequest
from .schema import from_dict, to_dict, validate

__all__ = [
    "PROTOCOL_VERSION", "GenerateRequest", "ErrorCode", "ProtocolError",
    "encode_message", "decode_message", "encode_frame", "decode_frame", "ImageFrame",
    "FrameKind", "PixelFormat", "FORMAT_NAMES", "HEADER_SIZE", "new_id",
    "Connected", "Disconnected", "JobDone", "PreviewImage", "from_dict", "to_dict", "validate",
]
