"""The transport layer: websocket server, authentication, origin checks, per-connection state.

Knows the job layer below it (``JobManager``) and the model service it asks
about models; never runs model code on the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import ipaddress
import logging
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Optional, Protocol

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from protocol.codec import decode_message, encode_message
from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import FrameKind, ImageFrame, decode_frame, encode_frame
from protocol.messages import (CLIENT_MESSAGES, PROTOCOL_VERSION, Accepted, Cancel, Error, Fetch,
                               GenerateRequest, GetStatus, Hello, ListModels, LoadModel, ModelInfo,
                               ModelLoaded, Models, Status, Submit, Welcome)

from .generation import Generator
from .jobs import JobManager
from .limits import ServerLimits

log = logging.getLogger("atelier.server")

SERVER_NAME = "atelier/0.1"
CAPABILITIES = ["txt2img", "img2img", "inpaint", "make_seamless", "tiling", "depth", "control",
                "t2i_adapter", "step_cache", "previews", "png", "raw", "fetch", "cancel"]
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


class ModelService(Protocol):
    """What the transport asks of the model layer."""
    device: str

    def current_name(self) -> Optional[str]: ...
    def available(self) -> list[ModelInfo]: ...
    def load(self, name: str) -> tuple[str, str]: ...        # (name, family), on the worker
    def memory(self) -> tuple[int, int]: ...                  # (allocated, total) bytes


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 7861
    token: Optional[str] = None
    allowed_origins: tuple[str, ...] = ()
    limits: ServerLimits = field(default_factory=ServerLimits)
    keep_results_s: float = 3600.0


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Daemon:
    def __init__(self, config: ServerConfig, models: ModelService, generator: Generator):
        if not is_loopback(config.host) and not config.token:
            raise ValueError(f"listening on {config.host} (not loopback) needs a token")
        self.config = config
        self.models = models
        self.generator = generator
        self.jobs: Optional[JobManager] = None
        self.port: Optional[int] = None
        self._server = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self.jobs = JobManager(self.generator, loop, max_queue=self.config.limits.max_queue,
                               keep_results_s=self.config.keep_results_s)
        self._server = await serve(
            self._handle, self.config.host, self.config.port,
            process_request=self._check_request,
            max_size=self.config.limits.max_message_bytes, compression=None,
            ping_interval=20, ping_timeout=60)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("Atelier daemon on ws://%s:%d/ (device %s)", self.config.host, self.port,
                 self.models.device)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self.jobs is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.jobs.stop)

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Future()
        finally:
            await self.stop()

    # ----------------------------------------------------------- HTTP upgrade
    def _check_request(self, connection: ServerConnection, request: Request) -> Optional[Response]:
        origin = request.headers.get("Origin")
        if origin is not None and origin not in self.config.allowed_origins:
            # A web page in a browser must not drive a daemon on localhost.
            return connection.respond(HTTPStatus.FORBIDDEN,
                                      f"origin {origin} is not allowed (see --allow-origin)\n")
        if is_loopback(self.config.host):
            hosts = request.headers.get_all("Host")
            host = hosts[0].rsplit(":", 1)[0] if len(hosts) == 1 else ""
            if not is_loopback(host):
                # DNS rebinding: a foreign name that resolves to 127.0.0.1.
                return connection.respond(HTTPStatus.FORBIDDEN, f"host {host} is not allowed\n")
        if self.config.token:
            auth = request.headers.get("Authorization") or ""
            given = auth[7:] if auth.startswith("Bearer ") else ""
            if not given:
                return connection.respond(HTTPStatus.UNAUTHORIZED, "a token is required\n")
            if not hmac.compare_digest(given.encode(), self.config.token.encode()):
                return connection.respond(HTTPStatus.FORBIDDEN, "wrong token\n")
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        session = Session(self, connection)
        try:
            await session.run()
        finally:
            assert self.jobs is not None
            self.jobs.unsubscribe(session.deliver)


class Session:
    """One client connection: handshake state, pending uploads, an ordered outbox."""

    def __init__(self, daemon: Daemon, connection: ServerConnection):
        self.daemon = daemon
        self.connection = connection
        self.limits = daemon.config.limits
        self.ready = False
        self.uploads: collections.OrderedDict[str, ImageFrame] = collections.OrderedDict()
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()

    def deliver(self, item: Any) -> None:
        """Called on the event loop by the job layer."""
        self.outbox.put_nowait(item)

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop())
        try:
            async for data in self.connection:
                try:
                    if isinstance(data, bytes):
                        self._on_frame(data)
                    else:
                        await self._on_text(data)
                except ProtocolError as exc:
                    self.deliver(Error(code=exc.code, message=exc.message, field=exc.field))
        except ConnectionClosed:
            pass  # the client went away; its jobs and results stay with the job layer
        finally:
            sender.cancel()

    async def _send_loop(self) -> None:
        while True:
            item = await self.outbox.get()
            payload = encode_frame(item) if isinstance(item, ImageFrame) else encode_message(item)
            try:
                await self.connection.send(payload)
            except ConnectionClosed:
                return

    # ----------------------------------------------------------- incoming
    def _on_frame(self, data: bytes) -> None:
        frame = decode_frame(data)
        if not self.ready:
            raise ProtocolError(ErrorCode.NOT_READY, "send hello before anything else")
        if frame.kind != FrameKind.UPLOAD:
            raise ProtocolError(ErrorCode.BAD_MESSAGE,
                                f"clients may only send upload frames, got {frame.kind.name}",
                                "frame.kind")
        self.limits.check_frame(frame.width, frame.height)
        if len(self.uploads) >= self.limits.max_uploads:
            raise ProtocolError(ErrorCode.LIMIT_EXCEEDED,
                                f"{len(self.uploads)} uploads are waiting for a job; the limit "
                                f"is {self.limits.max_uploads}", "frame")
        pending = sum(len(f.data) for f in self.uploads.values())
        if pending + len(frame.data) > self.limits.max_upload_bytes:
            raise ProtocolError(ErrorCode.LIMIT_EXCEEDED,
                                f"pending uploads would take {pending + len(frame.data)} bytes; "
                                f"the limit is {self.limits.max_upload_bytes}", "frame")
        self.uploads[frame.id] = frame

    async def _on_text(self, text: str) -> None:
        message = decode_message(text, CLIENT_MESSAGES)
        if isinstance(message, Hello):
            self._hello(message)
            return
        if not self.ready:
            raise ProtocolError(ErrorCode.NOT_READY, "send hello before anything else")
        jobs = self.daemon.jobs
        assert jobs is not None
        if isinstance(message, Submit):
            self._submit(message)
        elif isinstance(message, Cancel):
            jobs.cancel(message.job_id)
        elif isinstance(message, Fetch):
            jobs.fetch(message.job_id, self.deliver)
        elif isinstance(message, ListModels):
            models = self.daemon.models
            listed = await asyncio.get_running_loop().run_in_executor(None, models.available)
            self.deliver(Models(models=listed, current=models.current_name()))
        elif isinstance(message, LoadModel):
            await self._load_model(message.model)
        elif isinstance(message, GetStatus):
            allocated, total = self.daemon.models.memory()
            self.deliver(Status(queue_length=jobs.queue_length, running=jobs.running_id,
                                device=self.daemon.models.device,
                                model=self.daemon.models.current_name(),
                                memory_allocated=allocated, memory_total=total))

    def _hello(self, hello: Hello) -> None:
        if hello.protocol != PROTOCOL_VERSION:
            raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION,
                                f"this daemon speaks protocol {PROTOCOL_VERSION}, the client "
                                f"asked for {hello.protocol}", "protocol")
        self.ready = True
        models = self.daemon.models
        self.deliver(Welcome(protocol=PROTOCOL_VERSION, server=SERVER_NAME,
                             capabilities=list(CAPABILITIES), device=models.device,
                             model=models.current_name(), limits=self.limits.advertised()))

    def _submit(self, submit: Submit) -> None:
        try:
            self.limits.check_request(submit.job)
            uploads = self._take_uploads(submit.job)
            job, position = self.daemon.jobs.submit(submit.job, uploads, self.deliver)
        except ProtocolError as exc:
            self.deliver(Error(code=exc.code, message=exc.message, field=exc.field,
                               ref=submit.ref))
            return
        self.deliver(Accepted(job_id=job.id, ref=submit.ref, position=position))

    def _take_uploads(self, job: GenerateRequest) -> dict[str, ImageFrame]:
        wanted = {"job.init_image": job.init_image, "job.mask": job.mask,
                  "job.depth.upload": job.depth.upload if job.depth else None}
        for where, upload_id in wanted.items():
            if upload_id is not None and upload_id not in self.uploads:
                raise ProtocolError(ErrorCode.UNKNOWN_UPLOAD,
                                    f"no upload with id {upload_id} on this connection "
                                    "(send the image frame before the submit)", where)
        return {uid: self.uploads.pop(uid) for uid in wanted.values() if uid is not None}

    async def _load_model(self, name: str) -> None:
        jobs = self.daemon.jobs
        assert jobs is not None
        started = time.perf_counter()
        try:
            loaded_name, family = await jobs.run_on_worker(lambda: self.daemon.models.load(name))
        except ProtocolError:
            raise
        except Exception as exc:
            raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED,
                                f"could not load {name}: {type(exc).__name__}: {exc}",
                                "model") from exc
        self.deliver(ModelLoaded(model=loaded_name, family=family,
                                 seconds=round(time.perf_counter() - started, 3)))


class DaemonThread:
    """A daemon on its own event loop in a background thread (CLI in-process mode, tests)."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="atelier-daemon", daemon=True)

    @property
    def url(self) -> str:
        return f"ws://{self.daemon.config.host}:{self.daemon.port}/"

    def start(self, timeout: float = 30.0) -> "DaemonThread":
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the daemon did not start in time")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.daemon.start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self.daemon.stop(), self._loop)
        future.result(timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        if not self._thread.is_alive():
            self._loop.close()
