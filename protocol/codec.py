"""Text frames: encode a message record to JSON and decode JSON to a record. Pure."""

from __future__ import annotations

import json
from typing import Any, Iterable

from .errors import ErrorCode, ProtocolError
from .messages import MESSAGE_TYPES
from .schema import from_dict, to_dict


def encode_message(message: Any) -> str:
    data = {"type": message.type}
    data.update(to_dict(message))
    return json.dumps(data, separators=(",", ":"))


def decode_message(text: str | bytes, accept: Iterable[type] | None = None) -> Any:
    """Decode one text frame. ``accept`` limits which records this side may receive."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "a message must be a JSON object")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "a message needs a string 'type'", "type")
    cls = MESSAGE_TYPES.get(kind)
    if cls is None or (accept is not None and cls not in tuple(accept)):
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type '{kind}'", "type")
    return from_dict(cls, data)
