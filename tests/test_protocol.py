"""The pure codec: messages, schema validation and binary frames."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from protocol import (HEADER_SIZE, ErrorCode, FrameKind, ImageFrame, PixelFormat, ProtocolError,
                      decode_frame, decode_message, encode_frame, encode_message, new_id)
from protocol.messages import (CLIENT_MESSAGES, SERVER_MESSAGES, ControlSettings, DepthInput,
                               Error, GenerateRequest, Hello, Submit)


def test_every_message_round_trips_through_json():
    job = GenerateRequest(kind="inpaint", prompt="p", width=64, height=48, seed=5,
                          init_image=new_id(), mask=new_id(),
                          depth=DepthInput(upload=new_id(), background_at=1e10),
                          control=ControlSettings(scale=0.5, end=0.8))
    for message in (Hello(protocol=1, client="t"), Submit(job=job, ref="r"),
                    Error(code=ErrorCode.INVALID_FIELD, message="m", field="job.width")):
        text = encode_message(message)
        assert json.loads(text)["type"] == message.type
        assert decode_message(text) == message


def test_message_types_are_unique_and_split_by_direction():
    names = [cls.type for cls in CLIENT_MESSAGES + SERVER_MESSAGES]
    assert len(names) == len(set(names))
    with pytest.raises(ProtocolError) as err:
        decode_message('{"type":"welcome","protocol":1}', CLIENT_MESSAGES)
    assert err.value.code == ErrorCode.UNKNOWN_TYPE


@pytest.mark.parametrize("text, code, field", [
    ("not json", ErrorCode.BAD_MESSAGE, None),
    ("[1,2]", ErrorCode.BAD_MESSAGE, None),
    ('{"no":"type"}', ErrorCode.BAD_MESSAGE, "type"),
    ('{"type":"bogus"}', ErrorCode.UNKNOWN_TYPE, "type"),
    ('{"type":"submit"}', ErrorCode.INVALID_FIELD, "job"),
    ('{"type":"submit","job":{"width":"64"}}', ErrorCode.INVALID_FIELD, "job.width"),
    ('{"type":"submit","job":{"width":true}}', ErrorCode.INVALID_FIELD, "job.width"),
    ('{"type":"submit","job":{"steps":0}}', ErrorCode.INVALID_FIELD, "job.steps"),
    ('{"type":"submit","job":{"guidance":51}}', ErrorCode.LIMIT_EXCEEDED, "job.guidance"),
    ('{"type":"submit","job":{"scheduler":"plms"}}', ErrorCode.INVALID_FIELD, "job.scheduler"),
    ('{"type":"submit","job":{"tiling":"diagonal"}}', ErrorCode.INVALID_FIELD, "job.tiling"),
    ('{"type":"submit","job":{"colour":"red"}}', ErrorCode.INVALID_FIELD, "job.colour"),
    ('{"type":"submit","job":{"depth":{"convention":"zbuffer"}}}', ErrorCode.INVALID_FIELD,
     "job.depth.convention"),
    ('{"type":"submit","job":{"seed":-1}}', ErrorCode.INVALID_FIELD, "job.seed"),
    ('{"type":"submit","job":{"prompt":"' + "x" * 4001 + '"}}', ErrorCode.LIMIT_EXCEEDED,
     "job.prompt"),
])
def test_bad_messages_name_the_problem(text, code, field):
    with pytest.raises(ProtocolError) as err:
        decode_message(text)
    assert err.value.code == code
    assert err.value.field == field
    assert err.value.message


def test_limit_messages_state_the_limit():
    with pytest.raises(ProtocolError) as err:
        decode_message('{"type":"submit","job":{"guidance":99}}')
    assert "at most 50" in err.value.message and "99" in err.value.message


def test_nan_is_refused():
    with pytest.raises(ProtocolError) as err:
        decode_message('{"type":"submit","job":{"strength":NaN}}')
    assert err.value.field == "job.strength"


def test_frame_round_trip_and_header_size():
    data = bytes(range(256)) * 3 * 4
    frame = ImageFrame(FrameKind.RESULT, PixelFormat.RGBA8, 2, 32, 24, new_id(), data)
    blob = encode_frame(frame)
    assert len(blob) == HEADER_SIZE + len(data) == 36 + len(data)
    assert blob[:4] == b"ATF1"
    assert decode_frame(blob) == frame


def test_float32_depth_is_little_endian():
    import struct

    payload = struct.pack("<4f", 1.0, 2.5, 1e10, 0.0)
    frame = ImageFrame(FrameKind.UPLOAD, PixelFormat.FLOAT32, 0, 2, 2, new_id(), payload)
    back = decode_frame(encode_frame(frame))
    assert struct.unpack("<4f", back.data) == (1.0, 2.5, 1e10, 0.0)


@pytest.mark.parametrize("mangle, needle", [
    (lambda b: b[:20], "shorter than"),
    (lambda b: b[:-1], "truncated"),
    (lambda b: b"XXXX" + b[4:], "magic"),
    (lambda b: b[:4] + bytes([9]) + b[5:], "frame kind"),
    (lambda b: b[:5] + bytes([77]) + b[6:], "pixel format"),
])
def test_malformed_frames_are_rejected(mangle, needle):
    frame = ImageFrame(FrameKind.UPLOAD, PixelFormat.GRAY8, 0, 4, 4, new_id(), bytes(16))
    with pytest.raises(ProtocolError) as err:
        decode_frame(mangle(encode_frame(frame)))
    assert err.value.code == ErrorCode.BAD_MESSAGE
    assert needle in err.value.message


def test_raw_payload_size_must_match_dimensions():
    with pytest.raises(ProtocolError) as err:
        ImageFrame(FrameKind.UPLOAD, PixelFormat.RGBA8, 0, 4, 4, new_id(), bytes(63))
    assert "needs 64 bytes" in err.value.message


def test_protocol_package_needs_only_the_standard_library():
    """Blender's and Krita's Pythons have no torch/numpy/PIL: importing must not pull them."""
    code = ("import sys, protocol, protocol.client, protocol.codec\n"
            "bad = {'torch', 'numpy', 'PIL', 'diffusers', 'backend'} & set(sys.modules)\n"
            "print(sorted(bad))\n")
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=repo)
    assert out.stdout.strip() == "[]"
