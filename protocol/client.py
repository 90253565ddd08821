"""A thread-backed client for the Atelier daemon, safe to use from a UI thread.

All network I/O runs on two background threads (reader and writer). Nothing
here blocks the caller except the explicitly blocking helpers (``wait_*``,
``call``, ``run_job``), which are for command-line tools and tests. Events
(daemon messages and the records in ``events.py``) go to ``on_event`` if
given, called on the reader thread, else into ``self.events`` for the host's
UI timer to drain.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Optional, Sequence

from . import _websocket as ws
from .codec import decode_message, encode_message
from .errors import ProtocolError
from .events import Connected, Disconnected, JobDone, PreviewImage
from .frames import FrameKind, ImageFrame, PixelFormat, decode_frame, encode_frame, new_id
from .messages import (PROTOCOL_VERSION, SERVER_MESSAGES, Accepted, Cancel, Cancelled, Error,
                       Fetch, GenerateRequest, GetStatus, Hello, ListModels, LoadModel, Result,
                       Submit)

DEFAULT_PORT = 7861
START_HINT = "start it with: atelier serve"


class ClientError(Exception):
    """The client cannot do what was asked (not connected, timed out, refused)."""


def default_url(host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"      # an IPv6 literal
    return f"ws://{host}:{port}/"


def make_upload(fmt: PixelFormat, width: int, height: int, data: bytes) -> ImageFrame:
    """An input image ready to send with ``submit``; put its ``id`` in the request."""
    return ImageFrame(FrameKind.UPLOAD, PixelFormat(fmt), 0, width, height, new_id(), bytes(data))


# Binary payloads past this size go as a fragmented message, a fragment at a time: a
# client masks what it sends, and the websockets vendored into Krita and Blender (pure
# Python, no C speedups) masks a frame in one big-integer operation that holds the GIL
# for all of it (about 85 ms for a 16 MB upload), stalling the host's UI thread.
SEND_FRAGMENT = 1 << 20


def _fragments(payload: "str | bytes") -> Any:
    """``payload``, or an iterator of its fragments when it is bytes past SEND_FRAGMENT."""
    if isinstance(payload, str) or len(payload) <= SEND_FRAGMENT:
        return payload
    view = memoryview(payload)
    return (view[start:start + SEND_FRAGMENT] for start in range(0, len(view), SEND_FRAGMENT))


class AtelierClient:
    """``client_key``: the secret that owns this client's jobs, from an earlier
    ``welcome`` (a host may keep it to fetch results after it restarts); None = take the
    one the daemon gives. Either way it is kept across reconnects (``self.client_key``)."""

    def __init__(self, url: str | None = None, *, token: str | None = None,
                 client_name: str = "atelier-client",
                 on_event: Callable[[Any], None] | None = None,
                 reconnect: bool = True, connect_timeout: float = 5.0,
                 max_message_bytes: int = 512 * 1024 * 1024,
                 client_key: str | None = None):
        self.url = url or default_url()
        self.token = token
        self.client_key = client_key
        self.client_name = client_name
        self.reconnect = reconnect
        self.connect_timeout = connect_timeout
        self.max_message_bytes = max_message_bytes
        self.events: "queue.Queue[Any]" = queue.Queue()
        self.welcome = None
        self._on_event = on_event
        self._outbox: "queue.Queue[Optional[str | bytes]]" = queue.Queue()
        self._conn = None
        self._connected = threading.Event()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._pending_jobs: set[str] = set()
        self._frames: dict[str, list[ImageFrame]] = {}
        self._reader: threading.Thread | None = None
        self._writer: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "AtelierClient":
        if self._reader is not None:
            return self
        self._reader = threading.Thread(target=self._read_loop, name="atelier-reader", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name="atelier-writer", daemon=True)
        self._reader.start()
        self._writer.start()
        return self

    def close(self) -> None:
        self._closing.set()
        self._outbox.put(None)
        conn = self._conn
        if conn is not None:
            conn.close()  # a no-op on a connection that is already closed
        for thread in (self._reader, self._writer):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=5)

    def __enter__(self) -> "AtelierClient":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float = 10.0) -> None:
        """Block until the handshake is done; ClientError with the reason otherwise."""
        deadline = time.monotonic() + timeout
        while not self._connected.wait(0.05):
            if time.monotonic() > deadline:
                raise ClientError(f"no connection to the Atelier daemon at {self.url} after "
                                  f"{timeout:g} s; {START_HINT}")
            if self._reader is not None and not self._reader.is_alive():
                raise ClientError(self._last_failure or f"connection to {self.url} failed")

    _last_failure: str | None = None

    # ---------------------------------------------------------------- sending
    def submit(self, job: GenerateRequest, uploads: Sequence[ImageFrame] = (),
               ref: str | None = None, live: str | None = None) -> str:
        """Queue a job; returns the ``ref`` echoed in its ``Accepted`` (or ``Error``).
        ``live``: a live session name; the job supersedes that session's earlier ones."""
        ref = ref or new_id()
        for frame in uploads:
            if frame.kind != FrameKind.UPLOAD:
                raise ValueError("uploads must be made with make_upload()")
            self._send(encode_frame(frame))
        self._send(encode_message(Submit(job=job, ref=ref, live=live)))
        return ref

    def cancel(self, job_id: str) -> None:
        self._send(encode_message(Cancel(job_id=job_id)))

    def fetch(self, job_id: str) -> None:
        with self._lock:
            self._pending_jobs.add(job_id)
        self._send(encode_message(Fetch(job_id=job_id)))

    def list_models(self) -> None:
        self._send(encode_message(ListModels()))

    def load_model(self, model: str) -> None:
        self._send(encode_message(LoadModel(model=model)))

    def get_status(self) -> None:
        self._send(encode_message(GetStatus()))

    def _send(self, payload: str | bytes) -> None:
        if not self._connected.is_set():
            raise ClientError(f"not connected to the Atelier daemon at {self.url}; {START_HINT}")
        self._outbox.put(payload)

    # ---------------------------------------------------------------- blocking helpers
    def next_event(self, timeout: float) -> Any:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            raise ClientError(f"no event from the daemon within {timeout:g} s") from None

    def wait_for(self, match: Callable[[Any], bool], timeout: float = 60.0,
                 on_other: Callable[[Any], None] | None = None) -> Any:
        """Drain ``events`` until ``match`` accepts one; others go to ``on_other``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClientError(f"timed out after {timeout:g} s waiting for the daemon")
            event = self.next_event(left)
            if match(event):
                return event
            if on_other is not None:
                on_other(event)

    def call(self, message_type: type, send: Callable[[], None], timeout: float = 60.0) -> Any:
        """Send with ``send`` and wait for the reply of ``message_type`` (or an Error)."""
        send()
        event = self.wait_for(lambda e: isinstance(e, (message_type, Error)), timeout)
        if isinstance(event, Error):
            raise ProtocolError(event.code, event.message, event.field)
        return event

    def run_job(self, job: GenerateRequest, uploads: Sequence[ImageFrame] = (),
                timeout: float = 600.0,
                on_event: Callable[[Any], None] | None = None) -> JobDone | Cancelled:
        """Submit and block until the job ends; a daemon error is raised as ProtocolError."""
        ref = self.submit(job, uploads)
        accepted = self.wait_for(
            lambda e: (isinstance(e, Accepted) and e.ref == ref)
            or (isinstance(e, Error) and e.ref == ref), timeout, on_event)
        if isinstance(accepted, Error):
            raise ProtocolError(accepted.code, accepted.message, accepted.field)
        if on_event is not None:
            on_event(accepted)
        job_id = accepted.job_id
        end = self.wait_for(
            lambda e: isinstance(e, (JobDone, Cancelled, Error))
            and getattr(e, "job_id", None) == job_id, timeout, on_event)
        if isinstance(end, Error):
            raise ProtocolError(end.code, end.message, end.field)
        return end

    # ---------------------------------------------------------------- threads
    def _emit(self, event: Any) -> None:
        if self._on_event is not None:
            self._on_event(event)
        else:
            self.events.put(event)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _handshake(self, conn) -> Any:
        conn.send(encode_message(Hello(protocol=PROTOCOL_VERSION, client=self.client_name,
                                       client_key=self.client_key)))
        first = decode_message(conn.recv(timeout=self.connect_timeout), SERVER_MESSAGES)
        if isinstance(first, Error):
            raise ClientError(f"the daemon refused the handshake: {first.message}")
        if getattr(first, "client_key", None):
            self.client_key = first.client_key
        return first

    def _read_loop(self) -> None:
        delay = 0.25
        while not self._closing.is_set():
            try:
                with ws.connect(self.url, additional_headers=self._headers(), proxy=None,
                                open_timeout=self.connect_timeout,
                                max_size=self.max_message_bytes, compression=None) as conn:
                    self._session(conn, self._handshake(conn))
                    delay = 0.25
                    if self._closing.is_set():
                        break
                    reason = "the daemon closed the connection"
            except ws.InvalidStatus as exc:
                status = exc.response.status_code
                reason = {401: "the daemon wants a token (set one in the connection settings)",
                          403: "the daemon refused this connection (wrong token or origin)",
                          503: "the daemon has as many clients as it takes; retrying"
                          }.get(status, f"the daemon answered HTTP {status}")
                if not self._fail(reason, retry=status == 503 and self.reconnect):
                    return
                self._closing.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            except ClientError as exc:
                self._fail(str(exc), retry=False)
                return
            except (OSError, ws.WebSocketException, ProtocolError, TimeoutError) as exc:
                reason = (f"cannot reach the Atelier daemon at {self.url} ({exc}); "
                          f"{START_HINT}")
            if not self._fail(reason, retry=self.reconnect):
                return
            self._closing.wait(delay)
            delay = min(delay * 2, 5.0)
        self._emit(Disconnected("closed by the client", will_retry=False))

    def _session(self, conn, welcome) -> None:
        """One connected stretch: announce it, resume waiting jobs, receive until it ends."""
        self._conn = conn
        self.welcome = welcome
        self._connected.set()
        self._emit(Connected(welcome))
        with self._lock:
            resume = sorted(self._pending_jobs)
        for job_id in resume:  # outcomes that finished while we were away
            self._outbox.put(encode_message(Fetch(job_id=job_id)))
        try:
            self._receive(conn)
        finally:
            self._connected.clear()
            self._conn = None

    def _fail(self, reason: str, retry: bool) -> bool:
        self._last_failure = reason
        self._emit(Disconnected(reason, will_retry=retry and not self._closing.is_set()))
        return retry

    def _receive(self, conn) -> None:
        while True:
            try:
                data = conn.recv()
            except (ws.ConnectionClosed, OSError):
                return
            try:
                if isinstance(data, bytes):
                    self._on_frame(decode_frame(data))
                else:
                    self._on_message(decode_message(data, SERVER_MESSAGES))
            except ProtocolError as exc:
                # A daemon speaking a different dialect: report it, keep the connection.
                self._emit(Error(code=exc.code, message=f"from daemon: {exc.message}",
                                 field=exc.field))

    def _on_frame(self, frame: ImageFrame) -> None:
        if frame.kind == FrameKind.PREVIEW:
            self._emit(PreviewImage(frame.id, frame.index, frame))
        elif frame.kind == FrameKind.RESULT:
            with self._lock:
                self._frames.setdefault(frame.id, []).append(frame)

    def _on_message(self, message: Any) -> None:
        if isinstance(message, Accepted):
            with self._lock:
                self._pending_jobs.add(message.job_id)
        elif isinstance(message, Result):
            with self._lock:
                frames = sorted(self._frames.pop(message.job_id, []), key=lambda f: f.index)
                self._pending_jobs.discard(message.job_id)
            self._emit(JobDone(message, frames))
            return
        elif isinstance(message, (Cancelled, Error)) and getattr(message, "job_id", None):
            with self._lock:
                self._pending_jobs.discard(message.job_id)
                self._frames.pop(message.job_id, None)
        self._emit(message)

    def _write_loop(self) -> None:
        while True:
            payload = self._outbox.get()
            if payload is None:
                return
            conn = self._conn
            if conn is None:
                continue  # dropped: callers are told through Disconnected
            try:
                conn.send(_fragments(payload))
            except (ws.ConnectionClosed, OSError):
                continue


