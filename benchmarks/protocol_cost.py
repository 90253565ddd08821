"""What the protocol costs: a job's round trip through the real daemon and client, against
the same bytes over a plain loopback TCP socket.

    python -m benchmarks.protocol_cost [--sizes 512 1024 2048] [--json out/protocol.json]

The daemon is the real ``backend.server.Daemon`` (websocket transport, job queue, worker
thread, result frames, PNG encoding on the worker) and the client the real
``protocol.client.AtelierClient``. Only the model is replaced, by
``PreparedImageGenerator``: a benchmark-only stand-in that hands back an image prepared
before timing starts, so the figures hold transport and protocol work alone.

The baseline is one request-reply over a plain socket pair on 127.0.0.1: a small request
goes out, the reply is an 8-byte length and exactly the payload bytes the daemon
delivered (the raw RGBA8 pixels, or the daemon's own PNG file), read fully into a buffer.
A third column sends the same bytes through the websocket library alone, which shows
how much of the difference is the library and how much Atelier's own layers. Each
figure is the median of several repetitions after warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import socket
import struct
import sys
import threading
from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np

from backend.generation import GeneratedImage, GenerationOutput, Pixels, ProgressSink
from backend.models.catalog import Catalog
from backend.outputs import encode_png, png_text
from backend.server import Daemon, DaemonThread, ServerConfig
from protocol import _websocket as ws
from protocol.client import AtelierClient
from protocol.errors import ErrorCode, ProtocolError
from protocol.events import JobDone
from protocol.frames import ImageFrame
from protocol.messages import GenerateRequest

from .measure import format_table, machine, median, time_calls, write_json

STAND_IN_NAME = "benchmark-stand-in"
FORMATS = ("raw", "png")
_LENGTH = struct.Struct(">Q")


def realistic_image(width: int, height: int, seed: int = 0) -> Pixels:
    """Smooth colour gradients with mild sensor-like noise: PNG compresses it about as
    well as a generated picture, unlike flat colour (too well) or pure noise (not at all)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / width, y / height
    rgb = np.stack([
        128 + 90 * np.sin(2 * np.pi * (1.3 * u + 0.4 * v)),
        128 + 80 * np.cos(2 * np.pi * (0.7 * u - 1.1 * v)),
        128 + 70 * np.sin(2 * np.pi * (2.1 * u * v + 0.25)),
    ], axis=-1)
    rgb += rng.normal(0.0, 4.0, rgb.shape)
    rgba = np.empty((height, width, 4), np.uint8)
    rgba[..., :3] = np.clip(rgb, 0, 255).astype(np.uint8)
    rgba[..., 3] = 255
    return Pixels(width, height, rgba.tobytes())


class PreparedImageGenerator:
    """Benchmark-only stand-in for the model: returns a prepared image of the requested
    size at once, so the daemon's timing is all protocol, queue and encoding."""

    def __init__(self, images: Mapping[tuple[int, int], Pixels]):
        self._images = dict(images)

    def check(self, job: GenerateRequest, uploads: Mapping[str, ImageFrame]) -> None:
        if (job.width, job.height) not in self._images:
            raise ProtocolError(ErrorCode.UNSUPPORTED, f"no prepared {job.width}x{job.height} "
                                "image", "job.width")

    def generate(self, job: GenerateRequest, uploads: Mapping[str, ImageFrame],
                 progress: ProgressSink, cancelled: Callable[[], bool]) -> GenerationOutput:
        pixels = self._images[(job.width, job.height)]
        seed = job.seed if job.seed is not None else 0
        return GenerationOutput(images=[GeneratedImage(pixels, seed)] * job.batch_size,
                                params=dataclasses.replace(job, seed=seed),
                                tiling=job.tiling, model=STAND_IN_NAME)


class StandInModels:
    """Benchmark-only model service: one fixed name, nothing to load."""
    device = "cpu"

    def current_name(self) -> Optional[str]:
        return STAND_IN_NAME

    def catalog(self) -> Catalog:
        return Catalog()

    def load(self, name: str) -> tuple[str, str]:
        raise RuntimeError("the protocol benchmark has no models to load")

    def memory(self) -> tuple[int, int]:
        return 0, 0

    def after_out_of_memory(self) -> None:
        pass


class PlainSocketPair:
    """A loopback TCP connection whose server answers each request with one payload."""

    def __init__(self, payload: bytes):
        self.payload = payload
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._server = threading.Thread(target=self._serve, name="plain-socket", daemon=True)
        self._server.start()
        self.sock = socket.create_connection(self._listener.getsockname())
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = bytearray(len(payload))

    def _serve(self) -> None:
        conn, _ = self._listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while True:
                request = conn.recv(4096)
                if not request:
                    return
                conn.sendall(_LENGTH.pack(len(self.payload)) + self.payload)

    def round_trip(self, request: bytes = b"job") -> int:
        """Send a small request, read the whole reply; returns the payload length."""
        self.sock.sendall(request)
        header = _recv_exactly(self.sock, bytearray(_LENGTH.size))
        (length,) = _LENGTH.unpack(header)
        view = memoryview(self._buffer)[:length]
        _recv_exactly(self.sock, view)
        return length

    def close(self) -> None:
        self.sock.close()
        self._server.join(timeout=5)
        self._listener.close()


class BareWebsocketPair:
    """The same websocket library as the daemon and client (asyncio server, threaded
    client), no Atelier protocol: each text message is answered with the payload as one
    binary message. Separates the library's cost from the protocol's."""

    def __init__(self, payload: bytes):
        self.payload = payload
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bare-websocket",
                                        daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        port = self._server.sockets[0].getsockname()[1]
        self._closing = contextlib.ExitStack()
        self.conn = self._closing.enter_context(
            ws.connect(f"ws://127.0.0.1:{port}/", max_size=None, compression=None, proxy=None))

    async def _start(self):
        from websockets.asyncio.server import serve

        async def answer(connection) -> None:
            async for _ in connection:
                await connection.send(self.payload)

        return await serve(answer, "127.0.0.1", 0, max_size=None, compression=None)

    def round_trip(self) -> int:
        self.conn.send("job")
        return len(self.conn.recv())

    def close(self) -> None:
        self._closing.close()

        async def stop() -> None:
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def _recv_exactly(sock: socket.socket, buffer) -> bytes | bytearray:
    view = memoryview(buffer)
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError(f"peer closed after {got} of {len(view)} bytes")
        got += n
    return buffer


def _repeats_for(size: int, base: int) -> int:
    # Bigger payloads vary less between runs and take longer: fewer repetitions.
    return max(3, base * 512 * 512 // (size * size) if size > 512 else base)


def run(sizes: list[int], repeats: int, warmup: int) -> dict:
    images = {(s, s): realistic_image(s, s) for s in sizes}
    daemon = DaemonThread(Daemon(ServerConfig(port=0), StandInModels(),
                                 PreparedImageGenerator(images))).start()
    client = AtelierClient(daemon.url, reconnect=False, client_name="protocol-benchmark").start()
    rows = []
    try:
        client.wait_connected(timeout=10)
        for size in sizes:
            for fmt in FORMATS:
                job = GenerateRequest(prompt="benchmark", width=size, height=size, steps=1,
                                      seed=1, output_format=fmt)
                delivered: list[bytes] = []

                def over_protocol() -> None:
                    done = client.run_job(job, timeout=120)
                    if not isinstance(done, JobDone) or len(done.images) != 1:
                        raise RuntimeError(f"expected one result image, got {done!r}")
                    delivered[:] = [done.images[0].data]

                reps = _repeats_for(size, repeats)
                protocol_s = time_calls(over_protocol, reps, warmup)
                payload = delivered[0]
                plain = PlainSocketPair(payload)
                try:
                    plain_s = time_calls(plain.round_trip, reps, warmup)
                finally:
                    plain.close()
                bare = BareWebsocketPair(payload)
                try:
                    bare_s = time_calls(bare.round_trip, reps, warmup)
                finally:
                    bare.close()
                encode_s = None
                if fmt == "png":
                    pixels = images[(size, size)]
                    text = png_text(job, 1, STAND_IN_NAME)
                    encode_s = median(time_calls(lambda: encode_png(pixels, text), reps, warmup))
                rows.append({
                    "size": size, "format": fmt, "payload_bytes": len(payload),
                    "repeats": reps,
                    "protocol_ms": median(protocol_s) * 1e3,
                    "plain_socket_ms": median(plain_s) * 1e3,
                    "ratio": median(protocol_s) / median(plain_s),
                    "bare_websocket_ms": median(bare_s) * 1e3,
                    "png_encode_ms": encode_s * 1e3 if encode_s is not None else None,
                })
    finally:
        client.close()
        daemon.stop()
    return {"benchmark": "protocol_cost", "machine": machine(), "warmup": warmup, "rows": rows,
            "note": "protocol_ms includes the daemon's PNG encoding on its worker for png rows "
                    "(png_encode_ms measures that encoding alone); the plain socket sends the "
                    "already-encoded bytes; bare_websocket_ms is the same bytes through the websocket "
                    "library alone (no Atelier protocol, queue or worker)"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--repeats", type=int, default=15,
                        help="repetitions at 512x512 (fewer for bigger images, at least 3)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    report = run(args.sizes, args.repeats, args.warmup)
    print(format_table(
        ["size", "format", "payload MB", "protocol ms", "plain ms", "ratio", "png encode ms",
         "bare websocket ms"],
        [[f"{r['size']}x{r['size']}", r["format"], r["payload_bytes"] / 1e6, r["protocol_ms"],
          r["plain_socket_ms"], r["ratio"], r["png_encode_ms"], r["bare_websocket_ms"]]
         for r in report["rows"]]))
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
