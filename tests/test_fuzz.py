"""The daemon's hardening stays fixed (issue 11): no client can freeze it, read others' work
or blow its memory.

A bounded, seeded fuzz run against a real daemon (the generators and reply checks live in
``benchmarks/fuzz_messages.py``, shared with ``benchmarks/soak.py``), then targeted checks:
a client that never reads, PNG uploads that inflate, job ownership by client key, the
connection limit. Each test starts its own daemon where it measures its memory.
"""

from __future__ import annotations

import json
import random
import re
import socket
import time
from typing import Any, Optional

import pytest
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response
from websockets.sync.client import connect
from websockets.uri import parse_uri

from benchmarks.fuzz_messages import (SMALL_JOB, Case, FuzzConnection, Hang, RssSampler,
                                      error_problem, every_wrong_type, fuzz_cases, random_id,
                                      rss_bytes, summarize, text, upload)
from protocol.errors import CloseCode, ErrorCode
from protocol.frames import PixelFormat

MiB = 1024 * 1024
SEED = 20261101
BEFORE_HELLO_CASES = 200
CASES = 2800
RECONNECT_EVERY = 200        # a fresh connection now and then: pending uploads start over
FUZZ_RSS_BOUND = 300 * MiB
FUZZ_SECONDS = 40.0          # the fuzz run takes a few seconds; far past that it stops
MAX_HANGS = 3
FLOOD_RSS_BOUND = 128 * MiB
FLOOD_SECONDS = 20.0
FLOOD_FETCHES = 190          # a batch of the flood: fetches of a finished job's result ...
FLOOD_BAIT = 10              # ... and bad messages of BAIT_BYTES each
BAIT_BYTES = 256 * 1024
PROBE_LATENCY_S = 5.0        # another client's get_status while one floods
INFLATERS = 3
INFLATE_RSS_BOUND = 1024 * MiB


def alive(daemon) -> bool:
    return daemon.proc is not None and daemon.proc.poll() is None


# ------------------------------------------------------------------ the fuzz run
class FuzzRun:
    """Sends cases to one daemon, reconnecting after a closed or hung connection; keeps the
    problems seen and the daemon's peak RSS. Stops early when the daemon dies, after
    MAX_HANGS hangs, or past FUZZ_SECONDS: a broken daemon must not hold the suite."""

    def __init__(self, daemon):
        self.daemon = daemon
        self.problems: list[tuple[Case, str]] = []
        self.hangs = 0
        self.peak_rss = rss_bytes(daemon.proc.pid)
        self.deadline = time.monotonic() + FUZZ_SECONDS

    def run(self, cases: list[Case], *, before_hello: bool) -> None:
        conn: Optional[FuzzConnection] = None
        for number, case in enumerate(cases):
            if conn is None or (not before_hello and number % RECONNECT_EVERY == 0):
                if conn is not None:
                    conn.close()
                conn = self._connect(case, hello=not before_hello)
                if conn is None:
                    return
            outcome = conn.run_case(case, sentinel=not before_hello)
            self.problems.extend((case, problem) for problem in outcome.problems)
            if number % 100 == 0:
                self.peak_rss = max(self.peak_rss, rss_bytes(self.daemon.proc.pid))
            if outcome.closed or outcome.hung:
                conn.close()
                conn = None
                self.hangs += outcome.hung
            if self._stop(case, number, len(cases)):
                break
        if conn is not None:
            conn.close()

    def _connect(self, case: Case, hello: bool) -> Optional[FuzzConnection]:
        try:
            return FuzzConnection(self.daemon.url, hello=hello)
        except Exception as exc:      # what went wrong is the finding: keep it and stop
            self.problems.append((case, f"connect failed: {type(exc).__name__}: {exc}"))
            return None

    def _stop(self, case: Case, number: int, count: int) -> bool:
        why = ("the daemon died" if not alive(self.daemon) else
               f"{self.hangs} hangs" if self.hangs >= MAX_HANGS else
               f"over {FUZZ_SECONDS:g} s" if time.monotonic() > self.deadline else None)
        if why:
            self.problems.append((case, f"run stopped: {why}, after case {number + 1} of {count}"))
        return why is not None


def test_fuzzed_messages_get_documented_errors_and_the_daemon_serves_on(fresh_daemon):
    """Thousands of malformed, wrong-typed, oversized and ill-timed messages: every bad one
    gets one documented, bounded error; the connection stays open; the daemon stays up, its
    memory bounded, and still runs a job."""
    pid = fresh_daemon.proc.pid
    warm = FuzzConnection(fresh_daemon.url)
    assert warm.run_small_job(seed=1).ok       # the first job's allocations are the baseline
    warm.close()
    rss_start = rss_bytes(pid)

    rng = random.Random(SEED)
    fuzz = FuzzRun(fresh_daemon)
    fuzz.run(list(fuzz_cases(rng, BEFORE_HELLO_CASES, before_hello=True)), before_hello=True)
    fuzz.run([*every_wrong_type(rng), *fuzz_cases(rng, CASES)], before_hello=False)

    assert alive(fresh_daemon), summarize(fuzz.problems)
    growth = max(fuzz.peak_rss, rss_bytes(pid)) - rss_start
    after = FuzzConnection(fresh_daemon.url)
    done = after.run_small_job(seed=2, steps=3)
    after.close()
    assert done.ok, done.message
    assert growth < FUZZ_RSS_BOUND, f"RSS grew {growth / MiB:.0f} MiB\n" + summarize(fuzz.problems)
    assert not fuzz.problems, summarize(fuzz.problems)


# ------------------------------------------------------------------ a client that never reads
class NonReader:
    """A websocket client on a raw socket with a small receive buffer that sends and never
    reads until told to: a stuck or hostile client, as the daemon sees it."""

    def __init__(self, url: str, rcvbuf: int = 64 * 1024, timeout: float = 5.0):
        uri = parse_uri(url)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((uri.host, uri.port))
        self.protocol = ClientProtocol(uri, max_size=None)
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        self._handshake()

    def _flush(self) -> None:
        self.sock.sendall(b"".join(self.protocol.data_to_send()))

    def _handshake(self) -> None:
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the daemon closed during the handshake")
            self.protocol.receive_data(data)
            if any(isinstance(e, Response) for e in self.protocol.events_received()):
                if self.protocol.handshake_exc is not None:
                    raise self.protocol.handshake_exc
                return

    def send_texts(self, texts: list[str]) -> None:
        for message in texts:
            self.protocol.send_text(message.encode())
        self._flush()

    def wait_close(self, timeout: float) -> tuple[Optional[int], int]:
        """Read everything until the daemon closes: (its close code, 1006 when it closed
        without one, None when still open at the timeout), and the bytes read."""
        deadline, total = time.monotonic() + timeout, 0
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            except ConnectionError:
                data = b""
            if not data:
                return 1006, total
            total += len(data)
            self.protocol.receive_data(data)
            self.protocol.events_received()
            if self.protocol.close_rcvd is not None:
                return self.protocol.close_rcvd.code, total
        return None, total

    def close(self) -> None:
        self.sock.close()


def probe_latency(probe: FuzzConnection) -> float:
    started = time.monotonic()
    probe.conn.send(text({"type": "get_status"}))
    try:
        while probe.next_message(PROBE_LATENCY_S * 2).get("type") != "status":
            pass
    except Hang:
        return float("inf")
    return time.monotonic() - started


def flood_batches(outbox_limit: int, per_fetch: int) -> int:
    """Batches that go far past the outbox limit (and the kernel's socket buffers) in what
    the outbox counts, and send twice the RSS bound in bait an unbounded echo would keep."""
    counted = (2 * outbox_limit + 32 * MiB) // (FLOOD_FETCHES * per_fetch) + 1
    echoed = 2 * FLOOD_RSS_BOUND // (FLOOD_BAIT * BAIT_BYTES) + 1
    return max(counted, echoed)


def bait(number: int) -> str:
    """A bad message whose error would be as big as the message if it echoed its input."""
    name = f"{number:08d}" + "B" * (BAIT_BYTES - 8)
    return text({"type": "get_status", name: 1} if number % 2 else {"type": name})


def test_a_client_that_never_reads_is_closed_and_the_daemon_stays_bounded(fresh_daemon):
    """One client sends bad messages and asks again and again for a finished job's result
    (8 KB of JSON and a 256 KB image each time), and never reads. The daemon closes it with
    4001 once its outbox passes ``max_outbox_bytes``, or at least keeps its memory bounded;
    other clients are served meanwhile, and the job's result can still be fetched."""
    pid = fresh_daemon.proc.pid
    owner = FuzzConnection(fresh_daemon.url)
    outbox_limit = owner.welcome["limits"].get("max_outbox_bytes") or 0
    done = owner.run_small_job(width=256, height=256, seed=3, prompt="p" * 4000,
                               negative_prompt="n" * 4000)
    assert done.ok, done.message
    job_id = done.message["job_id"]
    batches = flood_batches(outbox_limit, len(json.dumps(done.message)) + 36)
    rss_start = peak = rss_bytes(pid)

    probe = FuzzConnection(fresh_daemon.url, name="probe")
    flood = NonReader(fresh_daemon.url)
    hello = {"type": "hello", "protocol": 1, "client": "never reads"}
    flood.send_texts([text({**hello, "client_key": owner.client_key} if owner.client_key
                           else hello)])
    fetch = text({"type": "fetch", "job_id": job_id})
    sent, worst, deadline = 0, 0.0, time.monotonic() + FLOOD_SECONDS
    while sent < batches and time.monotonic() < deadline and peak - rss_start < FLOOD_RSS_BOUND:
        try:
            flood.send_texts([fetch] * FLOOD_FETCHES
                             + [bait(sent * FLOOD_BAIT + i) for i in range(FLOOD_BAIT)])
        except OSError:
            break        # the daemon stopped reading us, or closed: bounded either way
        sent += 1
        peak = max(peak, rss_bytes(pid))
        if sent % 10 == 0:
            worst = max(worst, probe_latency(probe))
    worst = max(worst, probe_latency(probe))

    assert alive(fresh_daemon)
    assert peak - rss_start < FLOOD_RSS_BOUND, (
        f"RSS grew {(peak - rss_start) / MiB:.0f} MiB after {sent} batches of unread "
        f"replies (bound {FLOOD_RSS_BOUND // MiB} MiB, max_outbox_bytes {outbox_limit})")
    assert worst < PROBE_LATENCY_S, f"another client waited {worst:.1f} s for its status"
    code, _ = flood.wait_close(timeout=15)
    flood.close()
    # 1006: the close frame was queued behind unread data and dropped when the daemon gave
    # up the closing handshake; the client was still let go.
    assert code in (None, CloseCode.OUTBOX_FULL, 1006), f"closed with {code}"
    back = FuzzConnection(fresh_daemon.url, client_key=owner.client_key)
    assert back.fetch(job_id).ok
    assert probe.run_small_job(seed=4).ok
    for conn in (back, probe, owner):
        conn.close()


# ------------------------------------------------------------------ uploads that inflate
def inflating_png(side: int) -> bytes:
    """A black greyscale PNG: about 64 KB on the wire for 8192x8192, 256 MiB as RGBA."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (side, side)).save(out, format="PNG", optimize=True)
    return out.getvalue()


def submit_outcome(conn: FuzzConnection, ref: str) -> str:
    """Refused (its error code) or accepted and run to its end (the end's type)."""
    deadline = time.monotonic() + 60
    while True:
        _, message = conn.next_reply(deadline)
        if message and message.get("ref") == ref:
            break
    if message["type"] != "accepted":
        return message.get("code", message["type"])
    conn.jobs.discard(message["job_id"])       # wait_job reads its events
    return conn.wait_job(message["job_id"], 60).message["type"]


def test_png_uploads_that_inflate_keep_memory_bounded(fresh_daemon):
    """Three clients each upload a 64 KB PNG whose header says the largest size a frame may
    have (4 x max_side a side) and submit an img2img job with it. The daemon may refuse them
    or run them, but a few hundred KB from three clients must not cost it gigabytes."""
    pid = fresh_daemon.proc.pid
    clients = [FuzzConnection(fresh_daemon.url, name=f"inflate-{i}") for i in range(INFLATERS)]
    side = clients[0].welcome["limits"]["max_side"] * 4
    png = inflating_png(side)
    assert clients[0].run_small_job(seed=6).ok      # the first job's allocations are the baseline
    with RssSampler(pid, every_s=0.02) as rss:
        for number, conn in enumerate(clients):
            upload_id = random_id(random.Random(number))
            conn.conn.send(upload(upload_id, PixelFormat.PNG, side, side, png))
            conn.conn.send(text({"type": "submit", "ref": "inflate", "job": {
                **SMALL_JOB, "kind": "img2img", "init_image": upload_id}}))
        outcomes = [submit_outcome(conn, "inflate") for conn in clients]
    assert alive(fresh_daemon)
    growth = rss.peak - rss.start
    assert growth < INFLATE_RSS_BOUND, (
        f"RSS grew {growth / MiB:.0f} MiB for {INFLATERS} PNGs of {len(png)} bytes "
        f"({side}x{side}); outcomes {outcomes}")
    assert clients[0].run_small_job(seed=7).ok
    for conn in clients:
        conn.close()


# ------------------------------------------------------------------ ownership
def error_reply(conn: FuzzConnection, message: dict[str, Any]) -> dict[str, Any]:
    conn.conn.send(text(message))
    reply = conn.next_message()
    assert reply["type"] == "error", (message, reply)
    assert error_problem(reply, json.dumps(reply), None) is None, reply
    return reply


def without_id(reply: dict[str, Any], job_id: str) -> str:
    return json.dumps(reply, sort_keys=True).replace(job_id, "<id>")


def assert_not_theirs(conn: FuzzConnection, job_id: str) -> None:
    """fetch and cancel of another's job: the same answer as for a job that never was."""
    nobody = random_id(random.Random(job_id))
    for kind in ("fetch", "cancel"):
        theirs = error_reply(conn, {"type": kind, "job_id": job_id})
        missing = error_reply(conn, {"type": kind, "job_id": nobody})
        assert theirs["code"] == ErrorCode.UNKNOWN_JOB, theirs
        assert without_id(theirs, job_id) == without_id(missing, nobody), (theirs, missing)


def status(conn: FuzzConnection) -> tuple[dict[str, Any], str]:
    conn.conn.send(text({"type": "get_status"}))
    while True:
        raw, message = conn.next_reply(time.monotonic() + conn.timeout)
        if message and message.get("type") == "status":
            return message, raw


def test_jobs_belong_to_the_client_key_that_submitted_them(daemon):
    owner = FuzzConnection(daemon.url, name="owner")
    key = owner.client_key
    assert isinstance(key, str) and re.fullmatch(r"[0-9a-f]{32}", key), owner.welcome
    job_id = owner.submit({**SMALL_JOB, "width": 128, "height": 128, "steps": 120, "seed": 5})
    owner.wait_job(job_id, 30, until=("started",))
    assert status(owner)[0].get("running") == job_id

    other = FuzzConnection(daemon.url, name="other")
    assert other.client_key != key
    assert_not_theirs(other, job_id)
    seen, raw = status(other)
    still_running = status(owner)[0].get("running") == job_id
    assert seen.get("running") != job_id and job_id not in raw, seen
    if still_running:
        assert seen.get("busy") is True, seen   # others' work shows as a count only
    forger = FuzzConnection(daemon.url, client_key=random_id(random.Random(key)))
    assert_not_theirs(forger, job_id)

    owner.abort()                               # gone mid-job, no closing handshake
    back = FuzzConnection(daemon.url, client_key=key, name="owner again")
    assert back.client_key == key
    end = back.fetch(job_id, timeout=120)
    assert end.ok, end.message
    assert_not_theirs(other, job_id)            # finished: still not theirs (no job_finished)
    for conn in (back, other, forger):
        conn.close()


# ------------------------------------------------------------------ connection limit
def test_connections_past_the_limit_get_503_and_the_slot_comes_back(fresh_daemon):
    first = FuzzConnection(fresh_daemon.url)
    limit = first.welcome["limits"].get("max_connections") or 0
    assert 0 < limit <= 1024, first.welcome["limits"]
    others = [connect(fresh_daemon.url, proxy=None) for _ in range(limit - 1)]
    with pytest.raises(InvalidStatus) as refused:
        connect(fresh_daemon.url, proxy=None, open_timeout=10)
    assert refused.value.response.status_code == 503
    others.pop().close()
    deadline = time.monotonic() + 10
    while True:                                  # the daemon frees the slot a moment later
        try:
            others.append(connect(fresh_daemon.url, proxy=None, open_timeout=10))
            break
        except InvalidStatus:
            assert time.monotonic() < deadline, "the freed slot did not come back"
            time.sleep(0.05)
    assert status(first)[0]["type"] == "status"
    for conn in others:
        conn.close()
    first.close()
