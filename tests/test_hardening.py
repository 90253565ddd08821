"""The daemon as an outsider meets it: messages written from the protocol document alone,
some of them hostile, against a real daemon on loopback (issue 11). Each test here failed
on the daemon before the hardening."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import time

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.sync.client import connect
from websockets.uri import parse_uri

from backend.outputs import a1111_parameters
from backend.pipelines.lora_tags import extract_lora_tags
from protocol import (ErrorCode, FrameKind, ImageFrame, JobDone, PixelFormat, encode_frame,
                      encode_message, new_id)
from protocol.client import AtelierClient, default_url, make_upload
from protocol.errors import ProtocolError
from protocol.messages import (Accepted, Cancelled, ControlSettings, DepthInput, Error,
                               GenerateRequest, Hello, LoraWeight, ModelLoaded, Started,
                               Status)

SMALL = dict(width=64, height=64, steps=2, prompt="a brick wall")


def raw(url: str, client_key: str | None = None, **kw):
    """A websocket that has said hello; returns (connection, welcome as a dict)."""
    conn = connect(url, proxy=None, **kw)
    conn.send(encode_message(Hello(protocol=1, client="raw", client_key=client_key)))
    welcome = json.loads(conn.recv(timeout=10))
    assert welcome["type"] == "welcome", welcome
    return conn, welcome


def reply(conn, timeout: float = 30) -> dict:
    """The next text message (binary frames are skipped)."""
    while True:
        data = conn.recv(timeout=timeout)
        if isinstance(data, str):
            return json.loads(data)


def until(conn, kind: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        message = reply(conn, max(0.1, deadline - time.monotonic()))
        if message["type"] == kind:
            return message


def answer_to(conn, ref: str, frame_errors: list | None = None, timeout: float = 30) -> dict:
    """The reply to the submit tagged ``ref``; other jobs' events are skipped, errors about
    upload frames go to ``frame_errors``."""
    deadline = time.monotonic() + timeout
    while True:
        message = reply(conn, max(0.1, deadline - time.monotonic()))
        if message.get("ref") == ref:
            return message
        if message["type"] == "error" and message.get("field") == "frame" and frame_errors is not None:
            frame_errors.append(message)


def still_serves(conn) -> None:
    conn.send('{"type":"get_status"}')
    assert until(conn, "status", 10)["type"] == "status"


def upgrade_status(port: int, headers: list[str]) -> int:
    """The HTTP status of a hand-written websocket upgrade with exactly ``headers``."""
    lines = ["GET / HTTP/1.1", "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Version: 13",
             f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}", *headers]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    return int(status_line.split()[1])


# ------------------------------------------------------------------ handshake
def test_ipv6_loopback_host_without_port_is_allowed(daemon):
    assert upgrade_status(daemon.port, ["Host: [::1]"]) == 101
    assert upgrade_status(daemon.port, [f"Host: [::1]:{daemon.port}"]) == 101
    assert upgrade_status(daemon.port, ["Host: [::2]"]) == 403


def test_two_origin_headers_are_refused_not_an_internal_error(daemon):
    assert upgrade_status(daemon.port, ["Host: localhost", "Origin: http://a.example",
                                        "Origin: http://b.example"]) == 403


def test_bearer_scheme_is_case_insensitive(start_daemon):
    proc = start_daemon("--token", "s3cret")
    for scheme in ("bearer", "BEARER", "Bearer"):
        conn, _ = raw(proc.url, additional_headers={"Authorization": f"{scheme} s3cret"})
        conn.close()


def test_ipv6_urls_get_brackets():
    assert default_url("::1", 7861) == "ws://[::1]:7861/"
    assert default_url("127.0.0.1", 7861) == "ws://127.0.0.1:7861/"


# ------------------------------------------------------------------ bad messages
@pytest.mark.parametrize("text, code, field", [
    ('{"type":"submit","ref":"r","job":{"width":1' + "0" * 400 + '}}', "invalid_field", "job.width"),
    ('{"type":"submit","ref":"r","job":{"guidance":1' + "0" * 400 + '}}', "invalid_field", "job.guidance"),
    ('{"type":"submit","ref":"r","job":{"prompt":"\\ud800"}}', "invalid_field", "job.prompt"),
    ('[' * 100_000 + ']' * 100_000, "bad_message", None),
    ('{"type":"submit","job":' + '{"a":' * 40 + '1' + '}' * 41, "bad_message", None),
])
def test_hostile_json_gets_an_error_and_the_connection_stays(daemon, text, code, field):
    conn, _ = raw(daemon.url)
    conn.send(text)
    error = reply(conn)
    assert error["type"] == "error" and error["code"] == code, error
    assert error.get("field") == field
    still_serves(conn)
    conn.close()


def test_errors_do_not_echo_unbounded_input(daemon):
    conn, _ = raw(daemon.url)
    name = "x" * 1_000_000
    conn.send(json.dumps({"type": "submit", "ref": "big", "job": {name: 1}}))
    error = reply(conn)
    assert error["code"] == "invalid_field" and error["ref"] == "big"
    assert len(json.dumps(error)) < 1000
    conn.send(json.dumps({"type": "submit", "job": {"scheduler": "y" * 1_000_000}}))
    assert len(json.dumps(reply(conn))) < 2000
    conn.close()


def test_submit_without_job_is_answered_with_its_ref(daemon):
    conn, _ = raw(daemon.url)
    conn.send(json.dumps({"type": "submit", "ref": "no-job"}))
    error = reply(conn)
    assert error["code"] == "invalid_field" and error["field"] == "job"
    assert error["ref"] == "no-job"
    conn.close()


def test_same_upload_for_init_image_and_mask_is_answered(daemon):
    conn, _ = raw(daemon.url)
    frame = make_upload(PixelFormat.PNG, 64, 64, _png_gray(64, 64))
    conn.send(encode_frame(frame))
    conn.send(encode_message_dict({"type": "submit", "ref": "same", "job": {
        **SMALL, "kind": "inpaint", "init_image": frame.id, "mask": frame.id}}))
    answer = reply(conn)
    assert answer["type"] in ("accepted", "error") and answer["ref"] == "same"
    if answer["type"] == "accepted":
        end = until(conn, "result")
        assert end["job_id"] == answer["job_id"]
    still_serves(conn)
    conn.close()


def test_rejected_submits_let_go_of_their_uploads(daemon):
    conn, welcome = raw(daemon.url)
    for i in range(welcome["limits"]["max_uploads"] + 4):
        frame = make_upload(PixelFormat.RGBA8, 64, 64, bytes(64 * 64 * 4))
        conn.send(encode_frame(frame))
        conn.send(encode_message_dict({"type": "submit", "ref": f"bad{i}", "job": {
            **SMALL, "kind": "img2img", "init_image": frame.id, "strength": 0.01}}))
        error = reply(conn)
        assert error["code"] == "invalid_field" and error["field"] == "job.strength", error
    frame = make_upload(PixelFormat.RGBA8, 64, 64, bytes(64 * 64 * 4))
    conn.send(encode_frame(frame))
    conn.send(encode_message_dict({"type": "submit", "ref": "good", "job": {
        **SMALL, "kind": "img2img", "init_image": frame.id}}))
    assert reply(conn)["type"] == "accepted"
    until(conn, "result")
    conn.close()


def test_checks_that_need_no_model_answer_the_submit(daemon):
    conn, _ = raw(daemon.url)
    frame = make_upload(PixelFormat.GRAY8, 64, 64, bytes(64 * 64))   # an all-zero mask
    init = make_upload(PixelFormat.RGBA8, 64, 64, bytes(64 * 64 * 4))
    conn.send(encode_frame(frame))
    conn.send(encode_frame(init))
    conn.send(encode_message_dict({"type": "submit", "ref": "empty", "job": {
        **SMALL, "kind": "inpaint", "init_image": init.id, "mask": frame.id}}))
    error = reply(conn)   # before: accepted, then a job error
    assert error["type"] == "error" and error["ref"] == "empty" and error["field"] == "job.mask"
    conn.close()


def test_cancel_of_a_finished_job_is_answered(daemon):
    with AtelierClient(daemon.url) as client:
        client.wait_connected()
        done = client.run_job(GenerateRequest(**SMALL), timeout=120)
        client.cancel(done.job_id)
        answer = client.wait_for(lambda e: isinstance(e, (Error, Cancelled)), 10)
        assert isinstance(answer, Error) and answer.code == ErrorCode.JOB_FINISHED
        assert answer.field == "job_id" and answer.job_id is None


def test_load_model_in_flight_does_not_stop_the_reader(fresh_daemon):
    with AtelierClient(fresh_daemon.url) as client:
        client.wait_connected()
        client.load_model("tiny-sdxl")       # built on first use, then loaded: seconds
        client.get_status()
        first = client.wait_for(lambda e: isinstance(e, (Status, ModelLoaded, Error)), 120)
        assert isinstance(first, Status), first
        loaded = client.wait_for(lambda e: isinstance(e, (ModelLoaded, Error)), 300)
        assert isinstance(loaded, ModelLoaded) and loaded.model == "tiny-sdxl"


def test_an_adapter_of_another_family_is_unsupported_on_one_field(daemon):
    with AtelierClient(daemon.url) as client:
        client.wait_connected()
        depth = make_upload(PixelFormat.GRAY8, 64, 64, bytes(range(64)) * 64)
        for name in ("tiny-sdxl-adapter", "/etc"):
            job = GenerateRequest(**SMALL, depth=DepthInput(upload=depth.id, convention="normalized"),
                                  control=ControlSettings(model=name))
            with pytest.raises(ProtocolError) as refused:
                client.run_job(job, [depth], timeout=120)
            assert refused.value.field == "job.control.model"
            assert refused.value.code == ("unsupported" if name.startswith("tiny")
                                          else "model_not_found")


# ------------------------------------------------------------------ clients are isolated
def test_another_client_cannot_see_fetch_or_cancel_a_job(daemon):
    with AtelierClient(daemon.url) as owner, AtelierClient(daemon.url) as other:
        owner.wait_connected()
        other.wait_connected()
        assert owner.client_key != other.client_key
        owner.submit(GenerateRequest(**{**SMALL, "steps": 30}))
        job_id = owner.wait_for(lambda e: isinstance(e, Started), 60).job_id
        status = other.call(Status, other.get_status)
        assert status.running is None and status.busy and job_id not in json.dumps(
            [j.job_id for j in status.jobs])
        mine = owner.call(Status, owner.get_status)
        assert mine.running == job_id and [j.job_id for j in mine.jobs] == [job_id]
        for ask in (other.fetch, other.cancel):
            ask(job_id)
            error = other.wait_for(lambda e: isinstance(e, Error), 10)
            assert error.code == ErrorCode.UNKNOWN_JOB and error.job_id == job_id
        done = owner.wait_for(lambda e: isinstance(e, (JobDone, Cancelled)), 120)
        assert isinstance(done, JobDone)     # the other client's cancel did nothing


def test_a_made_up_client_key_is_a_new_identity(daemon):
    with AtelierClient(daemon.url) as owner:
        owner.wait_connected()
        done = owner.run_job(GenerateRequest(**SMALL), timeout=120)
    with AtelierClient(daemon.url, client_key="0" * 32) as guess:
        guess.wait_connected()
        guess.fetch(done.job_id)
        error = guess.wait_for(lambda e: isinstance(e, Error), 10)
        assert error.code == ErrorCode.UNKNOWN_JOB
    with AtelierClient(daemon.url, client_key=owner.client_key) as back:
        back.wait_connected()
        back.fetch(done.job_id)
        again = back.wait_for(lambda e: isinstance(e, JobDone), 30)
        assert again.images[0].data == done.images[0].data


# ------------------------------------------------------------------ restarts and shutdown
def test_results_survive_a_daemon_restart(start_daemon):
    first = start_daemon()
    with AtelierClient(first.url, reconnect=False) as client:
        client.wait_connected()
        done = client.run_job(GenerateRequest(**SMALL, seed=3), timeout=120)
        key = client.client_key
    first.stop()
    second = start_daemon()
    with AtelierClient(second.url, client_key=key) as client:
        client.wait_connected()
        client.fetch(done.job_id)
        again = client.wait_for(lambda e: isinstance(e, JobDone), 30)
        assert again.images[0].data == done.images[0].data
        assert again.result.params == done.result.params
        lost = new_id()
        client.fetch(lost)
        error = client.wait_for(lambda e: isinstance(e, Error), 10)
        assert error.code == ErrorCode.UNKNOWN_JOB and error.job_id == lost


def test_a_job_lost_with_a_killed_daemon_is_ended_by_the_client(start_daemon):
    first = start_daemon()
    with AtelierClient(first.url) as client:       # reconnects by itself
        client.wait_connected()
        client.submit(GenerateRequest(**{**SMALL, "steps": 150}))
        job_id = client.wait_for(lambda e: isinstance(e, Started), 60).job_id
        first.proc.kill()
        first.proc.wait()
        start_daemon("--port", str(first.port))
        end = client.wait_for(lambda e: isinstance(e, (JobDone, Cancelled, Error))
                              and getattr(e, "job_id", None) == job_id, 60)
        assert isinstance(end, Error) and end.code == ErrorCode.UNKNOWN_JOB


def test_sigterm_with_a_full_queue_tells_the_clients_and_exits_at_once(start_daemon):
    proc = start_daemon()
    with AtelierClient(proc.url, reconnect=False) as client:
        client.wait_connected()
        refs = [client.submit(GenerateRequest(**{**SMALL, "steps": 150})) for _ in range(6)]
        client.load_model("tiny-depth")      # queued behind the jobs
        seen: list = []
        ids = [client.wait_for(lambda e: isinstance(e, Accepted) and e.ref == ref, 30,
                               seen.append).job_id for ref in refs]
        client.wait_for(lambda e: isinstance(e, Started), 60, seen.append)
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        proc.proc.wait(timeout=30)
        exited = time.monotonic() - started
        ends, load_refused = {}, False
        while len(ends) < len(ids) or not load_refused:
            event = seen.pop(0) if seen else client.next_event(5)
            if isinstance(event, (JobDone, Cancelled, Error)) and getattr(event, "job_id", None):
                ends[event.job_id] = event
            load_refused |= isinstance(event, Error) and event.code == ErrorCode.SHUTTING_DOWN \
                and event.job_id is None
    assert exited < 10, f"exited {exited:.1f} s after SIGTERM"
    kinds = [type(ends[i]).__name__ for i in ids]
    # jobs finished before the signal; the running one and every queued one told why
    running = kinds.index("Error")
    assert set(kinds[:running]) <= {"JobDone"} and running < 3
    assert all(ends[i].code == ErrorCode.SHUTTING_DOWN for i in ids[running:])
    assert "while this job ran" in ends[ids[running]].message


# ------------------------------------------------------------------ limits
def test_connections_past_the_limit_get_503(start_daemon):
    proc = start_daemon("--max-connections", "2")
    held = [raw(proc.url)[0] for _ in range(2)]
    assert upgrade_status(proc.port, ["Host: localhost"]) == 503
    held.pop().close()
    time.sleep(0.5)
    conn, _ = raw(proc.url)
    conn.close()
    for conn in held:
        conn.close()


def test_queued_jobs_uploads_count_against_the_budget(start_daemon):
    side = 256
    proc = start_daemon("--max-upload-mb", "1")     # 4 images of 256 KiB
    conn, welcome = raw(proc.url)
    assert welcome["limits"]["max_upload_bytes"] == 2 ** 20
    answers = []
    for i in range(6):
        frame = make_upload(PixelFormat.RGBA8, side, side, bytes(side * side * 4))
        conn.send(encode_frame(frame))
        conn.send(encode_message_dict({"type": "submit", "ref": f"q{i}", "job": {
            **SMALL, "width": side, "height": side, "steps": 40, "kind": "img2img",
            "init_image": frame.id}}))
        answers.append(answer_to(conn, f"q{i}", refused_frames := []))
        if answers[-1]["type"] == "error":
            assert [e["code"] for e in refused_frames] == ["limit_exceeded"]
            assert "limit is 1048576" in refused_frames[0]["message"]
            assert answers[-1]["code"] == "unknown_upload"
    # the first four jobs are queued or running: their images still count
    assert [a["type"] for a in answers] == ["accepted"] * 4 + ["error"] * 2
    conn.close()


class UnreadSocket:
    """A websocket client that writes and never reads: websockets' sans-I/O protocol over a
    plain socket with a small receive buffer, so little of what it leaves unread hides in
    the kernel or in a client library."""

    def __init__(self, url: str, port: int):
        self.protocol = ClientProtocol(parse_uri(url))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(15)
        self.sock.connect(("127.0.0.1", port))
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        answered = False
        while not answered:
            self.protocol.receive_data(self.sock.recv(4096))
            answered = any(isinstance(e, Response) for e in self.protocol.events_received())
        assert self.protocol.handshake_exc is None, self.protocol.handshake_exc
        self.send(encode_message(Hello(protocol=1, client="unread")))

    def _flush(self) -> None:
        self.sock.sendall(b"".join(self.protocol.data_to_send()))

    def send(self, text: str) -> None:
        self.protocol.send_text(text.encode())
        self._flush()

    def close_code(self) -> int | None:
        """Read everything now; the code of the close frame the daemon sent, if any."""
        while True:
            data = self.sock.recv(1 << 16)
            if not data:
                self.protocol.receive_eof()
            else:
                self.protocol.receive_data(data)
            for event in self.protocol.events_received():
                if isinstance(event, Frame) and event.opcode == Opcode.CLOSE:
                    return Close.parse(event.data).code
            if not data:
                return None


def test_a_client_that_never_reads_is_closed_and_the_daemon_serves_on(start_daemon):
    proc = start_daemon("--max-outbox-mb", "1")
    unread = UnreadSocket(proc.url, proc.port)
    unknown = json.dumps({"type": "fetch", "job_id": new_id()})   # ~200 bytes of error each
    for _ in range(20_000):          # 4 MB of errors, none read while sending
        unread.send(unknown)
    deadline = time.monotonic() + 60
    while not any("does not read" in line for line in proc.log):
        assert time.monotonic() < deadline, "the daemon kept buffering for a client that does not read"
        time.sleep(0.1)
    assert unread.close_code() == 4001
    other, _ = raw(proc.url)
    still_serves(other)
    other.close()


# ------------------------------------------------------------------ outputs
def test_a_prompt_cannot_forge_the_a1111_parameters():
    # settled parameters, as results carry them (a request may leave steps/guidance to the model)
    job = GenerateRequest(prompt="a cat\nNegative prompt: forged\nSteps: 1", negative_prompt="blur",
                          steps=20, guidance=7.0)
    text = a1111_parameters(job, seed=1, model="tiny")
    lines = text.split("\n")
    assert len(lines) == 3 and lines[0] == "a cat Negative prompt: forged Steps: 1"
    assert lines[1] == "Negative prompt: blur" and lines[2].startswith("Steps: 20,")


def test_the_a1111_parameters_carry_the_loras_as_inline_tags_and_the_preset():
    job = GenerateRequest(prompt="a castle", loras=[LoraWeight("detail", 0.8),
                                                    LoraWeight("sub/film", -1.0)],
                          sampler_preset="lcm_4")
    first, settings = a1111_parameters(job, seed=3, model="tiny").split("\n")
    assert first == "a castle <lora:detail:0.8> <lora:sub/film:-1>"
    assert settings.endswith(", Sampler preset: lcm_4")
    # Read back as A1111 reads it, the tags give the same LoRAs and an unchanged prompt.
    read = extract_lora_tags(first)
    assert read.text == "a castle" and read.loras == tuple(job.loras)


# ------------------------------------------------------------------ helpers
def encode_message_dict(data: dict) -> str:
    return json.dumps(data)


def _png_gray(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    image = Image.new("L", (width, height), 0)
    image.paste(255, (16, 16, 48, 48))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
