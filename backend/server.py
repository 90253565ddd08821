"""The transport layer: websocket server, authentication, origin checks, per-connection state.

Knows the job layer below it (``JobManager``) and the model service it asks
about models; never runs model code on the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hmac
import ipaddress
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import (TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Mapping, Optional,
                    Protocol, Union)

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from protocol.codec import decode_message
from protocol.errors import CloseCode, ErrorCode, ProtocolError
from protocol.frames import FrameKind, ImageFrame, PixelFormat, decode_frame
from protocol.messages import (CLIENT_KEY_LENGTH, CLIENT_MESSAGES, CONTROL_KINDS, PROTOCOL_VERSION,
                               SAMPLER_PRESETS, Accepted, Cancel, Error, Fetch, GetStatus, Hello,
                               ListModels, LoadModel, ModelLoaded, Models, Status, Submit, Welcome)
from protocol.schema import shorten

from .generation import Generator
from .jobs import JobManager, OwnStatus, Subscriber
from .limits import ServerLimits
from .outbox import Outbox, OutboxFull
from .spool import OutcomeSpool
from .uploads import Hold, UploadBudget

if TYPE_CHECKING:
    from .models.catalog import Catalog

log = logging.getLogger("atelier.server")

SERVER_NAME = "atelier/0.1"
CAPABILITIES = ["txt2img", "img2img", "inpaint", "make_seamless", "upscale", "refine", "texture_set",
                "tiling", "depth", "control",
                "t2i_adapter", "step_cache", "previews", "png", "raw", "fetch", "cancel", "live",
                "lora", "embeddings", "sampler_presets", "multi_control", "preprocess", "regions",
                "reference", "float32x3",
                # model families beyond SD1.x/2.x/SDXL (what each cannot do: protocol/families.py)
                "family:flux", "family:flux_fill", "family:flux_control", "family:sd3",
                "family:chroma", "family:zimage",
                # control kinds the daemon runs (pose needs a pose ControlNet and a skeleton
                # image: it has no pose detector, so it is not announced)
                *(f"control:{kind}" for kind in CONTROL_KINDS if kind != "pose")]
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
ERROR_MESSAGE_MAX = 1000     # characters of an error's message; client input is never echoed whole
ERROR_FIELD_MAX = 200


class ModelService(Protocol):
    """What the transport asks of the model layer."""
    device: str

    def current_name(self) -> Optional[str]: ...
    def catalog(self) -> "Catalog": ...     # the models found, and what could not be read
    def load(self, name: str) -> tuple[str, str]: ...        # (name, family), on the worker
    def memory(self) -> tuple[int, int]: ...                  # (allocated, total) bytes
    def after_out_of_memory(self) -> None: ...                # on the worker


class Transport(Protocol):
    """What a session needs of its connection: websockets' ServerConnection is one; the
    cluster gateway adapts a Starlette websocket to it. Ending, a transport raises
    websockets' ConnectionClosed (from ``send``) or stops iterating."""

    def __aiter__(self) -> AsyncIterator[Union[str, bytes]]: ...
    async def send(self, data: Union[str, bytes]) -> None: ...
    async def close(self, code: int, reason: str) -> None: ...


class JobService(Protocol):
    """What a session asks of the job layer: ``JobManager`` in the daemon, the cluster's
    scheduler client in a gateway. Subscribers are run on the session's event loop."""

    async def enqueue(self, request: Any, uploads: Mapping[str, ImageFrame],
                      subscriber: Subscriber, owner: str, holds: list[Hold],
                      live: Optional[str]) -> tuple[str, int]: ...     # (job id, position)
    async def cancel(self, job_id: str, owner: str, subscriber: Subscriber) -> None: ...
    async def fetch(self, job_id: str, owner: str, subscriber: Subscriber) -> None: ...
    async def own_status(self, owner: str) -> OwnStatus: ...
    def unsubscribe(self, subscriber: Subscriber) -> None: ...
    def run_on_worker(self, fn: Callable[[], Any]) -> "asyncio.Future[Any]": ...


class Checker(Protocol):
    def check(self, job: Any, uploads: Mapping[str, ImageFrame]) -> None: ...


class SessionHost(Protocol):
    """What a session needs of the server it runs in (``Daemon``, the cluster gateway)."""
    config: "ServerConfig"
    models: ModelService
    generator: Checker                  # only ``check``: what needs no model, before queueing
    uploads: UploadBudget
    checks: concurrent.futures.Executor
    sessions: set["Session"]

    @property
    def job_service(self) -> JobService: ...


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 7861
    token: Optional[str] = None
    allowed_origins: tuple[str, ...] = ()
    limits: ServerLimits = field(default_factory=ServerLimits)
    keep_results_s: float = 3600.0
    keep_results_bytes: int = 1024 * 1024 * 1024
    spool_dir: Optional[Path] = None     # finished outcomes on disk (survive a restart)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_of(header: str) -> str:
    """The host part of a Host header: ``[::1]:7861`` -> ``[::1]``, ``localhost`` -> itself."""
    if header.startswith("["):
        end = header.find("]")
        return header[:end + 1] if end > 0 else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def bearer_token(header: str) -> str:
    """The token of ``Authorization: Bearer TOKEN`` (the scheme is case-insensitive)."""
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def refusal(config: ServerConfig, get_all: Callable[[str], list[str]],
            connected: int) -> Optional[tuple[HTTPStatus, str]]:
    """Why an opening handshake with these headers is refused (status, body), or None:
    the Origin, Host, token and connection-count rules of every Atelier server."""
    origins = get_all("Origin")
    if origins and (len(origins) > 1 or origins[0] not in config.allowed_origins):
        # A web page in a browser must not drive a daemon on localhost.
        shown = shorten(", ".join(origins), 200)
        return HTTPStatus.FORBIDDEN, f"origin {shown} is not allowed (see --allow-origin)\n"
    if is_loopback(config.host):
        hosts = get_all("Host")
        host = host_of(hosts[0]) if len(hosts) == 1 else ""
        if not is_loopback(host):
            # DNS rebinding: a foreign name that resolves to 127.0.0.1.
            return HTTPStatus.FORBIDDEN, f"host {shorten(host, 200)} is not allowed\n"
    if config.token:
        auths = get_all("Authorization")
        given = bearer_token(auths[0]) if len(auths) == 1 else ""
        if not given:
            return HTTPStatus.UNAUTHORIZED, "a token is required\n"
        if not hmac.compare_digest(given.encode(), config.token.encode()):
            return HTTPStatus.FORBIDDEN, "wrong token\n"
    if connected >= config.limits.max_connections:
        return (HTTPStatus.SERVICE_UNAVAILABLE, f"{connected} clients are connected, the limit "
                f"is {config.limits.max_connections}\n")
    return None


async def serve_connection(host: SessionHost, transport: Transport) -> None:
    """One client's connection, start to end, in any Atelier server."""
    session = Session(host, transport)
    host.sessions.add(session)
    try:
        await session.run()
    finally:
        host.sessions.discard(session)
        session.drop_uploads()
        host.job_service.unsubscribe(session.deliver)


class Daemon:
    def __init__(self, config: ServerConfig, models: ModelService, generator: Generator):
        if not is_loopback(config.host) and not config.token:
            raise ValueError(f"listening on {config.host} (not loopback) needs a token")
        self.config = config
        self.models = models
        self.generator = generator
        self.jobs: Optional[JobManager] = None
        self.uploads = UploadBudget(config.limits.max_upload_bytes,
                                    config.limits.max_total_upload_bytes)
        self.port: Optional[int] = None
        self.sessions: set[Session] = set()
        # Submit checks decode images: one at a time, so clients cannot stack their memory.
        self.checks = concurrent.futures.ThreadPoolExecutor(1, "atelier-check")
        self._server = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        spool = OutcomeSpool(self.config.spool_dir, keep_s=self.config.keep_results_s,
                             keep_bytes=self.config.keep_results_bytes) \
            if self.config.spool_dir is not None else None
        self.jobs = JobManager(self.generator, loop, max_queue=self.config.limits.max_queue,
                               keep_results_s=self.config.keep_results_s,
                               keep_results_bytes=self.config.keep_results_bytes, spool=spool,
                               after_out_of_memory=self.models.after_out_of_memory)
        self._server = await serve(
            self._handle, self.config.host, self.config.port,
            process_request=self._check_request,
            max_size=self.config.limits.max_message_bytes, compression=None,
            ping_interval=20, ping_timeout=60)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("Atelier daemon on %s (device %s)", ws_url(self.config.host, self.port),
                 self.models.device)
        return self.port

    async def stop(self, flush_s: float = 2.0) -> None:
        """Queued jobs end with SHUTTING_DOWN and their clients are told (for up to
        ``flush_s``), then every connection closes with GOING_AWAY."""
        if self.jobs is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.jobs.stop)
            await asyncio.sleep(0)       # the worker's last posts run before the flush
            deadline = time.monotonic() + flush_s
            while any(s.outbox.pending_bytes for s in self.sessions) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        if self._server is not None:
            self._server.close(close_connections=False)
            for session in list(self.sessions):
                await session.close(CloseCode.GOING_AWAY, "the daemon is shutting down")
            await self._server.wait_closed()
        self.checks.shutdown(wait=False, cancel_futures=True)

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Future()
        finally:
            await self.stop()

    # ----------------------------------------------------------- HTTP upgrade
    @property
    def job_service(self) -> JobService:
        assert self.jobs is not None
        return self.jobs

    def _check_request(self, connection: ServerConnection, request: Request) -> Optional[Response]:
        refused = refusal(self.config, request.headers.get_all, len(self.sessions))
        return connection.respond(*refused) if refused is not None else None

    async def _handle(self, connection: ServerConnection) -> None:
        await serve_connection(self, connection)


@dataclass
class PendingUpload:
    frame: ImageFrame
    hold: Hold


class Session:
    """One client connection: its identity (client key), handshake state, pending uploads
    and a bounded outbox. Every message goes through one error boundary; slow work
    (checking a submit, loading or listing models) runs in tasks, so the reader keeps
    reading (a ``cancel`` is handled while a ``load_model`` is in flight)."""

    def __init__(self, daemon: SessionHost, connection: Transport):
        self.daemon = daemon
        self.connection = connection
        self.limits = daemon.config.limits
        self.ready = False
        self.client_key = ""
        self.uploads: collections.OrderedDict[str, PendingUpload] = collections.OrderedDict()
        self.outbox = Outbox(self.limits.max_outbox_bytes)
        self._tasks: set[asyncio.Task[None]] = set()
        # Submits and model loads reach the worker's queue in the order they came.
        self._in_order = asyncio.Lock()

    @property
    def jobs(self) -> JobService:
        return self.daemon.job_service

    def deliver(self, item: Any) -> None:
        """Queue ``item`` for this client (called on the event loop, also by the job
        layer). A client that does not read is disconnected once its outbox is full."""
        try:
            self.outbox.put(item)
        except OutboxFull as exc:
            log.warning("closing a connection that does not read: %s", exc)
            self._spawn(self.close(CloseCode.OUTBOX_FULL, "outbox full: the client does not read"))

    def _error(self, exc: ProtocolError, ref: Optional[str] = None,
               job_id: Optional[str] = None) -> None:
        """``exc`` as an error message, bounded; ``ref``/``job_id``: the request it answers."""
        self.deliver(Error(code=exc.code, message=shorten(exc.message, ERROR_MESSAGE_MAX),
                           field=shorten(exc.field, ERROR_FIELD_MAX) if exc.field else None,
                           ref=ref if ref is not None else exc.ref,
                           # a job's own outcome stands: this error is not that job's end
                           job_id=None if exc.code == ErrorCode.JOB_FINISHED else job_id))

    async def close(self, code: int, reason: str) -> None:
        self.outbox.close()
        await self.connection.close(code, reason)

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop())
        try:
            async for data in self.connection:
                self._guarded(self._on_data, data)
        except ConnectionClosed:
            pass  # the client went away; its jobs and results stay with the job layer
        finally:
            sender.cancel()
            for task in list(self._tasks):
                task.cancel()

    def _guarded(self, handle: Callable[..., Any], *args: Any, **where: Optional[str]) -> None:
        """The error boundary: a ProtocolError becomes its documented error; anything else
        an ``internal`` error and a log line. The connection goes on either way."""
        try:
            handle(*args)
        except ProtocolError as exc:
            self._error(exc, **where)
        except Exception as exc:
            log.exception("internal error handling a message")
            self._error(ProtocolError(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}"),
                        **where)

    def _spawn(self, work: Awaitable[None], **where: Optional[str]) -> None:
        async def guarded() -> None:
            try:
                await work
            except ProtocolError as exc:
                self._error(exc, **where)
            except ConnectionClosed:
                return      # the client went away; its jobs go on
            except Exception as exc:
                log.exception("internal error handling a message")
                self._error(ProtocolError(ErrorCode.INTERNAL,
                                          f"internal error: {type(exc).__name__}"), **where)
        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_loop(self) -> None:
        while True:
            try:
                payload = await self.outbox.get()
                await self.connection.send(payload)
            except (ConnectionClosed, OutboxFull):
                return

    # ----------------------------------------------------------- incoming
    def _on_data(self, data: Any) -> None:
        if isinstance(data, bytes):
            self._on_frame(data)
        else:
            self._on_text(data)

    def _on_frame(self, data: bytes) -> None:
        frame = decode_frame(data)
        if not self.ready:
            raise ProtocolError(ErrorCode.NOT_READY, "send hello before anything else")
        if frame.kind != FrameKind.UPLOAD:
            raise ProtocolError(ErrorCode.BAD_MESSAGE,
                                f"clients may only send upload frames, got {frame.kind.name}",
                                "frame.kind")
        self.limits.check_frame(frame.width, frame.height)
        replaced = self.uploads.pop(frame.id, None)
        if replaced is not None:          # a reused upload id: the newer image replaces it
            replaced.hold.release()
        if len(self.uploads) >= self.limits.max_uploads:
            raise ProtocolError(ErrorCode.LIMIT_EXCEEDED,
                                f"{len(self.uploads)} uploads are waiting for a job; the limit "
                                f"is {self.limits.max_uploads}", "frame")
        # A PNG holds what it decodes to once a job reads it, not its compressed size.
        decoded = frame.width * frame.height * 4 if frame.format == PixelFormat.PNG else 0
        hold = self.daemon.uploads.hold(self.client_key, max(len(frame.data), decoded))
        self.uploads[frame.id] = PendingUpload(frame, hold)

    def drop_uploads(self) -> None:
        for pending in self.uploads.values():
            pending.hold.release()
        self.uploads.clear()

    def _on_text(self, text: str) -> None:
        message = decode_message(text, CLIENT_MESSAGES)
        if isinstance(message, Hello):
            self._hello(message)
            return
        if not self.ready:
            raise ProtocolError(ErrorCode.NOT_READY, "send hello before anything else")
        if isinstance(message, Submit):
            self._guarded(self._queue_submit, message, ref=message.ref)
        elif isinstance(message, Cancel):
            self._spawn(self.jobs.cancel(message.job_id, self.client_key, self.deliver),
                        job_id=_job_of(message.job_id))
        elif isinstance(message, Fetch):
            self._spawn(self.jobs.fetch(message.job_id, self.client_key, self.deliver),
                        job_id=_job_of(message.job_id))
        elif isinstance(message, ListModels):
            self._spawn(self._list_models())
        elif isinstance(message, LoadModel):
            self._spawn(self._load_model(message.model))
        elif isinstance(message, GetStatus):
            self._spawn(self._status())

    def _hello(self, hello: Hello) -> None:
        if hello.protocol != PROTOCOL_VERSION:
            raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION,
                                f"this daemon speaks protocol {PROTOCOL_VERSION}, the client "
                                f"asked for {hello.protocol}", "protocol")
        if self.ready:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "hello was already sent on this "
                                "connection", "type")
        if hello.client_key is not None and not _is_key(hello.client_key):
            raise ProtocolError(ErrorCode.INVALID_FIELD,
                                f"client_key must be {CLIENT_KEY_LENGTH} lowercase hex digits "
                                "(the one a welcome gave)", "client_key")
        self.client_key = hello.client_key or secrets.token_hex(CLIENT_KEY_LENGTH // 2)
        self.ready = True
        models = self.daemon.models
        self.deliver(Welcome(protocol=PROTOCOL_VERSION, server=SERVER_NAME,
                             capabilities=list(CAPABILITIES), device=models.device,
                             model=models.current_name(), limits=self.limits.advertised(),
                             client_key=self.client_key,
                             sampler_presets=list(SAMPLER_PRESETS)))

    def _queue_submit(self, submit: Submit) -> None:
        # Its uploads are taken now, before any later frame could reuse their ids.
        taken = self._take_uploads(submit)
        self._spawn(self._submit(submit, taken), ref=submit.ref)

    def _take_uploads(self, submit: Submit) -> dict[str, PendingUpload]:
        """The pending uploads ``submit`` names (each id once, even when it names one
        twice), removed from the connection. When one is missing, the others are let go
        too (a refused submit holds nothing) and UNKNOWN_UPLOAD names the field."""
        job = submit.job
        named = {"job.init_image": job.init_image, "job.mask": job.mask,
                 "job.depth.upload": job.depth.upload if job.depth else None,
                 **{f"job.controls[{i}].image": layer.image for i, layer in enumerate(job.controls)},
                 **{f"job.references[{i}].image": ref.image for i, ref in enumerate(job.references)},
                 **{f"job.regions[{i}].mask": region.mask for i, region in enumerate(job.regions)}}
        taken: dict[str, PendingUpload] = {}
        missing: Optional[tuple[str, str]] = None
        for where, upload_id in named.items():
            if upload_id is None or upload_id in taken:
                continue
            pending = self.uploads.pop(upload_id, None)
            if pending is None:
                missing = missing or (where, upload_id)
            else:
                taken[upload_id] = pending
        if missing is not None:
            for pending in taken.values():
                pending.hold.release()
            where, upload_id = missing
            raise ProtocolError(ErrorCode.UNKNOWN_UPLOAD,
                                f"no upload with id {shorten(upload_id)} on this connection "
                                "(send the image frame before the submit)", where)
        return taken

    async def _submit(self, submit: Submit, taken: dict[str, PendingUpload]) -> None:
        holds = [p.hold for p in taken.values()]
        try:
            async with self._in_order:
                uploads = {uid: p.frame for uid, p in taken.items()}
                self.limits.check_request(submit.job)
                # What needs no model is checked now, off the event loop (images decode).
                await asyncio.get_running_loop().run_in_executor(
                    self.daemon.checks, self.daemon.generator.check, submit.job, uploads)
                job_id, position = await self.jobs.enqueue(submit.job, uploads, self.deliver,
                                                           self.client_key, holds, submit.live)
        except BaseException:
            for hold in holds:
                hold.release()
            raise
        self.deliver(Accepted(job_id=job_id, ref=submit.ref, position=position))

    async def _list_models(self) -> None:
        models = self.daemon.models
        catalog = await asyncio.get_running_loop().run_in_executor(None, models.catalog)
        self.deliver(Models(models=catalog.models, current=models.current_name(),
                            problems=catalog.problems))

    async def _status(self) -> None:
        mine = await self.jobs.own_status(self.client_key)
        allocated, total = self.daemon.models.memory()
        self.deliver(Status(queue_length=mine.queue_length, running=mine.running,
                            busy=mine.busy, jobs=mine.jobs, device=self.daemon.models.device,
                            model=self.daemon.models.current_name(),
                            memory_allocated=allocated, memory_total=total))

    async def _load_model(self, name: str) -> None:
        started = time.perf_counter()
        async with self._in_order:
            loading = self.jobs.run_on_worker(lambda: self.daemon.models.load(name))
        loaded_name, family = await loading
        self.deliver(ModelLoaded(model=loaded_name, family=family,
                                 seconds=round(time.perf_counter() - started, 3)))


def _is_key(text: str) -> bool:
    return len(text) == CLIENT_KEY_LENGTH and all(c in "0123456789abcdef" for c in text)


def _job_of(job_id: str) -> Optional[str]:
    """A job id to put on an error about it: only a well-formed one (never raw input)."""
    return job_id if _is_key(job_id) else None


def ws_url(host: str, port: int) -> str:
    """``ws://HOST:PORT/``, with an IPv6 literal in brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"ws://{host}:{port}/"


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
        assert self.daemon.port is not None
        return ws_url(self.daemon.config.host, self.daemon.port)

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
