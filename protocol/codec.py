"""Text frames: encode a message record to JSON and decode JSON to a record. Pure."""

from __future__ import annotations

import json
from typing import Any, Iterable

from .errors import ErrorCode, ProtocolError
from .messages import MESSAGE_TYPES
from .schema import from_dict, shorten, to_dict

MAX_DEPTH = 32      # nesting of JSON objects and lists in one message; deeper is bad_message
REF_MAX = 100       # Submit.ref's length limit, so an error on a broken submit can echo it


def encode_message(message: Any) -> str:
    data = {"type": message.type}
    data.update(to_dict(message))
    return json.dumps(data, separators=(",", ":"))


def decode_message(text: str | bytes, accept: Iterable[type] | None = None) -> Any:
    """Decode one text frame. ``accept`` limits which records this side may receive."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise ProtocolError(ErrorCode.BAD_MESSAGE,
                            f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"not valid JSON: {shorten(str(exc), 200)}") from None
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "a message must be a JSON object")
    if _depth_over(data, MAX_DEPTH):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"JSON nested deeper than {MAX_DEPTH} levels")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "a message needs a string 'type'", "type")
    cls = MESSAGE_TYPES.get(kind)
    if cls is None or (accept is not None and cls not in tuple(accept)):
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type '{shorten(kind)}'",
                            "type")
    try:
        return from_dict(cls, data)
    except ProtocolError as exc:
        ref = data.get("ref")
        if exc.ref is None and isinstance(ref, str) and len(ref) <= REF_MAX:
            exc.ref = ref     # a broken submit's error still reaches the client's ref
        raise


def _depth_over(data: Any, limit: int) -> bool:
    """Whether ``data`` nests objects/lists more than ``limit`` deep (iteratively)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False
