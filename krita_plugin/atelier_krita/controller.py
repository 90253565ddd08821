"""The docker's brain: turns button presses into daemon jobs and daemon events into layers.

Runs on Qt's thread only. The protocol client does all network I/O on its own
threads and queues events; ``pump`` (called by the docker's timer, or by a test
in a loop) drains them and touches the document. Nothing here blocks.

Undo: adding or removing a layer is a step in Krita's undo history, writing a
layer's pixels or renaming it is not. So a job adds at most one layer, the first
time it has something to show (a step preview, a batch, or its result), and
that same layer then shows every later step, whichever batch result the painter
picks, and finally the result that is kept, under its final name. One Edit > Undo
after Apply (or after a single result) takes the whole job back, and browsing a
batch leaves nothing in the history. Only a preview that is thrown away (Discard,
Cancel, an error) is removed, which is a second step.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .geometry import Bounds, Extent, ResolutionRange, range_for_family
from .history import History, HistoryEntry
from .host import KritaDocument
from .jobs import (DEPTH_MODEL_DEFAULT, DEPTH_MODEL_KINDS, JobPlan, JobRefused, JobSettings, Mode,
                   UploadIds, build_request, layer_name, plan_job)
from .pixels import (bgra_to_rgba, grow_and_feather, is_empty_mask, luminance, rgb_to_rgba,
                     rgba_to_bgra, with_alpha)
from .protocol.client import START_HINT, AtelierClient, ClientError, default_url, make_upload
from .protocol.errors import ErrorCode, ProtocolError
from .protocol.events import Connected, Disconnected, JobDone, PreviewImage
from .protocol.frames import ImageFrame, PixelFormat
from .protocol.messages import (Accepted, Cancelled, Error, GenerateRequest, ModelInfo,
                                ModelLoaded, Models, Progress, Started)
from .protocol.schema import validate
from .qt_pixels import decode_png_rgba, resample

PREVIEW_LAYER = "[Atelier preview]"
CLIENT_NAME = "atelier-krita"


@dataclass(frozen=True)
class ConnectionSettings:
    host: str = "127.0.0.1"
    port: int = 7861
    token: str = ""

    @property
    def url(self) -> str:
        return default_url(self.host, self.port)


@dataclass
class _ActiveJob:
    ref: str
    mode: Mode
    settings: JobSettings
    plan: JobPlan
    document: KritaDocument
    anchor: Any
    clip: Optional[bytes]                 # region-sized alpha for the result, or None
    job_id: Optional[str] = None
    cancel_requested: bool = False
    preview_layer: Any = None
    step: int = 0
    total: int = 0


@dataclass
class _Batch:
    """Finished results waiting in the preview layer for the painter to pick one."""
    mode: Mode
    settings: JobSettings
    plan: JobPlan
    document: KritaDocument
    anchor: Any
    layer: Any
    images: list[tuple[bytes, int]] = field(default_factory=list)   # (BGRA, seed)
    index: int = 0


class Controller:
    """State and actions behind the docker.

    ``document_source`` returns the document to work on (Krita's active one in
    the docker). ``resolution`` overrides the model family's size range.
    ``on_change`` is called on Qt's thread whenever something shown changed.
    """

    def __init__(self, document_source: Callable[[], Optional[KritaDocument]], *,
                 connection: ConnectionSettings = ConnectionSettings(),
                 resolution: Optional[ResolutionRange] = None,
                 on_change: Optional[Callable[[], None]] = None,
                 history_size: int = 30):
        self._document_source = document_source
        self.connection = connection
        self.resolution_override = resolution
        self.on_change = on_change
        self.history = History(history_size)
        self.client: Optional[AtelierClient] = None
        self.connected = False
        self.connection_text = "not connected"
        self.message = ""
        self.models: list[ModelInfo] = []
        self.current_model: Optional[str] = None
        self.loading_model: Optional[str] = None
        self.max_side: Optional[int] = None      # the daemon's limit, from its welcome
        self.size_limit: Optional[int] = None    # the painter's "max size" field
        self.sent_inputs: dict[str, ImageFrame] = {}
        self.sent_request: Optional[GenerateRequest] = None   # the last job submitted
        self._job: Optional[_ActiveJob] = None
        self._batch: Optional[_Batch] = None
        self._client_key: Optional[str] = None

    # ------------------------------------------------------------ connection
    def connect(self, connection: Optional[ConnectionSettings] = None) -> None:
        """(Re)connect in the background; the outcome arrives through ``pump``."""
        if connection is not None:
            self.connection = connection
        self.disconnect()
        self.client = AtelierClient(self.connection.url, token=self.connection.token or None,
                                    client_name=CLIENT_NAME, reconnect=True,
                                    client_key=self._client_key).start()
        self.connection_text = f"connecting to {self.connection.url}\u2026"
        self._changed()

    def disconnect(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            # the secret that owns our jobs on the daemon: the next client keeps it
            self._client_key = client.client_key or self._client_key
            # close() joins the client's threads, which can sit in a connect timeout:
            # never on Qt's thread.
            threading.Thread(target=client.close, name="atelier-close", daemon=True).start()
        self.connected = False
        if self._job is not None:
            self._end_job(f"disconnected from the daemon; the job at {self._job.plan.region} "
                          "was abandoned")
        self.connection_text = "not connected"
        self._changed()

    # ------------------------------------------------------------ state for the docker
    @property
    def busy(self) -> bool:
        return self._job is not None

    @property
    def progress(self) -> tuple[int, int]:
        job = self._job
        return (job.step, job.total) if job is not None else (0, 0)

    @property
    def batch_size(self) -> int:
        return len(self._batch.images) if self._batch is not None else 0

    @property
    def batch_index(self) -> int:
        return self._batch.index if self._batch is not None else 0

    def document(self) -> Optional[KritaDocument]:
        return self._document_source()

    def resolution_for(self, settings: JobSettings) -> ResolutionRange:
        if self.resolution_override is not None:
            resolution = self.resolution_override
        else:
            name = settings.model or self.current_model
            family = next((m.family for m in self.models if m.name == name), None)
            resolution = range_for_family(family)
        for cap in (self.size_limit, self.max_side):
            if cap:
                resolution = resolution.capped(cap)
        return resolution

    # ------------------------------------------------------------ actions
    def start(self, mode: Mode, settings: JobSettings) -> bool:
        """Start a job on the current document; False with ``message`` set when refused."""
        try:
            self._start(mode, settings)
        except JobRefused as exc:
            self.message = _sentence(str(exc))
            self._changed()
            return False
        self.message = f"{mode.label}: sent to the daemon"
        self._changed()
        return True

    def _start(self, mode: Mode, settings: JobSettings) -> None:
        if self._job is not None:
            raise JobRefused("a job is still running: wait for it or press Cancel")
        client = self.client
        if client is None or not self.connected:
            raise JobRefused(f"the Atelier daemon is not running or not reachable at "
                             f"{self.connection.url}; {START_HINT}")
        if settings.model and self.models and settings.model not in {m.name for m in self.models}:
            raise JobRefused(_missing_model(settings.model))
        if mode is Mode.DEPTH and settings.depth_model and self.models and \
                settings.depth_model not in {m.name for m in self.models
                                             if m.family in DEPTH_MODEL_KINDS}:
            raise JobRefused(f"the daemon lists no depth model named '{settings.depth_model}': "
                             f"pick one under Depth model, or {DEPTH_MODEL_DEFAULT}")
        document = self.document()
        if document is None:
            raise JobRefused("open or create a document first")
        problem = document.format_problem()
        if problem:
            raise JobRefused(problem)
        plan = plan_job(mode, settings, document.extent, document.selection_bounds(),
                        self.resolution_for(settings))
        self.discard_results()  # an unapplied batch would show up in the canvas we read
        uploads, clip = self._gather_inputs(document, plan, settings)
        request = build_request(plan, settings, UploadIds(
            image=_id(uploads.get("image")), mask=_id(uploads.get("mask")),
            depth=_id(uploads.get("depth"))))
        try:
            validate(request, "job")
        except ProtocolError as exc:
            raise JobRefused(f"{exc.field}: {exc.message}") from None
        try:
            ref = client.submit(request, list(uploads.values()))
        except ClientError as exc:
            raise JobRefused(str(exc)) from None
        self.sent_inputs = uploads
        self.sent_request = request
        self._job = _ActiveJob(ref, mode, settings, plan, document, document.anchor(), clip,
                               total=settings.steps)

    def _gather_inputs(self, document: KritaDocument, plan: JobPlan,
                       settings: JobSettings) -> tuple[dict[str, ImageFrame], Optional[bytes]]:
        region, size = plan.region, plan.model_extent
        uploads: dict[str, ImageFrame] = {}
        clip = None
        if plan.send_mask or plan.clip_to_selection:
            selected = document.selection_mask(region)
            if is_empty_mask(selected):
                raise JobRefused("the selection is empty: select the area to work on")
            clip = grow_and_feather(selected, region.extent, settings.mask_grow,
                                    settings.mask_feather)
            if plan.send_mask:
                uploads["mask"] = make_upload(PixelFormat.GRAY8, size.width, size.height,
                                              resample(clip, region.extent, size, 1))
        if plan.send_image:
            rgba = bgra_to_rgba(document.read_canvas(region))
            uploads["image"] = make_upload(PixelFormat.RGBA8, size.width, size.height,
                                           resample(rgba, region.extent, size, 4))
        if plan.send_depth:
            assert settings.depth_layer is not None
            grey = luminance(document.read_layer(settings.depth_layer, region))
            uploads["depth"] = make_upload(PixelFormat.GRAY8, size.width, size.height,
                                           resample(grey, region.extent, size, 1))
        return uploads, clip

    def load_model(self, name: str) -> bool:
        """Ask the daemon to load ``name`` now (jobs naming a model also load it)."""
        if self.client is None or not self.connected:
            self.message = (f"The Atelier daemon is not running or not reachable at "
                            f"{self.connection.url}; {START_HINT}")
            self._changed()
            return False
        self.client.load_model(name)
        self.loading_model = name
        self.message = f"loading model {name}\u2026"
        self._changed()
        return True

    def cancel(self) -> None:
        job = self._job
        if job is None:
            return
        job.cancel_requested = True
        if job.job_id is not None and self.client is not None:
            try:
                self.client.cancel(job.job_id)
            except ClientError as exc:
                self._end_job(_sentence(str(exc)))
                return
        self.message = "cancelling\u2026"
        self._changed()

    def rerun(self, index: int) -> bool:
        entry = self.history[index]
        return self.start(entry.mode, entry.settings)

    def select_result(self, index: int) -> None:
        batch = self._batch
        if batch is None:
            return
        if not 0 <= index < len(batch.images):
            raise IndexError(f"result {index} of a batch of {len(batch.images)}")
        batch.index = index
        bgra, seed = batch.images[index]
        batch.layer = _show(batch.document, batch.layer,
                            _preview_name(index, len(batch.images), seed), bgra,
                            batch.plan.region, batch.anchor)
        self._changed()

    def apply_result(self) -> Any:
        """Keep the shown batch result as a layer of its own; returns that layer.

        The preview layer itself becomes the result (renamed, its pixels left as
        shown), so Apply adds no step of its own to the undo history.
        """
        batch = self._batch
        if batch is None:
            return None
        bgra, seed = batch.images[batch.index]
        self._batch = None
        node = _show(batch.document, batch.layer, layer_name(batch.settings.prompt, seed), bgra,
                     batch.plan.region, batch.anchor)
        self.message = f"applied result {batch.index + 1} (seed {seed})"
        self._changed()
        return node

    def discard_results(self) -> None:
        batch, self._batch = self._batch, None
        if batch is not None:
            batch.document.remove_layer(batch.layer)
            self._changed()

    # ------------------------------------------------------------ events
    def pump(self, limit: int = 100) -> int:
        """Handle up to ``limit`` queued events on this (Qt's) thread; returns how many."""
        client = self.client
        if client is None:
            return 0
        handled = 0
        while handled < limit:
            try:
                event = client.events.get_nowait()
            except queue.Empty:
                break
            handled += 1
            try:
                self._handle(event)
            except (ProtocolError, ValueError) as exc:
                # An answer the plugin cannot use ends its job with the reason shown.
                reason = f"Could not use the daemon's answer: {exc}"
                self._end_job(reason)
                self.message = reason
        if handled:
            self._changed()
        return handled

    def _handle(self, event: Any) -> None:
        job = self._job
        if isinstance(event, Connected):
            self.connected = True
            welcome = event.welcome
            self.max_side = welcome.limits.max_side
            self.current_model = welcome.model
            self.connection_text = (f"connected to {self.connection.url} ({welcome.device}, "
                                    f"model {welcome.model or 'none loaded'})")
            if self.client is not None:
                self.client.list_models()
        elif isinstance(event, Disconnected):
            self.connected = False
            self.connection_text = _sentence(event.reason)
            if job is not None and not event.will_retry:
                self._end_job(_sentence(event.reason))
        elif isinstance(event, Models):
            self.models = list(event.models)
            self.current_model = event.current
        elif isinstance(event, ModelLoaded):
            self.current_model = event.model
            self.loading_model = None
            self.message = f"model {event.model} loaded ({event.family}, {event.seconds:.1f} s)"
        elif job is None or not _belongs_to(event, job):
            if isinstance(event, Error) and not event.job_id:
                self.loading_model = None
                self.message = _error_text(event, None)
        elif isinstance(event, Accepted):
            job.job_id = event.job_id
            if job.cancel_requested and self.client is not None:
                self.client.cancel(event.job_id)
            else:
                self.message = ("queued" if event.position else "starting") + "\u2026"
        elif isinstance(event, Started):
            self.message = f"{job.mode.label}: running"
        elif isinstance(event, Progress):
            job.step, job.total = event.step, event.total
        elif isinstance(event, PreviewImage):
            if not job.cancel_requested:
                self._show_preview(job, event.image)
        elif isinstance(event, JobDone):
            self._finish(job, event)
        elif isinstance(event, Cancelled):
            self._end_job("cancelled", outcome="cancelled")
        elif isinstance(event, Error):
            self._end_job(_error_text(event, job.settings))

    def _show_preview(self, job: _ActiveJob, frame: ImageFrame) -> None:
        bgra = self._to_layer_pixels(job.plan, job.clip, frame)
        job.preview_layer = _show(job.document, job.preview_layer, PREVIEW_LAYER, bgra,
                                  job.plan.region, job.anchor)

    def _finish(self, job: _ActiveJob, done: JobDone) -> None:
        if job.cancel_requested:  # finished before the cancel reached the daemon
            self._end_job("cancelled", outcome="cancelled")
            return
        seeds = [info.seed for info in done.result.images]
        images = [(self._to_layer_pixels(job.plan, job.clip, frame), seed)
                  for frame, seed in zip(done.images, seeds)]
        if not images:
            self._end_job("the daemon finished the job without images")
            return
        document, region = job.document, job.plan.region
        # The step previews' layer (if any) goes on to show the result.
        layer, job.preview_layer = job.preview_layer, None
        if len(images) == 1:
            bgra, seed = images[0]
            _show(document, layer, layer_name(job.settings.prompt, seed), bgra, region,
                  job.anchor)
            text = f"{job.mode.label}: done, seed {seed}"
        else:
            self._batch = _Batch(job.mode, job.settings, job.plan, document, job.anchor, layer,
                                 images)
            self.select_result(0)
            text = f"{job.mode.label}: {len(images)} results; pick one and press Apply"
        self._job = None
        self.current_model = done.result.model   # a job's model stays loaded after it
        self.message = text
        self.history.add(HistoryEntry(job.mode, job.settings.with_seed(seeds[0]), region, "done",
                                      tuple(seeds), done.result.seconds))

    def _to_layer_pixels(self, plan: JobPlan, clip: Optional[bytes], frame: ImageFrame) -> bytes:
        if frame.format == PixelFormat.PNG:
            rgba, extent = decode_png_rgba(frame.data)
        elif frame.format == PixelFormat.RGBA8:
            rgba, extent = frame.data, Extent(frame.width, frame.height)
        elif frame.format == PixelFormat.RGB8:
            rgba, extent = rgb_to_rgba(frame.data), Extent(frame.width, frame.height)
        else:
            raise ProtocolError(ErrorCode.BAD_MESSAGE,
                                f"a result image in format {frame.format.name} is not a picture",
                                "frame.format")
        rgba = resample(rgba, extent, plan.region.extent, 4)
        if clip is not None:
            rgba = with_alpha(rgba, clip)
        return rgba_to_bgra(rgba)

    def _drop_preview(self, job: _ActiveJob) -> None:
        if job.preview_layer is not None:
            job.document.remove_layer(job.preview_layer)
            job.preview_layer = None

    def _end_job(self, message: str, outcome: Optional[str] = None) -> None:
        job, self._job = self._job, None
        if job is None:
            return
        self._drop_preview(job)
        self.message = message
        self.history.add(HistoryEntry(job.mode, job.settings, job.plan.region,
                                      outcome or message))

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def close(self) -> None:
        self.discard_results()
        self.disconnect()


def _show(document: KritaDocument, layer: Any, name: str, bgra: bytes, region: Bounds,
          anchor: Any) -> Any:
    """``bgra`` shown in ``layer`` under ``name``, without a step in the undo history;
    in a new layer above ``anchor`` (one step) when there is none yet, or the painter
    deleted it or undid its adding. Returns the layer that shows it."""
    if layer is not None and document.has_layer(layer):
        document.write_layer(layer, bgra, region)
        document.rename_layer(layer, name)
        return layer
    return document.add_layer(name, bgra, region, anchor)


def _belongs_to(event: Any, job: _ActiveJob) -> bool:
    if isinstance(event, (Accepted, Error)) and event.ref and event.ref == job.ref:
        return True
    job_id = getattr(event, "job_id", None)
    return job_id is not None and job_id == job.job_id


def _id(frame: Optional[ImageFrame]) -> Optional[str]:
    return frame.id if frame is not None else None


def _preview_name(index: int, count: int, seed: int) -> str:
    return f"{PREVIEW_LAYER} {index + 1}/{count} seed {seed}"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def _missing_model(name: str) -> str:
    return (f"the daemon has no model named '{name}': pick one from the model list "
            "(`atelier models` lists what it can load)")


def _error_text(error: Error, settings: Optional[JobSettings]) -> str:
    if error.code == ErrorCode.MODEL_NOT_FOUND and error.field in (None, "model", "job.model"):
        name = settings.model if settings is not None and settings.model else "?"
        return _sentence(_missing_model(name)) + f" ({error.message})"
    if error.field in ("control.model", "job.control.model"):
        name = settings.depth_model if settings is not None and settings.depth_model else None
        which = f"depth model '{name}'" if name else f"depth model ({DEPTH_MODEL_DEFAULT})"
        return (f"The daemon answered {error.code} for the {which}: "
                f"{error.message.rstrip('.')}. Pick another under Depth model")
    where = f" [{error.field}]" if error.field else ""
    return f"The daemon answered {error.code}{where}: {error.message}"


__all__ = ["Controller", "ConnectionSettings", "PREVIEW_LAYER"]
