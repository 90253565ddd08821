"""End to end over a real websocket on loopback: daemon subprocess, tiny model, real client."""

from __future__ import annotations

import json
import random
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from protocol import (ErrorCode, FrameKind, ImageFrame, JobDone, PixelFormat, PreviewImage,
                      ProtocolError, encode_frame, encode_message, new_id)
from protocol.client import AtelierClient, ClientError, make_upload
from protocol.events import Connected, Disconnected
from protocol.messages import (Accepted, Cancelled, Error, GenerateRequest, Hello, Models,
                               ModelLoaded, Progress, Started, Status)

SMALL = dict(width=64, height=64, steps=3, prompt="a brick wall")


@pytest.fixture
def client(daemon):
    with AtelierClient(daemon.url, client_name="pytest") as c:
        c.wait_connected()
        yield c


def run(client: AtelierClient, **fields) -> JobDone:
    uploads = fields.pop("uploads", ())
    done = client.run_job(GenerateRequest(**{**SMALL, **fields}), uploads, timeout=120)
    assert isinstance(done, JobDone), done
    return done


def random_rgba(w: int, h: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.randrange(256) for _ in range(w * h * 4))


# ------------------------------------------------------------------ pipelines
def test_welcome_announces_model_device_and_limits(client):
    welcome = client.welcome
    assert welcome.model == "tiny" and welcome.device == "cpu"
    assert {"txt2img", "img2img", "inpaint", "t2i_adapter", "step_cache"} <= set(welcome.capabilities)
    assert welcome.limits.max_side >= 512


def test_txt2img_returns_image_and_exact_parameters(client):
    done = run(client, seed=42)
    [image] = done.images
    assert (image.width, image.height, image.format) == (64, 64, PixelFormat.RGBA8)
    assert len(image.data) == 64 * 64 * 4 and len(set(image.data)) > 10
    assert done.result.params.seed == 42 and done.result.images[0].seed == 42
    assert done.result.model == "tiny" and done.result.tiling == "none"


def test_same_seed_same_pixels_other_seed_other_pixels(client):
    a, b, c = run(client, seed=7), run(client, seed=7), run(client, seed=8)
    assert a.images[0].data == b.images[0].data
    assert a.images[0].data != c.images[0].data


def test_random_seed_is_reported_and_reproduces(client):
    first = run(client)
    seed = first.result.params.seed
    assert seed is not None
    assert run(client, seed=seed).images[0].data == first.images[0].data


def test_batch_image_i_equals_single_job_with_seed_plus_i(client):
    batch = run(client, seed=100, batch_size=2)
    assert [i.seed for i in batch.result.images] == [100, 101]
    single = run(client, seed=101)
    # Batched matmuls round differently from single ones on the CPU: equal to within 1-2 levels.
    diffs = [abs(a - b) for a, b in zip(batch.images[1].data, single.images[0].data)]
    assert max(diffs) <= 3 and sum(diffs) / len(diffs) < 0.1
    assert batch.images[0].data != batch.images[1].data


def test_img2img_follows_the_init_image(client):
    init = make_upload(PixelFormat.RGBA8, 64, 64, random_rgba(64, 64))
    low = run(client, kind="img2img", init_image=init.id, strength=0.3, seed=3, steps=10,
              uploads=[init])
    init2 = make_upload(PixelFormat.RGBA8, 64, 64, init.data)
    high = run(client, kind="img2img", init_image=init2.id, strength=1.0, seed=3, steps=10,
               uploads=[init2])
    diff = lambda d: sum(abs(x - y) for x, y in zip(d[::4], init.data[::4]))  # red channel
    assert diff(low.images[0].data) < diff(high.images[0].data)


def test_png_output_carries_parameters(client):
    import io

    from PIL import Image

    done = run(client, seed=9, output_format="png", cache_interval=2)
    assert done.images[0].format == PixelFormat.PNG
    with Image.open(io.BytesIO(done.images[0].data)) as im:
        assert im.size == (64, 64)
        assert "Seed: 9" in im.text["parameters"] and "Step cache: 2" in im.text["parameters"]
        assert json.loads(im.text["atelier"])["request"]["seed"] == 9


def test_inpaint_leaves_unmasked_pixels_byte_identical(client):
    w, h = 96, 64
    init = make_upload(PixelFormat.RGBA8, w, h, random_rgba(w, h, 1))
    mask_bytes = bytearray(w * h)
    for y in range(20, 40):
        for x in range(30, 60):
            mask_bytes[y * w + x] = 255
    mask = make_upload(PixelFormat.GRAY8, w, h, bytes(mask_bytes))
    done = run(client, kind="inpaint", init_image=init.id, mask=mask.id, strength=1.0, seed=5,
               width=w, height=h, uploads=[init, mask])
    out = done.images[0].data
    assert (done.images[0].width, done.images[0].height) == (w, h)
    changed_inside = 0
    for i in range(w * h):
        px, before = out[i * 4:i * 4 + 4], init.data[i * 4:i * 4 + 4]
        if mask_bytes[i] == 0:
            assert px == before, f"pixel {i % w},{i // w} outside the mask changed"
        elif px != before:
            changed_inside += 1
    assert changed_inside > 0.9 * 20 * 30


# ------------------------------------------------------------------ job control
def test_previews_arrive_at_the_asked_steps(client):
    previews = []
    client.run_job(GenerateRequest(**{**SMALL, "steps": 6}, preview_every=2), timeout=60,
                   on_event=lambda e: previews.append(e) if isinstance(e, PreviewImage) else None)
    assert [p.step for p in previews] == [2, 4]  # none at the last step: the result follows
    for p in previews:
        assert p.image.kind == FrameKind.PREVIEW and p.image.format == PixelFormat.RGBA8
        assert len(p.image.data) == p.image.width * p.image.height * 4


def test_cancel_stops_a_running_job_within_a_step_and_the_daemon_serves_on(client):
    ref = client.submit(GenerateRequest(**{**SMALL, "steps": 60}))
    accepted = client.wait_for(lambda e: isinstance(e, Accepted) and e.ref == ref, 30)
    client.wait_for(lambda e: isinstance(e, Progress) and e.job_id == accepted.job_id, 60)
    client.cancel(accepted.job_id)
    after_cancel: list[Progress] = []
    end = client.wait_for(lambda e: isinstance(e, (Cancelled, JobDone)), 60,
                          on_other=lambda e: after_cancel.append(e)
                          if isinstance(e, Progress) else None)
    assert isinstance(end, Cancelled) and end.job_id == accepted.job_id
    assert len(after_cancel) <= 2, "the job ran on after cancel"
    assert run(client, seed=1).images


def test_cancel_removes_a_queued_job(client):
    refs = [client.submit(GenerateRequest(**{**SMALL, "steps": 20})) for _ in range(2)]
    ids = {}
    while len(ids) < 2:
        e = client.next_event(30)
        if isinstance(e, Accepted):
            ids[e.ref] = e.job_id
    queued = ids[refs[1]]
    client.cancel(queued)
    seen = []
    client.wait_for(lambda e: isinstance(e, Cancelled) and e.job_id == queued, 30,
                    on_other=seen.append)
    assert not any(isinstance(e, Started) and e.job_id == queued for e in seen)
    client.wait_for(lambda e: isinstance(e, JobDone) and e.job_id == ids[refs[0]], 60)


def test_queue_runs_jobs_in_order(fresh_daemon):
    with AtelierClient(fresh_daemon.url) as c:
        c.wait_connected()
        refs = [c.submit(GenerateRequest(**SMALL, seed=i)) for i in range(3)]
        accepted, started, done = {}, [], []
        while len(done) < 3:
            e = c.next_event(60)
            if isinstance(e, Accepted):
                accepted[e.ref] = e
            elif isinstance(e, Started):
                started.append(e.job_id)
            elif isinstance(e, JobDone):
                done.append(e.job_id)
        order = [accepted[r].job_id for r in refs]
        assert [accepted[r].position for r in refs] == [0, 1, 2]
        assert started == order and done == order


def test_two_clients_each_get_only_their_own_events(daemon):
    with AtelierClient(daemon.url) as a, AtelierClient(daemon.url) as b:
        a.wait_connected()
        b.wait_connected()
        ref_a = a.submit(GenerateRequest(**SMALL, seed=1))
        ref_b = b.submit(GenerateRequest(**SMALL, seed=2))
        seen_a, seen_b = [], []
        done_a = a.wait_for(lambda e: isinstance(e, JobDone), 60, seen_a.append)
        done_b = b.wait_for(lambda e: isinstance(e, JobDone), 60, seen_b.append)
        ids_a = {getattr(e, "job_id", None) for e in seen_a} - {None}
        ids_b = {getattr(e, "job_id", None) for e in seen_b} - {None}
        assert ids_a == {done_a.job_id} and ids_b == {done_b.job_id}
        assert done_a.job_id != done_b.job_id
        assert [e.ref for e in seen_a if isinstance(e, Accepted)] == [ref_a]
        assert [e.ref for e in seen_b if isinstance(e, Accepted)] == [ref_b]


def test_result_of_a_disconnected_client_can_be_fetched_by_id(daemon, client):
    expected = run(client, seed=77, steps=6)
    with AtelierClient(daemon.url) as gone:
        gone.wait_connected()
        ref = gone.submit(GenerateRequest(**{**SMALL, "steps": 6}, seed=77))
        job_id = gone.wait_for(lambda e: isinstance(e, Accepted) and e.ref == ref, 30).job_id
    # the submitting client is gone before the job finished; a new connection with the
    # same client key fetches it
    with AtelierClient(daemon.url, client_key=gone.client_key) as back:
        back.wait_connected()
        time.sleep(0.1)
        back.fetch(job_id)
        done = back.wait_for(lambda e: isinstance(e, JobDone), 60)
        assert done.job_id == job_id
        assert done.images[0].data == expected.images[0].data
        # and again: results stay retrievable
        back.fetch(job_id)
        again = back.wait_for(lambda e: isinstance(e, JobDone), 60)
        assert again.images[0].data == expected.images[0].data


def test_fetch_of_unknown_job_is_an_error(client):
    client.fetch(new_id())
    err = client.wait_for(lambda e: isinstance(e, Error), 10)
    assert err.code == ErrorCode.UNKNOWN_JOB and err.field == "job_id"


def test_models_status_and_load(client):
    models = client.call(Models, client.list_models)
    assert "tiny" in [m.name for m in models.models] and models.current == "tiny"
    status = client.call(Status, client.get_status)
    assert status.device == "cpu" and status.model == "tiny" and status.queue_length == 0
    loaded = client.call(ModelLoaded, lambda: client.load_model("tiny"))
    assert loaded.model == "tiny" and loaded.family == "sd15"
    with pytest.raises(ProtocolError) as err:
        client.call(ModelLoaded, lambda: client.load_model("/no/such/model.safetensors"))
    assert err.value.code == ErrorCode.MODEL_NOT_FOUND
    assert run(client, seed=1).images  # still serving


def test_a_failing_job_fails_alone(client):
    with pytest.raises(ProtocolError) as err:
        client.run_job(GenerateRequest(**SMALL, model="no-such-org/no-such-model"), timeout=60)
    assert err.value.code == ErrorCode.MODEL_NOT_FOUND
    assert "atelier models pull" in err.value.message
    assert run(client, seed=2).images


# ------------------------------------------------------------------ limits and bad input
@pytest.mark.parametrize("fields, code, field", [
    ({"width": 63}, ErrorCode.INVALID_FIELD, "job.width"),
    ({"height": 4096}, ErrorCode.LIMIT_EXCEEDED, "job.height"),
    ({"steps": 151}, ErrorCode.LIMIT_EXCEEDED, "job.steps"),
    ({"batch_size": 9}, ErrorCode.LIMIT_EXCEEDED, "job.batch_size"),
    ({"kind": "img2img"}, ErrorCode.INVALID_FIELD, "job.init_image"),
    ({"kind": "img2img", "init_image": "0" * 32}, ErrorCode.UNKNOWN_UPLOAD, "job.init_image"),
])
def test_limits_get_clear_errors_and_the_daemon_serves_on(client, fields, code, field):
    with pytest.raises(ProtocolError) as err:
        client.run_job(GenerateRequest(**{**SMALL, **fields}), timeout=60)
    assert (err.value.code, err.value.field) == (code, field)
    assert err.value.message
    assert run(client, seed=3).images


def raw_connection(url: str, **kw):
    conn = connect(url, proxy=None, **kw)
    conn.send(encode_message(Hello(protocol=1, client="raw")))
    assert json.loads(conn.recv(timeout=10))["type"] == "welcome"
    return conn


def recv_error(conn) -> dict:
    message = json.loads(conn.recv(timeout=10))
    assert message["type"] == "error", message
    return message


def test_malformed_input_gets_errors_on_a_connection_that_keeps_working(daemon):
    conn = connect(daemon.url, proxy=None)
    conn.send('{"type":"get_status"}')
    assert recv_error(conn)["code"] == "not_ready"
    conn.send(encode_message(Hello(protocol=1, client="raw")))
    assert json.loads(conn.recv(timeout=10))["type"] == "welcome"
    cases = [
        ("{not json", "bad_message", None),
        ("[1]", "bad_message", None),
        ('{"type":"launch_rockets"}', "unknown_type", "type"),
        ('{"type":"submit","job":{"steps":"many"}}', "invalid_field", "job.steps"),
        ('{"type":"cancel"}', "invalid_field", "job_id"),
        ('{"type":"cancel","job_id":"nope"}', "unknown_job", "job_id"),
    ]
    for text, code, field in cases:
        conn.send(text)
        err = recv_error(conn)
        assert (err["code"], err.get("field")) == (code, field), text
    upload = ImageFrame(FrameKind.UPLOAD, PixelFormat.RGBA8, 0, 8, 8, new_id(), bytes(256))
    conn.send(encode_frame(upload)[:-10])  # truncated
    assert "truncated" in recv_error(conn)["message"]
    conn.send(b"\x00\x01")
    assert recv_error(conn)["code"] == "bad_message"
    wrong_kind = ImageFrame(FrameKind.RESULT, PixelFormat.RGBA8, 0, 8, 8, new_id(), bytes(256))
    conn.send(encode_frame(wrong_kind))
    assert recv_error(conn)["field"] == "frame.kind"
    conn.send(json.dumps({"type": "get_status"}))
    assert json.loads(conn.recv(timeout=10))["type"] == "status"
    conn.close()


def test_wrong_protocol_version_is_refused_clearly(daemon):
    conn = connect(daemon.url, proxy=None)
    conn.send(encode_message(Hello(protocol=99, client="future")))
    err = recv_error(conn)
    assert err["code"] == "unsupported_version" and "1" in err["message"]
    conn.close()


def test_upload_limits(daemon):
    conn = raw_connection(daemon.url)
    huge = ImageFrame(FrameKind.UPLOAD, PixelFormat.GRAY8, 0, 9000, 1, new_id(), bytes(9000))
    conn.send(encode_frame(huge))
    err = recv_error(conn)
    assert err["code"] == "limit_exceeded" and "9000" in err["message"]
    conn.close()


def test_queue_length_limit(start_daemon):
    proc = start_daemon("--max-queue", "1")
    with AtelierClient(proc.url) as c:
        c.wait_connected()
        c.submit(GenerateRequest(**{**SMALL, "steps": 40}))
        first = c.wait_for(lambda e: isinstance(e, Started), 30).job_id
        c.submit(GenerateRequest(**SMALL))
        c.wait_for(lambda e: isinstance(e, Accepted), 30)
        ref = c.submit(GenerateRequest(**SMALL))
        err = c.wait_for(lambda e: isinstance(e, Error) and e.ref == ref, 30)
        assert err.code == ErrorCode.QUEUE_FULL and "limit is 1" in err.message
        c.cancel(first)


def test_oversized_message_closes_with_1009_and_the_daemon_serves_on(start_daemon):
    proc = start_daemon("--max-message-mb", "1")
    conn = raw_connection(proc.url)
    conn.send(json.dumps({"type": "submit", "job": {"prompt": "x" * (2 * 2 ** 20)}}))
    with pytest.raises(ConnectionClosed) as closed:
        conn.recv(timeout=10)
    assert closed.value.rcvd.code == 1009
    with AtelierClient(proc.url) as c:
        c.wait_connected()
        assert run(c, seed=4).images


# ------------------------------------------------------------------ security
def test_browser_origins_are_refused(daemon):
    with pytest.raises(InvalidStatus) as err:
        connect(daemon.url, proxy=None, origin="http://evil.example")
    assert err.value.response.status_code == 403


def handshake_status(port: int, host_header: str) -> int:
    """Send a websocket upgrade by hand (the client library always writes its own Host)."""
    import base64
    import os
    import socket

    request = (f"GET / HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.encode())
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    return int(status_line.split()[1])


def test_dns_rebinding_host_is_refused(daemon):
    assert handshake_status(daemon.port, "evil.example:80") == 403
    assert handshake_status(daemon.port, f"localhost:{daemon.port}") == 101


def test_token_is_required_when_configured(start_daemon):
    proc = start_daemon("--token", "s3cret")
    for token, status in ((None, 401), ("wrong", 403)):
        c = AtelierClient(proc.url, token=token, reconnect=False).start()
        with pytest.raises(ClientError) as err:
            c.wait_connected(timeout=10)
        assert "token" in str(err.value)
        c.close()
        with pytest.raises(InvalidStatus) as raw:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            connect(proc.url, proxy=None, additional_headers=headers)
        assert raw.value.response.status_code == status
    with AtelierClient(proc.url, token="s3cret") as c:
        c.wait_connected()
        assert run(c, seed=5).images


def test_non_loopback_bind_generates_and_requires_a_token(start_daemon):
    proc = start_daemon("--host", "0.0.0.0")
    log = "".join(proc.log)
    assert "needs a token" in log
    token = log.split("generated one for this run:")[1].split()[0]
    url = f"ws://127.0.0.1:{proc.port}/"
    with pytest.raises(InvalidStatus) as err:
        connect(url, proxy=None)
    assert err.value.response.status_code == 401
    with AtelierClient(url, token=token) as c:
        c.wait_connected()
        assert c.welcome.model == "tiny"


def test_client_reports_a_daemon_that_is_not_running():
    c = AtelierClient("ws://127.0.0.1:9/", reconnect=False, connect_timeout=2).start()
    with pytest.raises(ClientError) as err:
        c.wait_connected(timeout=10)
    assert "atelier serve" in str(err.value)
    event = c.next_event(5)
    assert isinstance(event, Disconnected) and not event.will_retry
    c.close()


def test_client_reconnects_when_the_daemon_comes_back(start_daemon):
    first = start_daemon()
    port = first.port
    client = AtelierClient(first.url, reconnect=True).start()
    try:
        client.wait_connected()
        assert isinstance(client.next_event(5), Connected)
        first.stop()
        gone = client.wait_for(lambda e: isinstance(e, Disconnected), 30)
        assert gone.will_retry
        with pytest.raises(ClientError):
            client.submit(GenerateRequest(**SMALL))
        start_daemon("--port", str(port))
        client.wait_for(lambda e: isinstance(e, Connected), 60)
        assert run(client, seed=6).images
    finally:
        client.close()
