"""Turn dataclass records into JSON-ready dicts and back, validating as we go.

Every message and request is a frozen dataclass. Field types drive the
validation (``str``, ``int``, ``float``, ``bool``, ``Optional``, ``list``,
``dict[str, X]``, ``Literal`` and nested records); ranges come from
:func:`spec` metadata. Pure functions, no I/O.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from typing import Any, Literal, Union

from .errors import ErrorCode, ProtocolError

_NoneType = type(None)
INT_LIMIT = 2 ** 63           # integers outside +-INT_LIMIT are refused (no field needs more)
ECHO_MAX = 64                 # characters of a client's name or value quoted in an error


def spec(default: Any = dataclasses.MISSING, *, min: float | None = None,
         max: float | None = None, max_len: int | None = None,
         default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with bounds checked on decode (and on ``validate``)."""
    meta = {"min": min, "max": max, "max_len": max_len}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _hints(cls: type) -> dict[str, Any]:
    cache = cls.__dict__.get("__atelier_hints__")
    if cache is None:
        module = sys.modules[cls.__module__]
        cache = typing.get_type_hints(cls, vars(module))
        setattr(cls, "__atelier_hints__", cache)
    return cache


def to_dict(record: Any) -> dict[str, Any]:
    """A JSON-ready dict of a record; ``None`` fields are left out."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if value is None:
            continue
        out[f.name] = _to_json(value)
    return out


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build ``cls`` from a decoded JSON object, raising ProtocolError on any mismatch."""
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            f"expected an object, got {_kind(data)}", path or None)
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields) - {"type"})
    if unknown:
        name = shorten(unknown[0])
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"unknown field '{name}'", _join(path, name))
    kwargs = {}
    for name, f in fields.items():
        where = _join(path, name)
        if name not in data or data[name] is None:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                if _allows_none(hints[name]):
                    kwargs[name] = None
                    continue
                raise ProtocolError(ErrorCode.INVALID_FIELD, f"'{name}' is required", where)
            continue
        value = _convert(hints[name], data[name], where)
        _check_bounds(f, value, where)
        kwargs[name] = value
    return cls(**kwargs)


def validate(record: Any, path: str = "") -> None:
    """Check the bounds of a record built in code (what decode checks for received ones)."""
    from_dict(type(record), to_dict(record), path)


def _allows_none(tp: Any) -> bool:
    return typing.get_origin(tp) is Union and _NoneType in typing.get_args(tp)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not _NoneType]
        if value is None:
            return None
        if len(args) == 1:
            return _convert(args[0], value, where)
        for arg in args:
            try:
                return _convert(arg, value, where)
            except ProtocolError:
                continue
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"unexpected {_kind(value)}", where)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            listed = ", ".join(repr(c) for c in choices)
            raise ProtocolError(ErrorCode.INVALID_FIELD,
                                f"must be one of {listed}, got {shorten(repr(value))}", where)
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ProtocolError(ErrorCode.INVALID_FIELD, f"expected a list, got {_kind(value)}", where)
        (item,) = typing.get_args(tp)[:1]
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ProtocolError(ErrorCode.INVALID_FIELD, f"expected an object, got {_kind(value)}", where)
        _, item = typing.get_args(tp)
        return {str(k): _convert(item, v, _join(where, shorten(str(k)))) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ProtocolError(ErrorCode.INVALID_FIELD, f"expected true or false, got {_kind(value)}", where)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProtocolError(ErrorCode.INVALID_FIELD, f"expected an integer, got {_kind(value)}", where)
        _check_int_range(value, where)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ProtocolError(ErrorCode.INVALID_FIELD, f"expected a number, got {_kind(value)}", where)
        if isinstance(value, int):
            _check_int_range(value, where)
        if value != value or value in (float("inf"), float("-inf")):
            raise ProtocolError(ErrorCode.INVALID_FIELD, "must be a finite number", where)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ProtocolError(ErrorCode.INVALID_FIELD, f"expected a string, got {_kind(value)}", where)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # JSON allows "\ud800"; a lone surrogate is no text and fails wherever it is used.
            raise ProtocolError(ErrorCode.INVALID_FIELD,
                                "is not valid Unicode text (a lone surrogate)", where) from None
        return value
    raise TypeError(f"schema cannot handle type {tp!r} at {where}")


def _check_int_range(value: int, where: str) -> None:
    if not -INT_LIMIT < value < INT_LIMIT:
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            f"integer out of range (more than {len(str(INT_LIMIT))} digits)", where)


def shorten(text: str, limit: int = ECHO_MAX) -> str:
    """``text`` cut to ``limit`` characters, for quoting client input in an error."""
    return text if len(text) <= limit else text[:limit] + "..."


def _check_bounds(f: dataclasses.Field, value: Any, where: str) -> None:
    meta = f.metadata
    lo, hi, max_len = meta.get("min"), meta.get("max"), meta.get("max_len")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and value < lo:
            raise ProtocolError(ErrorCode.INVALID_FIELD, f"must be at least {lo}, got {value}", where)
        if hi is not None and value > hi:
            raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, f"must be at most {hi}, got {value}", where)
    if max_len is not None and isinstance(value, (str, list)) and len(value) > max_len:
        raise ProtocolError(ErrorCode.LIMIT_EXCEEDED,
                            f"is {len(value)} long, the limit is {max_len}", where)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
