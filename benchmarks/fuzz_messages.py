"""Fuzz messages for the daemon, and the checks on its replies (issue 11).

One implementation for ``tests/test_fuzz.py`` (a bounded run in the suite) and
``benchmarks/soak.py`` (long runs). A ``Case`` is what one generator makes: one or a few
frames (text or binary) and whether they are bad, that is whether exactly one ``error``
must come back. ``FuzzConnection`` sends cases over a raw websocket and says what went
wrong with the replies. Standard library, ``websockets`` and ``protocol`` only.
"""

from __future__ import annotations

import dataclasses
import json
import random
import struct
import threading
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Optional, Union

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from protocol.errors import ErrorCode
from protocol.frames import HEADER_SIZE, MAGIC, FrameKind, PixelFormat
from protocol.messages import (CLIENT_MESSAGES, Cancel, Fetch, GetStatus, Hello, ListModels,
                               LoadModel, Submit)

Frame = Union[str, bytes]

ERROR_MESSAGE_MAX = 2000   # characters of an error's message: input is quoted only in part
ERROR_FIELD_MAX = 300
ERROR_REPLY_MAX = 4096     # a whole error reply: no member may echo unbounded input
HUGE = 1 << 20             # about 1 MB: strings used as field names and values
SMALL_JOB = {"width": 64, "height": 64, "steps": 2, "prompt": "a brick wall"}
_HEADER = struct.Struct(">4sBBHII16sI")
_JOB_EVENTS = {"started", "progress", "result", "cancelled"}


@dataclass(frozen=True)
class Case:
    """``bad``: only ``error`` replies, at least one and at most one a frame, with a code in
    ``codes`` when given; otherwise any reply is fine. ``answered``: some reply must come
    (a well-formed upload needs none)."""
    label: str
    frames: tuple[Frame, ...]
    bad: bool = True
    codes: Optional[frozenset[str]] = None
    answered: bool = True
    family: str = ""         # the generator that made it

    def describe(self, limit: int = 160) -> str:
        parts = [_show(f, limit) for f in self.frames]
        return f"{self.label}: " + " + ".join(parts)


def _show(frame: Frame, limit: int) -> str:
    if isinstance(frame, bytes):
        head = frame[:HEADER_SIZE].hex()
        return f"<binary {len(frame)} B, header {head[:2 * HEADER_SIZE]}>"
    text = frame if len(frame) <= limit else f"{frame[:limit]}...({len(frame)} chars)"
    return ascii(text)


def codes(*names: str) -> frozenset[str]:
    return frozenset(names)


def text(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


def random_id(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


# ------------------------------------------------------------------ wrong types, walked
@dataclass(frozen=True)
class FieldSpec:
    """One field of a client message, ``path`` from the message's top level down."""
    message: type
    path: tuple[str, ...]
    type: Any
    required: bool
    bounds: dict[str, Any]


def field_specs() -> list[FieldSpec]:
    """Every field of every client message, nested records (GenerateRequest, DepthInput,
    ControlSettings) walked recursively."""
    specs: list[FieldSpec] = []
    for message in CLIENT_MESSAGES:
        _walk(message, (), message, specs)
    return specs


def _walk(message: type, prefix: tuple[str, ...], record: type, out: list[FieldSpec]) -> None:
    hints = typing.get_type_hints(record)
    for f in dataclasses.fields(record):
        tp = hints[f.name]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        path = prefix + (f.name,)
        out.append(FieldSpec(message, path, tp, required, dict(f.metadata)))
        nested = _record_of(tp)
        if nested is not None:
            _walk(message, path, nested, out)


def _record_of(tp: Any) -> Optional[type]:
    if typing.get_origin(tp) is Union:
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _record_of(inner[0]) if len(inner) == 1 else None
    return tp if dataclasses.is_dataclass(tp) else None


def wrong_values(tp: Any) -> list[Any]:
    """JSON values a field of type ``tp`` must refuse (``null`` is fine for Optional)."""
    origin = typing.get_origin(tp)
    if origin is Union:
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return wrong_values(inner[0])
    if origin is Literal:
        choices = typing.get_args(tp)
        shouted = [c.upper() for c in choices if isinstance(c, str) and c.upper() != c][:1]
        return ["not-a-choice", 1, True, [], {}, *shouted]
    if dataclasses.is_dataclass(tp):
        return [1, "x", [], True, [{}]]
    if origin is list:
        (item,) = typing.get_args(tp)
        return [1, "x", True, {}, *([v] for v in wrong_values(item)[:3])]
    if tp is bool:
        return [1, 0, "true", [], {}]
    if tp is int:
        return ["1", 1.5, 1.0, True, [], {}]       # 1.0 is a JSON number but not an integer
    if tp is float:
        return ["1.0", True, [], {}]
    if tp is str:
        return [1, 1.5, True, [], {}, ["x"]]
    raise TypeError(f"no wrong values for {tp!r}")


def out_of_range_values(spec: FieldSpec) -> list[Any]:
    bounds, values = spec.bounds, []
    is_int = _plain(spec.type) is int
    if bounds.get("min") is not None:
        values.append(bounds["min"] - (1 if is_int else 0.5))
    if bounds.get("max") is not None:
        values.append(bounds["max"] + (1 if is_int else 0.5))
    if bounds.get("max_len") is not None:
        values.append("x" * (bounds["max_len"] + 1))
    if spec.path[-1] in ("width", "height"):
        values.append(2 ** 31)
    return values


def _plain(tp: Any) -> Any:
    if typing.get_origin(tp) is Union:
        return [a for a in typing.get_args(tp) if a is not type(None)][0]
    return tp


def base_message(message: type, rng: random.Random) -> dict[str, Any]:
    """A message of this type that is well-formed; the cases break one thing in it."""
    bases: dict[type, dict[str, Any]] = {
        Hello: {"protocol": 1, "client": "fuzz"},
        Submit: {"job": dict(SMALL_JOB), "ref": "fuzz"},
        Cancel: {"job_id": random_id(rng)},
        Fetch: {"job_id": random_id(rng)},
        ListModels: {},
        LoadModel: {"model": f"no-such-model-{random_id(rng)[:8]}"},
        GetStatus: {},
    }
    return {"type": message.type, **json.loads(json.dumps(bases[message]))}


def with_value(data: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(data))
    node = out
    for name in path[:-1]:
        if not isinstance(node.get(name), dict):
            node[name] = {}
        node = node[name]
    node[path[-1]] = value
    return out


_SPECS = field_specs()


def gen_wrong_type(rng: random.Random) -> Case:
    spec = rng.choice(_SPECS)
    values = wrong_values(spec.type) + ([None] if spec.required else [])
    value = rng.choice(values)
    data = with_value(base_message(spec.message, rng), spec.path, value)
    return Case(f"wrong type {spec.message.type}.{'.'.join(spec.path)}={value!r}", (text(data),))


def every_wrong_type(rng: random.Random) -> Iterator[Case]:
    """Each wrong value for each field of each client message once, in a fixed order."""
    for spec in _SPECS:
        for value in wrong_values(spec.type) + ([None] if spec.required else []):
            data = with_value(base_message(spec.message, rng), spec.path, value)
            label = f"wrong type {spec.message.type}.{'.'.join(spec.path)}={value!r}"
            yield Case(label, (text(data),), family="every_wrong_type")


def gen_out_of_range(rng: random.Random) -> Case:
    spec = rng.choice([s for s in _SPECS if out_of_range_values(s)])
    value = rng.choice(out_of_range_values(spec))
    data = with_value(base_message(spec.message, rng), spec.path, value)
    return Case(f"out of range {spec.message.type}.{'.'.join(spec.path)}={_short(value)}",
                (text(data),), codes=_field_codes(spec.message))


def _field_codes(message: type) -> Optional[frozenset[str]]:
    """A field's error, except for hello: after the handshake a second one is bad_message."""
    if message is Hello:
        return None
    return codes(ErrorCode.INVALID_FIELD, ErrorCode.LIMIT_EXCEEDED)


def gen_missing_or_unknown_field(rng: random.Random) -> Case:
    message = rng.choice(CLIENT_MESSAGES)
    data = base_message(message, rng)
    required = [s for s in _SPECS if s.message is message and s.required and len(s.path) == 1]
    if required and rng.random() < 0.4:
        name = rng.choice(required).path[0]
        del data[name]
        return Case(f"missing field {message.type}.{name}", (text(data),),
                    codes=_field_codes(message))
    where = rng.choice([(), ("job",), ("job", "depth"), ("job", "control")]
                       if message is Submit else [()])
    name = rng.choice(["extra", "Type", "__proto__", "constructor", "job_ID", ""])
    data = with_value(data, where + (name,), 1)
    return Case(f"unknown field {message.type}.{'.'.join(where + (name,))}", (text(data),),
                codes=_field_codes(message))


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else f"{shown[:40]}...({len(shown)} chars)"


# ------------------------------------------------------------------ malformed JSON
def _valid_text(rng: random.Random) -> str:
    message = rng.choice(CLIENT_MESSAGES)
    return text(base_message(message, rng))


def gen_truncated(rng: random.Random) -> Case:
    whole = _valid_text(rng)
    cut = rng.randrange(0, len(whole) - 1)
    return Case("truncated JSON", (whole[:cut],), codes=codes(ErrorCode.BAD_MESSAGE))


def gen_garbage_text(rng: random.Random) -> Case:
    size = rng.choice([1, 7, 100, 5000])
    garbage = bytes(rng.randrange(256) for _ in range(size)).decode("latin-1")
    if garbage.lstrip()[:1] in "{[\"-0123456789tfnNI":  # could parse: make sure it does not
        garbage = "\x01" + garbage
    return Case("garbage text", (garbage,), codes=codes(ErrorCode.BAD_MESSAGE))


def gen_non_object(rng: random.Random) -> Case:
    choice = rng.choice(['[]', '[{"type":"get_status"}]', '1', '"get_status"', 'null', 'true',
                         '""', '  ', '', '{"type":"get_status"} {"type":"get_status"}'])
    return Case("non-object JSON", (choice,), codes=codes(ErrorCode.BAD_MESSAGE))


def gen_deep_nesting(rng: random.Random) -> Case:
    depth = rng.choice([33, 40, 100, 1000, 100_000])
    array, obj = "[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth
    nest = rng.choice([array, obj])
    where = rng.choice(["whole", "unknown field", "job", "job.prompt"])
    if where == "whole":
        frame = nest
    elif where == "unknown field":
        frame = '{"type":"get_status","x":' + nest + "}"
    elif where == "job":
        frame = '{"type":"submit","ref":"deep","job":' + nest + "}"
    else:
        frame = '{"type":"submit","ref":"deep","job":{"prompt":' + nest + "}}"
    return Case(f"nesting {depth} deep in {where}", (frame,),
                codes=codes(ErrorCode.BAD_MESSAGE, ErrorCode.INVALID_FIELD))


HUGE_NUMBERS = ("1" + "0" * 400, "-1" + "0" * 400, "1" + "0" * 4000, "1" + "0" * 5000,
                str(2 ** 63), str(-2 ** 63 - 1), str(2 ** 64), "1e400", "-1e400", "1E+999",
                "NaN", "Infinity", "-Infinity")


def gen_huge_number(rng: random.Random) -> Case:
    number = rng.choice(HUGE_NUMBERS)
    numeric = [s for s in _SPECS if _plain(s.type) in (int, float)]
    spec = rng.choice(numeric + [s for s in _SPECS if _plain(s.type) is str])
    data = with_value(base_message(spec.message, rng), spec.path, "__NUMBER__")
    frame = text(data).replace('"__NUMBER__"', number)
    return Case(f"number {_short(number)} in {spec.message.type}.{'.'.join(spec.path)}", (frame,),
                codes=codes(ErrorCode.BAD_MESSAGE, ErrorCode.INVALID_FIELD))


SURROGATES = ("\ud800", "\udfff", "a\udc00b", "\udfff\ud800")


def gen_surrogate(rng: random.Random) -> Case:
    lone = rng.choice(SURROGATES)
    where = rng.choice(["type", "field name", "job.prompt", "ref", "hello.client", "job_id",
                        "load_model"])
    data: dict[str, Any] = {
        "type": {"type": lone},
        "field name": {"type": "get_status", lone: 1},
        "job.prompt": {"type": "submit", "ref": "s", "job": {**SMALL_JOB, "prompt": lone}},
        "ref": {"type": "submit", "ref": lone, "job": {**SMALL_JOB, "width": 63}},
        "hello.client": {"type": "hello", "protocol": 1, "client": lone},
        "job_id": {"type": rng.choice(["cancel", "fetch"]), "job_id": lone},
        "load_model": {"type": "load_model", "model": lone},
    }[where]
    # json.dumps writes the lone surrogate as the escape \udXXX: valid UTF-8 on the wire
    return Case(f"lone surrogate in {where}", (text(data),))


def gen_huge_string(rng: random.Random) -> Case:
    big = "A" * (HUGE - rng.randrange(1000))
    where = rng.choice(["field name", "job field name", "type", "job.prompt", "ref", "job_id",
                        "load_model", "hello.client"])
    data: dict[str, Any] = {
        "field name": {"type": "get_status", big: 1},
        "job field name": {"type": "submit", "ref": "h", "job": {**SMALL_JOB, big: 1}},
        "type": {"type": big},
        "job.prompt": {"type": "submit", "ref": "h", "job": {**SMALL_JOB, "prompt": big}},
        "ref": {"type": "submit", "ref": big, "job": SMALL_JOB},
        "job_id": {"type": rng.choice(["cancel", "fetch"]), "job_id": big},
        "load_model": {"type": "load_model", "model": big},
        "hello.client": {"type": "hello", "protocol": 1, "client": big},
    }[where]
    return Case(f"1 MB string as {where}", (text(data),))


def gen_unknown_type(rng: random.Random) -> Case:
    kind = rng.choice(["launch_rockets", "welcome", "result", "error", "status", "Submit",
                       "SUBMIT", " submit", "submit\x00", "", "__proto__", "hello2",
                       random_id(rng)])
    return Case(f"unknown type {kind!r}", (text({"type": kind}),),
                codes=codes(ErrorCode.UNKNOWN_TYPE))


# ------------------------------------------------------------------ jobs and uploads
def gen_random_job_id(rng: random.Random) -> Case:
    kind = rng.choice(["cancel", "fetch"])
    if rng.random() < 0.5:
        job_id = random_id(rng)
        expected = codes(ErrorCode.UNKNOWN_JOB)
    else:
        job_id = rng.choice(["", "nope", "0" * 31, "0" * 33, random_id(rng).upper(),
                             "../../etc/passwd", "g" * 32, " " + random_id(rng)[1:]])
        expected = codes(ErrorCode.UNKNOWN_JOB, ErrorCode.INVALID_FIELD, ErrorCode.LIMIT_EXCEEDED)
    return Case(f"{kind} of id {job_id!r}", (text({"type": kind, "job_id": job_id}),),
                codes=expected)


def gen_bad_model_name(rng: random.Random) -> Case:
    name = rng.choice(["/etc/passwd", "../../../../etc/shadow", "/dev/zero", "/proc/self/mem",
                       "nul\x00byte", "C:\\Windows\\win.ini", "~/.ssh/id_rsa", ".", "..", "",
                       f"no-such-org/no-such-model-{random_id(rng)[:6]}", "file:///etc/passwd"])
    return Case(f"load_model {name!r}", (text({"type": "load_model", "model": name}),))


def gen_semantic_submit(rng: random.Random) -> Case:
    bad = rng.choice([
        {"kind": "img2img"}, {"kind": "inpaint"}, {"width": 63}, {"height": 4096},
        {"steps": 100_000}, {"batch_size": 1000}, {"width": 2048, "height": 4096},
        {"kind": "img2img", "init_image": random_id(rng)},
        {"kind": "inpaint", "init_image": random_id(rng), "mask": random_id(rng)},
        {"depth": {"upload": random_id(rng)}},
        {"kind": "make_seamless"}, {"seed": -1}, {"seed": 2 ** 32},
    ])
    return Case(f"submit {_short(bad)}", (text({"type": "submit", "ref": "sem",
                                                  "job": {**SMALL_JOB, **bad}}),))


def upload(upload_id: str, fmt: PixelFormat, width: int, height: int, payload: bytes, *,
           kind: int = FrameKind.UPLOAD, magic: bytes = MAGIC, length: Optional[int] = None,
           index: int = 0) -> bytes:
    """A binary frame as the bytes say, consistent or not."""
    size = len(payload) if length is None else length
    return _HEADER.pack(magic, kind, fmt, index, width, height, bytes.fromhex(upload_id),
                        size) + payload


def gen_bad_frame(rng: random.Random) -> Case:
    uid = random_id(rng)
    pixels = bytes(8 * 8 * 4)
    good = upload(uid, PixelFormat.RGBA8, 8, 8, pixels)
    choice = rng.choice(["short", "magic", "kind", "format", "length+", "length-",
                         "size", "huge", "huge png", "zero"])
    frame = {
        "short": good[:rng.randrange(0, HEADER_SIZE)],
        "magic": b"ATF2" + good[4:],
        "kind": upload(uid, PixelFormat.RGBA8, 8, 8, pixels,
                       kind=rng.choice([0, FrameKind.RESULT, FrameKind.PREVIEW, 4, 255])),
        "format": good[:5] + bytes([rng.choice([0, 6, 255])]) + good[6:],
        "length+": upload(uid, PixelFormat.RGBA8, 8, 8, pixels, length=2 ** 32 - 1),
        "length-": good[:-rng.randrange(1, 200)],
        "size": upload(uid, PixelFormat.RGBA8, 9, 8, pixels),
        "huge": upload(uid, PixelFormat.RGBA8, 2 ** 32 - 1, 2 ** 32 - 1, pixels),
        "huge png": upload(uid, PixelFormat.PNG, 2 ** 31, 2 ** 31, b"\x89PNG\r\n\x1a\n"),
        "zero": upload(uid, PixelFormat.GRAY8, 0, 0, b""),
    }[choice]
    return Case(f"bad frame ({choice})", (frame,),
                codes=codes(ErrorCode.BAD_MESSAGE, ErrorCode.LIMIT_EXCEEDED))


def gen_uploads(rng: random.Random) -> Case:
    """Well-formed uploads, an id used twice (the second replaces the first), or a PNG that
    does not decode (checked only when a submit names it): nothing needs answering."""
    uid = random_id(rng)
    frame = upload(uid, PixelFormat.RGBA8, 8, 8, bytes(rng.randrange(256) for _ in range(256)))
    choice = rng.choice(["once", "reused id", "garbage png"])
    if choice == "garbage png":
        frame = upload(uid, PixelFormat.PNG, 64, 64, b"\x89PNG\r\n\x1a\n" + bytes(100))
    frames = (frame, frame) if choice == "reused id" else (frame,)
    return Case(f"upload ({choice})", frames, bad=False, answered=False)


def gen_uploads_then_bad_submit(rng: random.Random) -> Case:
    """Uploads a submit names wrongly: one RGBA8 id as both init_image and mask (an RGBA8
    mask is refused), a PNG that does not decode, a mask of another size."""
    init_id, mask_id = random_id(rng), random_id(rng)
    init = upload(init_id, PixelFormat.RGBA8, 64, 64, bytes(64 * 64 * 4))
    choice = rng.choice(["same id for init and mask", "garbage png", "mask of another size",
                         "empty mask"])
    job: dict[str, Any] = {**SMALL_JOB, "kind": "inpaint", "init_image": init_id,
                           "mask": mask_id}
    if choice == "same id for init and mask":
        frames: tuple[Frame, ...] = (init,)
        job["mask"] = init_id
    elif choice == "garbage png":
        png = upload(init_id, PixelFormat.PNG, 64, 64, b"\x89PNG\r\n\x1a\n" + bytes(64))
        frames = (png,)
        job = {**SMALL_JOB, "kind": "img2img", "init_image": init_id}
    elif choice == "mask of another size":
        frames = (init, upload(mask_id, PixelFormat.GRAY8, 32, 32, bytes([255]) * 1024))
    else:
        frames = (init, upload(mask_id, PixelFormat.GRAY8, 64, 64, bytes(64 * 64)))
    return Case(f"uploads then submit ({choice})",
                frames + (text({"type": "submit", "ref": "up", "job": job}),))


def gen_second_hello(rng: random.Random) -> Case:
    return Case("second hello", (text({"type": "hello", "protocol": 1, "client": "again"}),))


def gen_valid(rng: random.Random) -> Case:
    message = rng.choice([GetStatus, ListModels])
    return Case(f"valid {message.type}", (text({"type": message.type}),), bad=False)


Generator = Callable[[random.Random], Case]

# weights: about the share of cases each generator makes
GENERATORS: dict[Generator, float] = {
    gen_wrong_type: 26, gen_out_of_range: 8, gen_missing_or_unknown_field: 5,
    gen_truncated: 5, gen_garbage_text: 4, gen_non_object: 3, gen_deep_nesting: 3,
    gen_huge_number: 6, gen_surrogate: 4, gen_huge_string: 0.8, gen_unknown_type: 4,
    gen_random_job_id: 6, gen_bad_model_name: 2, gen_semantic_submit: 5, gen_bad_frame: 10,
    gen_uploads: 3, gen_uploads_then_bad_submit: 3, gen_second_hello: 1, gen_valid: 2,
}
# before hello every message is bad; no composite cases (each frame gets its own error)
BEFORE_HELLO = [g for g in GENERATORS
                if g not in (gen_second_hello, gen_uploads, gen_uploads_then_bad_submit)]


def fuzz_cases(rng: random.Random, count: int, *, before_hello: bool = False,
               huge_strings: bool = True) -> Iterator[Case]:
    """``count`` cases drawn by weight; before hello every case is bad (``not_ready`` or a
    decoding error). ``huge_strings=False`` leaves out the 1 MB strings (fast runs)."""
    pool = [g for g in (BEFORE_HELLO if before_hello else GENERATORS)
            if huge_strings or g is not gen_huge_string]
    weights = [GENERATORS[g] for g in pool]
    for _ in range(count):
        generator = rng.choices(pool, weights)[0]
        case = dataclasses.replace(generator(rng), family=generator.__name__.removeprefix("gen_"))
        yield (dataclasses.replace(case, bad=True, codes=None, answered=True) if before_hello
               else case)


# ------------------------------------------------------------------ checking replies
def error_problem(message: dict[str, Any], raw: str, allowed: Optional[frozenset[str]]) -> Optional[str]:
    """What is wrong with an ``error`` reply, or None."""
    code = message.get("code")
    if code not in ErrorCode.ALL:
        return f"undocumented error code: {code!r}"
    if allowed is not None and code not in allowed:
        return f"unexpected error code: {code!r}, expected one of {sorted(allowed)}"
    text_ = message.get("message")
    if not isinstance(text_, str) or not text_:
        return "error without a message"
    if len(text_) >= ERROR_MESSAGE_MAX:
        return f"unbounded echo: an error message of {len(text_)} characters"
    where = message.get("field")
    if where is not None and len(str(where)) >= ERROR_FIELD_MAX:
        return f"unbounded echo: an error field of {len(str(where))} characters"
    if len(raw) >= ERROR_REPLY_MAX:
        return f"unbounded echo: an error reply of {len(raw)} characters"
    return None


def describe_reply(raw: Frame) -> str:
    if isinstance(raw, bytes):
        return f"<binary frame of {len(raw)} bytes>"
    return _show(raw, 200)


@dataclass
class Outcome:
    problems: list[str] = field(default_factory=list)
    closed: Optional[str] = None       # how the connection ended, when it did
    hung: bool = False


class Hang(Exception):
    """No reply within the timeout."""


class FuzzConnection:
    """One raw websocket to the daemon that sends cases and checks what comes back.

    After each case a *sentinel* (a submit with a fresh ``ref`` and width 63) marks where
    the case's replies end, so a case with no reply is seen at once. Events of jobs this
    connection had accepted are set aside: they are not replies to later cases.
    """

    def __init__(self, url: str, *, timeout: float = 10.0, client_key: Optional[str] = None,
                 hello: bool = True, name: str = "fuzz"):
        self.url = url
        self.timeout = timeout
        self.conn: ClientConnection = connect(url, proxy=None, max_size=None,
                                              open_timeout=timeout, close_timeout=2)
        self.jobs: set[str] = set()
        self.welcome: dict[str, Any] = {}
        self._sentinels = 0
        if hello:
            self.hello(client_key, name)

    @property
    def client_key(self) -> Optional[str]:
        return self.welcome.get("client_key")

    def hello(self, client_key: Optional[str] = None, name: str = "fuzz") -> dict[str, Any]:
        data: dict[str, Any] = {"type": "hello", "protocol": 1, "client": name}
        if client_key:
            data["client_key"] = client_key
        self.conn.send(text(data))
        self.welcome = self.next_message()
        if self.welcome.get("type") != "welcome":
            raise RuntimeError(f"hello answered with {self.welcome}")
        return self.welcome

    def close(self) -> None:
        self.conn.close()

    def abort(self) -> None:
        """Go away without a closing handshake, as a crashed client or a pulled cable."""
        import socket

        try:
            self.conn.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        # let the library's reader see the end of the stream first: closing at once races it
        self.conn.recv_events_thread.join(self.timeout)
        self.conn.close()

    # ------------------------------------------------------------ receiving
    def recv(self, deadline: float) -> Frame:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Hang()
        try:
            return self.conn.recv(timeout=left)
        except TimeoutError:
            raise Hang() from None

    def next_reply(self, deadline: float) -> tuple[Frame, Optional[dict[str, Any]]]:
        """The next frame that is not an event of this connection's own jobs."""
        while True:
            raw = self.recv(deadline)
            if isinstance(raw, bytes):
                if self._own_job_frame(raw):
                    continue
                return raw, None
            try:
                message = json.loads(raw)
            except ValueError:
                return raw, None
            if not isinstance(message, dict):
                return raw, None
            if message.get("job_id") in self.jobs and message.get("type") in (*_JOB_EVENTS, "error"):
                continue
            if message.get("type") == "accepted" and isinstance(message.get("job_id"), str):
                self.jobs.add(message["job_id"])
            return raw, message

    def next_message(self, timeout: Optional[float] = None) -> dict[str, Any]:
        raw, message = self.next_reply(time.monotonic() + (timeout or self.timeout))
        if message is None:
            raise RuntimeError(f"expected a message, got {describe_reply(raw)}")
        return message

    def _own_job_frame(self, raw: bytes) -> bool:
        if len(raw) < HEADER_SIZE:
            return False
        kind, frame_id = raw[4], raw[16:32].hex()
        return kind in (FrameKind.RESULT, FrameKind.PREVIEW) and frame_id in self.jobs

    # ------------------------------------------------------------ cases
    def run_case(self, case: Case, *, sentinel: bool = True) -> Outcome:
        """Send the case and check the replies. Without ``sentinel`` (before hello) exactly
        one reply is awaited."""
        outcome = Outcome()
        try:
            for frame in case.frames:
                self.conn.send(frame)
            if sentinel:
                replies = self._replies_until_sentinel(case)
            else:
                replies = [self.next_reply(time.monotonic() + self.timeout)]
        except Hang:
            outcome.hung = True
            outcome.problems.append(f"no reply: none within {self.timeout:g} s")
            return outcome
        except ConnectionClosed as exc:
            outcome.closed = _closed(exc)
            outcome.problems.append(f"connection closed: {outcome.closed}")
            return outcome
        outcome.problems.extend(self._judge(case, replies))
        return outcome

    def _replies_until_sentinel(self, case: Case) -> list[tuple[Frame, Optional[dict[str, Any]]]]:
        self._sentinels += 1
        ref = f"sentinel-{self._sentinels}"
        self.conn.send(text({"type": "submit", "ref": ref, "job": {"width": 63}}))
        deadline = time.monotonic() + self.timeout
        replies, seen = [], False
        # a case's reply may come after the sentinel's (work handed to another thread)
        while not seen or (case.answered and not replies):
            raw, message = self.next_reply(deadline)
            if message is not None and message.get("ref") == ref:
                seen = True
                if message.get("type") != "error":
                    replies.append((raw, message))   # judged as a reply: it must not happen
                continue
            replies.append((raw, message))
        return replies

    def _judge(self, case: Case, replies: list[tuple[Frame, Optional[dict[str, Any]]]]) -> list[str]:
        problems = []
        if case.bad and not replies:
            problems.append("no error reply")
        if case.bad and len(replies) > len(case.frames):
            problems.append(f"too many replies: {len(replies)} to {len(case.frames)} frame(s): "
                            + "; ".join(describe_reply(raw) for raw, _ in replies[:3]))
        for raw, message in replies:
            kind = message.get("type") if message else None
            if kind == "error":
                problem = error_problem(message, raw, case.codes if case.bad else None)
                if problem:
                    problems.append(f"{problem} -- {describe_reply(raw)}")
            elif case.bad:
                kind = kind if isinstance(kind, str) else "?"
                problems.append(f"non-error reply: {kind[:20]} -- {describe_reply(raw)}")
            elif message is None:
                problems.append(f"unexpected reply: {describe_reply(raw)}")
        return problems

    # ------------------------------------------------------------ jobs
    def submit(self, job: dict[str, Any], ref: str = "job") -> str:
        """Submit a job; its id once accepted."""
        self.conn.send(text({"type": "submit", "ref": ref, "job": job}))
        deadline = time.monotonic() + self.timeout
        while True:
            raw, message = self.next_reply(deadline)
            if message and message.get("ref") == ref:
                if message.get("type") != "accepted":
                    raise RuntimeError(f"submit answered with {describe_reply(raw)}")
                return message["job_id"]

    def wait_job(self, job_id: str, timeout: float = 60.0,
                 until: tuple[str, ...] = ("result", "cancelled", "error")) -> JobEnd:
        """Read this job's events until one of ``until`` (counting its RESULT frames)."""
        deadline = time.monotonic() + timeout
        frames = 0
        while True:
            raw = self.recv(deadline)
            if isinstance(raw, bytes):
                if len(raw) >= HEADER_SIZE and raw[4] == FrameKind.RESULT and raw[16:32].hex() == job_id:
                    frames += 1
                continue
            message = json.loads(raw)
            if (isinstance(message, dict) and message.get("job_id") == job_id
                    and message.get("type") in until):
                return JobEnd(message, frames)

    def run_small_job(self, timeout: float = 60.0, **fields: Any) -> JobEnd:
        job_id = self.submit({**SMALL_JOB, **fields}, ref=f"small-{time.monotonic_ns()}")
        return self.wait_job(job_id, timeout)

    def fetch(self, job_id: str, timeout: float = 60.0) -> JobEnd:
        self.conn.send(text({"type": "fetch", "job_id": job_id}))
        return self.wait_job(job_id, timeout)


@dataclass(frozen=True)
class JobEnd:
    message: dict[str, Any]
    result_frames: int

    @property
    def ok(self) -> bool:
        images = self.message.get("images")
        return (self.message.get("type") == "result" and isinstance(images, list)
                and self.result_frames == len(images) > 0)


def _closed(exc: ConnectionClosed) -> str:
    rcvd = exc.rcvd
    if rcvd is None:
        return "without a close frame (1006)"
    return f"code {rcvd.code} {rcvd.reason!r}"


def summarize(found: list[tuple[Case, str]], examples: int = 2) -> str:
    """Problems grouped by generator and kind of problem, most frequent first, with an
    example or two of each (distinct cases): what was sent -> what happened."""
    groups: dict[tuple[str, str], list[tuple[Case, str]]] = {}
    for case, problem in found:
        key = (case.family or case.label, problem.split(":", 1)[0].split(" -- ")[0])
        groups.setdefault(key, []).append((case, problem))
    lines = [f"{len(found)} problems in {len(groups)} groups:"]
    for (family, kind), members in sorted(groups.items(), key=lambda g: -len(g[1])):
        lines.append(f"{len(members):5d} x [{family}] {kind}")
        shown = {case.label: (case, problem) for case, problem in reversed(members)}
        for case, problem in list(shown.values())[:examples]:
            lines.append(f"        e.g. {case.describe()}\n          -> {_cut(problem, 400)}")
    return "\n".join(lines)


def _cut(line: str, limit: int) -> str:
    return line if len(line) <= limit else f"{line[:limit]}..."


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux), from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class RssSampler:
    """The daemon's resident memory a few times a second: start, peak, end."""

    def __init__(self, pid: Optional[int], every_s: float = 0.2):
        self.pid, self.every_s = pid, every_s
        self.start = self.peak = self.end = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "RssSampler":
        if self.pid is not None:
            self.start = self.peak = self.end = rss_bytes(self.pid)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.end = rss_bytes(self.pid)
            except (OSError, RuntimeError):
                return                          # the process is gone: deaths say so
            self.peak = max(self.peak, self.end)
