"""The docker's brain: turns button presses into daemon jobs and daemon events into layers.

Runs on Qt's thread only. The protocol client does all network I/O on its own
threads and queues events; the pixel work (masks, scaling) runs on a
``PixelWorker`` thread. ``pump`` (called by the docker's timer, or by a test in a
loop) drains both and touches the document. Nothing here blocks: Krita's API is
called only with buffers that are ready to hand over.

A job ends, whatever happens: with its result, when Cancel is pressed (at once,
whether or not the daemon can be told), when the daemon reports an error or no
longer knows it (it restarted), when its document is closed, or when the plugin
itself fails while handling it (the reason is shown and logged).

Undo: adding or removing a layer is a step in Krita's undo history, writing a
layer's pixels or renaming it is not. So a job adds at most one layer, the first
time it has something to show (a step preview, a batch, or its result), and
that same layer then shows every later step, whichever batch result the painter
picks, and finally the result that is kept, under its final name. One Edit > Undo
after Apply (or after a single result) takes the whole job back, and browsing a
batch leaves nothing in the history. A preview that is thrown away (Discard,
Cancel, an error) is taken back with Edit > Undo when adding it is still the newest
step (``KritaDocument.take_back_layer``), so it leaves no step either; only when the
painter did something since is it removed, which is a step of its own.

Queue: Generate while a job runs prepares the next job at once (from the canvas as
it is then, without the running job's preview) and keeps it in the plugin; it is
sent when the running job ends, whichever way. Cancel ends the running job and
drops the queued ones.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Any, Callable, Optional

from .assets import (LANCZOS, UpscaleLayout, map_layer_names, texture_group_name,
                     upscale_layer_name, upscale_problem)
from .geometry import Bounds, ResolutionRange, range_for_family
from .history import History, HistoryEntry, ResultImage
from .guides import SELECTION, Guides, control_layer_name
from .host import DocumentClosed, KritaDocument
from .landing import Landing, group_landing, upscale_landing
from .jobs import (DEPTH_MODEL_DEFAULT, DEPTH_MODEL_KINDS, QUEUE_LIMIT, JobPlan, JobRefused,
                   JobSettings, Mode, build_request, layer_name, plan_job, upload_ids)
from .live import (LIVE_LAYER, LIVE_POLL_S, LIVE_SESSION, LIVE_STRENGTH, LiveDebounce,
                   LiveResults, is_superseded)
from .loras import daemon_loras
from .pixels import is_empty_mask
from .protocol.client import START_HINT, AtelierClient, ClientError, default_url
from .protocol.errors import ErrorCode, ProtocolError
from .protocol.events import Connected, Disconnected, JobDone, PreviewImage
from .protocol.frames import ImageFrame, new_id
from .protocol.messages import (Accepted, Cancelled, Error, GenerateRequest, Limits, ModelInfo,
                                ModelLoaded, Models, Progress, Started)
from .protocol.schema import validate
from .work import (AssetImage, CanvasRead, PixelWorker, PreparedInputs, ReferenceRead,
                   asset_images, finished_images, layer_pixels, prepare_inputs)

PREVIEW_LAYER = "[Atelier preview]"
CLIENT_NAME = "atelier-krita"
JOB_LOST = "the daemon restarted and no longer has this job; generate again"
SUBMIT_LOST = "the connection to the daemon broke before it took the job; generate again"
PREVIEW_PAUSE_FACTOR = 3      # a step preview that took Krita T s to show: none for 3T s
CANCEL_UNTOLD = (" (the daemon could not be told; whatever it still sends for the job "
                 "is ignored)")

_LORA_FIELD = re.compile(r"(?:job\.)?loras\[(\d+)\](?:\.name)?")
_GUIDE_FIELD = re.compile(r"(?:job\.)?(controls|references|regions)\[(\d+)\].*")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionSettings:
    host: str = "127.0.0.1"
    port: int = 7861
    token: str = ""

    @property
    def url(self) -> str:
        return default_url(self.host, self.port)


@dataclass
class _Work:
    """Pixel work the worker does for a job, taken back in the order it was asked for."""
    kind: str                     # "inputs", "preview" or "result"
    future: "Future[Any]"
    done: Optional[JobDone] = None


@dataclass
class _ActiveJob:
    mode: Mode
    settings: JobSettings
    plan: JobPlan
    document: KritaDocument
    anchor: Any
    request: GenerateRequest
    ref: Optional[str] = None            # set once submitted
    job_id: Optional[str] = None         # set once the daemon accepted it
    clip: Optional[bytes] = None         # region-sized alpha for the result, or None
    connection_lost: bool = False        # the connection broke between submit and accepted
    preview_layer: Any = None
    preview_undo: Optional[str] = None   # Edit > Undo's text right after the preview was added
    step: int = 0
    total: int = 0
    work: "deque[_Work]" = field(default_factory=deque)
    control_row: Any = None              # Mode.CONTROL_IMAGE: the docker's token for its row
    landing: Optional[Landing] = None    # an asset result going into the document
    landed: Optional[Callable[[], None]] = None    # what ends the job once it is in


@dataclass
class _Batch:
    """Results waiting in the preview layer for the painter to pick one: a finished
    batch, or a History entry's results shown again."""
    mode: Mode
    settings: JobSettings
    region: Bounds
    document: KritaDocument
    anchor: Any
    layer: Any
    images: list[ResultImage] = field(default_factory=list)
    index: int = 0
    undo: Optional[str] = None            # Edit > Undo's text right after its layer was added
    history_index: Optional[int] = None   # the History entry shown, if it is one


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
        self.limits: Optional[Limits] = None     # all the daemon's limits, from its welcome
        self.sampler_presets: list[str] = []      # the daemon's, from its welcome
        self.capabilities: list[str] = []         # the daemon's, from its welcome
        # A control row's "Generate from image" made its layer: (the row's token, as
        # make_control_image got it, uniqueId, name).
        self.on_control_layer: Optional[Callable[[Any, str, str], None]] = None
        self.presets_listed = False               # a welcome has said which ones
        self.size_limit: Optional[int] = None    # the painter's "max size" field
        # Why this daemon cannot estimate depth (its answer to a job that asked), or None.
        self.depth_estimate_problem: Optional[str] = None
        self.sent_inputs: dict[str, ImageFrame] = {}
        self.sent_request: Optional[GenerateRequest] = None   # the last job submitted
        # The last finished job's request as the daemon ran it (a preset's steps, ...).
        self.last_params: Optional[GenerateRequest] = None
        # The last landed asset result's seconds on Qt's thread by kind of step
        # (landing.Landing.timings): what a freeze would come from.
        self.last_landing: dict[str, list[float]] = {}
        self._job: Optional[_ActiveJob] = None
        self._queue: "deque[_ActiveJob]" = deque()    # prepared, sent when the running job ends
        self._batch: Optional[_Batch] = None
        self._pumping = False
        self._client_key: Optional[str] = None
        self._abandoned: set[str] = set()        # refs of jobs ended before the daemon took them
        self._next_preview_at = 0.0              # time.monotonic() before which none is shown
        self._worker = PixelWorker()
        # Live painting: the canvas goes to the daemon as img2img after each change.
        self.live = False
        self.live_strength = LIVE_STRENGTH
        self.live_settings: Optional[Callable[[], JobSettings]] = None   # the docker's fields
        self.live_jobs_sent = 0
        self.live_sent_inputs: dict[str, ImageFrame] = {}   # the last live job's uploads
        self._live_debounce = LiveDebounce()
        self._live_results = LiveResults()
        self._live_document: Optional[KritaDocument] = None
        self._live_layer: Any = None
        self._live_undo: Optional[str] = None
        self._live_region: Optional[Bounds] = None
        self._live_shown: Optional[tuple[bytes, Bounds, int, JobSettings]] = None
        self._live_work: "deque[tuple[str, Any, Future[Any]]]" = deque()
        self._live_polled_at = 0.0
        self._live_pending: dict[str, tuple[JobPlan, JobSettings, Optional[bytes]]] = {}
        self._live_jobs: dict[str, tuple[JobPlan, JobSettings, Optional[bytes]]] = {}

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
        self._drop_queue()
        if self._job is not None:
            self._end_job(f"disconnected from the daemon; the job at {self._job.plan.region} "
                          "was abandoned")
        self._abandoned.clear()      # the next connection is a new client
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
    def queued(self) -> int:
        """Jobs waiting in the plugin behind the running one."""
        return len(self._queue)

    @property
    def batch_size(self) -> int:
        return len(self._batch.images) if self._batch is not None else 0

    @property
    def batch_thumbnails(self) -> list[ResultImage]:
        return list(self._batch.images) if self._batch is not None else []

    @property
    def batch_history_index(self) -> Optional[int]:
        return self._batch.history_index if self._batch is not None else None

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
        """Start a job on the current document; False with ``message`` set when refused.
        The job's inputs are prepared on the worker thread and sent from ``pump``."""
        try:
            job = self._start(mode, settings)
        except JobRefused as exc:
            self.message = _sentence(str(exc))
            self._changed()
            return False
        if job is not self._job:
            self.message = f"{mode.label}: queued, {len(self._queue)} waiting"
        else:
            self.message = (f"{mode.label}: sent to the daemon" if job.ref is not None
                            else f"{mode.label}: preparing the canvas\u2026")
        self._changed()
        return True

    def make_control_image(self, settings: JobSettings, row: int, token: Any = None) -> bool:
        """Control row ``row``'s "Generate from image": the control image of its kind made
        by the daemon from the canvas (the selection's region, or all of it), added as a new
        layer; ``on_control_layer`` then gets ``token`` (what names the row to the docker,
        whose rows may change while the job waits). The other control layers stay hidden
        from the canvas read, as for every job."""
        control = replace(settings.guides.controls[row], preprocess=True)
        one = replace(settings, guides=Guides(controls=(control,)), batch_size=1,
                      previews=False)
        try:
            job = self._start(Mode.CONTROL_IMAGE, one, hide=settings.guides)
        except JobRefused as exc:
            self.message = _sentence(str(exc))
            self._changed()
            return False
        job.control_row = row if token is None else token
        self.message = f"Control image: making {control.kind} from the canvas\u2026"
        self._changed()
        return True

    def _start(self, mode: Mode, settings: JobSettings,
               hide: Optional[Guides] = None) -> _ActiveJob:
        if self._job is not None and len(self._queue) >= QUEUE_LIMIT:
            raise JobRefused(f"{QUEUE_LIMIT} jobs are already waiting: wait for them or press "
                             "Cancel")
        if self.client is None or not self.connected:
            raise JobRefused(f"the Atelier daemon is not running or not reachable at "
                             f"{self.connection.url}; {START_HINT}")
        if settings.model and self.models and settings.model not in {m.name for m in self.models}:
            raise JobRefused(_missing_model(settings.model))
        if mode is Mode.DEPTH and settings.depth_model and self.models and \
                settings.depth_model not in {m.name for m in self.models
                                             if m.family in DEPTH_MODEL_KINDS}:
            raise JobRefused(f"the daemon lists no depth model named '{settings.depth_model}': "
                             f"pick one under Depth model, or {DEPTH_MODEL_DEFAULT}")
        listed = {m.name for m in daemon_loras(self.models)}
        missing = [name for name, _ in settings.loras if self.models and name not in listed]
        if missing:
            raise JobRefused(f"the daemon lists no LoRA named '{missing[0]}': pick another "
                             "in its LoRA row, or remove the row")
        if settings.sampler_preset and self.presets_listed and \
                settings.sampler_preset not in self.sampler_presets:
            raise JobRefused(f"the daemon does not know the sampler preset "
                             f"'{settings.sampler_preset}': pick another under Sampler "
                             "preset, or None")
        if mode is Mode.UPSCALE and settings.upscaler and self.models and \
                settings.upscaler not in {m.name for m in self.models if m.kind == "upscaler"}:
            raise JobRefused(f"the daemon lists no upscaler named '{settings.upscaler}': pick "
                             f"one under Upscaler, or {LANCZOS}")
        document = self.document()
        if document is None:
            raise JobRefused("open or create a document first")
        problem = document.format_problem()
        if problem:
            raise JobRefused(problem)
        plan = plan_job(mode, settings, document.extent, document.selection_bounds(),
                        self.resolution_for(settings))
        if plan.scaled_canvas is not None and self.limits is not None:
            problem = upscale_problem(UpscaleLayout(plan.scaled_canvas, plan.placed),
                                      self.limits.max_upscale_side,
                                      self.limits.max_upscale_pixels)
            if problem:
                raise JobRefused(problem)
        self.discard_results()  # an unapplied batch would show up in the canvas we read
        running = self._job
        hidden = (running.preview_layer,) if running is not None and \
            running.document.same_as(document) and running.preview_layer is not None else ()
        if self._live_layer is not None and self._live_document is not None and \
                self._live_document.same_as(document):
            hidden += (self._live_layer,)
        hidden += _control_layers(document, hide or settings.guides)
        read = _read_canvas(document, plan, settings, hidden)
        ids = upload_ids(plan, settings, new_id)
        request = build_request(plan, settings, ids)
        try:
            validate(request, "job")
        except ProtocolError as exc:
            raise JobRefused(f"{exc.field}: {exc.message}") from None
        job = _ActiveJob(mode, settings, plan, document, document.anchor(), request,
                         total=settings.steps)
        if read.empty and running is None:      # nothing to prepare: off it goes
            try:
                self._submit(job, PreparedInputs({}, None))
            except ClientError as exc:
                raise JobRefused(str(exc)) from None
        elif read.empty:
            ready: "Future[Any]" = Future()
            ready.set_result(PreparedInputs({}, None))
            job.work.append(_Work("inputs", ready))
        else:
            job.work.append(_Work("inputs", self._worker.submit(prepare_inputs, read, plan,
                                                                settings, ids)))
        if running is None:
            self._job = job
        else:
            self._queue.append(job)
        return job

    def _start_next(self) -> None:
        """The running job ended: the first queued one (whose document is still open)
        goes; its inputs are sent from ``pump`` once ready."""
        if self._queue and (self.client is None or not self.connected):
            dropped = self._drop_queue()
            self.message += (f"; {dropped} queued job{'s' if dropped > 1 else ''} dropped "
                             "(not connected)")
        while self._job is None and self._queue:
            job = self._queue.popleft()
            if job.document.is_open():
                self._job = job      # its inputs are sent by the next pump
                return

    def _submit(self, job: _ActiveJob, prepared: PreparedInputs) -> None:
        client = self.client
        if client is None:
            raise ClientError(f"not connected to the Atelier daemon at {self.connection.url}; "
                              f"{START_HINT}")
        job.ref = client.submit(job.request, list(prepared.uploads.values()))
        job.clip = prepared.clip
        self.sent_inputs = prepared.uploads
        self.sent_request = job.request

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
        """End the running job now. The daemon is told when it can be; a job it has not
        taken yet is cancelled as soon as it does."""
        job = self._job
        if job is None:
            return
        if job.landing is not None and job.landing.running:
            # Cancel pressed while Krita scales the image or adds the layer (its calls run
            # Qt's events as they wait): Krita cannot be stopped there, the result lands.
            self.message = (f"{job.mode.label}: Krita is placing the result and cannot be "
                            "stopped now; Edit > Undo takes it back")
            self._changed()
            return
        dropped = self._drop_queue()
        # a result being placed: the daemon has finished the job, there is nothing to tell
        told = job.landing is not None or self._stop_on_daemon(job)
        self._end_job("cancelled" if told else "cancelled" + CANCEL_UNTOLD, outcome="cancelled")
        if dropped:
            self.message += f"; {dropped} queued job{'s' if dropped > 1 else ''} dropped"
        self._changed()

    def _drop_queued_on(self, document: KritaDocument) -> int:
        """Drop the queued jobs of ``document``; returns how many."""
        kept: "deque[_ActiveJob]" = deque()
        dropped = 0
        for job in self._queue:
            if job.document.same_as(document):
                for work in job.work:
                    work.future.cancel()
                dropped += 1
            else:
                kept.append(job)
        self._queue = kept
        return dropped

    def _drop_queue(self) -> int:
        queued, self._queue = self._queue, deque()
        for job in queued:
            for work in job.work:
                work.future.cancel()
        return len(queued)

    def rerun(self, index: int) -> bool:
        entry = self.history[index]
        return self.start(entry.mode, entry.settings)

    def select_result(self, index: int) -> None:
        batch = self._batch
        if batch is None or not self._batch_document_open(batch):
            return
        if not 0 <= index < len(batch.images):
            raise IndexError(f"result {index} of a batch of {len(batch.images)}")
        batch.index = index
        image = batch.images[index]
        layer = _show(batch.document, batch.layer,
                      _preview_name(index, len(batch.images), image.seed), image.bgra,
                      batch.region, batch.anchor)
        if layer is not batch.layer:
            batch.layer, batch.undo = layer, batch.document.undo_text()
            if batch is not self._batch:      # discarded while Krita added the layer
                batch.document.take_back_layer(layer, batch.undo)
                return
        self._changed()

    def show_history(self, index: int) -> bool:
        """Show History entry ``index``'s results in the preview layer of the document in
        front, at the place they were made, to pick one and Apply it (or Discard);
        False with ``message`` set when it has none left or there is no document."""
        entry = self.history[index]
        if not entry.has_pixels:
            self.message = ("that job left no results to show" if not entry.images else
                            "History keeps only the newest results' pixels; Run again "
                            "makes this one again")
            self._changed()
            return False
        document = self.document()
        if document is None:
            self.message = "open or create a document first"
            self._changed()
            return False
        if self._batch is not None and self._batch.history_index == index and \
                self._batch.document.same_as(document):
            return True
        self.discard_results()
        region = entry.region.clamped(document.extent)
        if region != entry.region:
            self.message = (f"that result covers {entry.region}, outside this "
                            f"{document.extent.width}x{document.extent.height} document")
            self._changed()
            return False
        images = [image for image in entry.images if image.bgra]
        self._batch = _Batch(entry.mode, entry.settings, region, document, document.anchor(),
                             None, images, history_index=index)
        self.select_result(0)
        self.message = (f"History: {len(images)} result{'s' if len(images) > 1 else ''} "
                        "shown; double-click or Apply keeps one")
        self._changed()
        return True

    def apply_result(self) -> Any:
        """Keep the shown batch result as a layer of its own; returns that layer.

        The preview layer itself becomes the result (renamed, its pixels left as
        shown), so Apply adds no step of its own to the undo history.
        """
        batch = self._batch
        if batch is None or not self._batch_document_open(batch):
            return None
        image = batch.images[batch.index]
        seed = image.seed
        self._batch = None
        node = _show(batch.document, batch.layer, layer_name(batch.settings.prompt, seed),
                     image.bgra, batch.region, batch.anchor)
        self.message = f"applied result {batch.index + 1} (seed {seed})"
        self._changed()
        return node

    def discard_results(self) -> None:
        batch, self._batch = self._batch, None
        if batch is not None:
            if batch.document.is_open():
                batch.document.take_back_layer(batch.layer, batch.undo)
            self._changed()

    # ------------------------------------------------------------ events and work
    @property
    def pumping(self) -> bool:
        """A pump is running and this is a call from inside it: Krita's heavier calls (a
        layer shown, a projection refreshed) run Qt's events while they wait, so the
        docker's timer, a click or a test's timer can come in mid-pump."""
        return self._pumping

    def pump(self, limit: int = 100) -> int:
        """Handle up to ``limit`` queued events and the pixel work that is done, on this
        (Qt's) thread; returns how many events. A pump called from inside one (``pumping``)
        does nothing: the outer one is halfway through a change."""
        if self._pumping:
            return 0
        self._pumping = True
        try:
            handled = self._drain_events(limit)
            collected = self._collect_work()
            collected = self._advance_landing() or collected
            if self.live:
                collected = self._guarded_live(self._live_tick) or collected
            closed = self._check_documents()
        finally:
            self._pumping = False
        if handled or collected or closed:
            self._changed()
        return handled

    def _drain_events(self, limit: int) -> int:
        client = self.client
        handled = 0
        while client is not None and handled < limit:
            try:
                event = client.events.get_nowait()
            except queue.Empty:
                break
            handled += 1
            self._guarded(lambda: self._handle(event), "Could not use the daemon's answer")
        return handled

    def _guarded(self, action: Callable[[], None], failure: str) -> None:
        """One error boundary per event and per finished piece of work: what goes wrong
        ends the job it concerns, with the reason shown and logged; the docker goes on."""
        try:
            action()
        except DocumentClosed as exc:
            self._end_job(_closed_text(str(exc), self._job))
        except (ProtocolError, ValueError, ClientError) as exc:
            log.warning("%s: %s", failure, exc)
            self._fail(f"{failure}: {exc}")
        except Exception as exc:  # a bug: shown and logged with its traceback, never lost
            log.exception("Atelier: %s", failure)
            self._fail(f"{failure}: the Atelier plugin failed ({type(exc).__name__}: {exc}); "
                       "the job was stopped")

    def _fail(self, message: str) -> None:
        self._end_job(message)
        self.message = message

    def _handle(self, event: Any) -> None:
        if self._handle_connection(event):
            return
        if self._live_event(event):
            return
        job = self._job
        if isinstance(event, (Accepted, Error)) and event.ref and event.ref in self._abandoned:
            self._abandoned.discard(event.ref)
            if isinstance(event, Accepted):   # a job cancelled before the daemon took it
                self._tell_cancel(event.job_id)
        elif job is None or not _belongs_to(event, job):
            if isinstance(event, Error) and not event.job_id and not event.ref:
                self.loading_model = None
                self.message = _error_text(event, None)
        else:
            self._handle_job_event(job, event)

    def _handle_connection(self, event: Any) -> bool:
        """Events about the connection and the models; False for anything else."""
        job = self._job
        if isinstance(event, Connected):
            self.connected = True
            welcome = event.welcome
            self.max_side = welcome.limits.max_side
            self.limits = welcome.limits
            self.sampler_presets = list(welcome.sampler_presets)
            self.capabilities = list(welcome.capabilities)
            self.presets_listed = True
            self.current_model = welcome.model
            self.depth_estimate_problem = None   # perhaps another daemon, or it has one now
            self.connection_text = (f"connected to {self.connection.url} ({welcome.device}, "
                                    f"model {welcome.model or 'none loaded'})")
            self._list_models()
            if job is not None and job.connection_lost and job.job_id is None:
                self._end_job(_sentence(SUBMIT_LOST))
        elif isinstance(event, Disconnected):
            self.connected = False
            self.connection_text = _sentence(event.reason)
            if job is not None and not event.will_retry:
                self._end_job(_sentence(event.reason))
            elif job is not None and job.ref is not None and job.job_id is None:
                job.connection_lost = True
        elif isinstance(event, Models):
            self.models = list(event.models)
            self.current_model = event.current
        elif isinstance(event, ModelLoaded):
            self.current_model = event.model
            self.loading_model = None
            self.message = f"model {event.model} loaded ({event.family}, {event.seconds:.1f} s)"
        else:
            return False
        return True

    def _handle_job_event(self, job: _ActiveJob, event: Any) -> None:
        if isinstance(event, Accepted):
            job.job_id = event.job_id
            self.message = ("queued" if event.position else "starting") + "\u2026"
        elif isinstance(event, Started):
            self.message = f"{job.mode.label}: running"
        elif isinstance(event, Progress):
            job.step, job.total = event.step, event.total
        elif isinstance(event, PreviewImage):
            self._queue_preview(job, event.image)
        elif isinstance(event, JobDone):
            self._queue_result(job, event)
        elif isinstance(event, Cancelled) and is_superseded(event):
            self._end_job("replaced by a newer live job", outcome="superseded")
        elif isinstance(event, Cancelled):
            self._end_job("cancelled", outcome="cancelled")
        elif isinstance(event, Error):
            self._job_error(job, event)

    def _job_error(self, job: _ActiveJob, error: Error) -> None:
        if error.code == ErrorCode.UNKNOWN_JOB:
            self._end_job(_sentence(JOB_LOST))
            return
        if error.code == ErrorCode.MODEL_NOT_FOUND and \
                error.field in ("depth.estimate", "job.depth.estimate"):
            self.depth_estimate_problem = error.message
        self._end_job(_error_text(error, job.settings))
        if error.ref:
            self._abandoned.discard(error.ref)   # refused: there is nothing left to cancel

    def _queue_preview(self, job: _ActiveJob, frame: ImageFrame) -> None:
        # Only the newest step is worth showing: one that has not started yet is dropped.
        if job.work and job.work[-1].kind == "preview" and job.work[-1].future.cancel():
            job.work.pop()
        job.work.append(_Work("preview", self._worker.submit(layer_pixels, frame,
                                                             job.plan.region, job.clip)))

    def _queue_result(self, job: _ActiveJob, done: JobDone) -> None:
        for work in job.work:
            if work.kind == "preview":
                work.future.cancel()     # the result shows instead
        if job.mode in (Mode.UPSCALE, Mode.TEXTURE):
            future = self._worker.submit(asset_images, done, job.plan.placed)
        else:
            future = self._worker.submit(finished_images, done, job.plan.region, job.clip)
        job.work.append(_Work("result", future, done))

    def _collect_work(self) -> bool:
        """Apply the active job's finished pixel work in the order it was asked for, but
        at most one write into the document a pump (each makes Krita recomposite the
        image), skipping step previews that a newer one or the result replaces, and
        pausing step previews after a slow one."""
        job = self._job
        applied = False
        while job is not None and job is self._job and job.work and job.work[0].future.done():
            work = job.work[0]
            stale = work.future.cancelled() or (work.kind == "preview" and _superseded(job.work))
            if not stale and work.kind == "preview" and time.monotonic() < self._next_preview_at:
                break
            job.work.popleft()
            if stale:
                continue
            failure = ("Could not prepare the canvas" if work.kind == "inputs"
                       else "Could not use the daemon's answer")
            self._guarded(lambda: self._apply(job, work), failure)
            applied = True
            if work.kind != "inputs":
                break
        return applied

    def _apply(self, job: _ActiveJob, work: _Work) -> None:
        result = work.future.result()          # raises what the worker raised
        if work.kind == "inputs":
            self._submit(job, result)
            self.message = f"{job.mode.label}: sent to the daemon"
        elif work.kind == "preview":
            started = time.monotonic()
            layer = _show(job.document, job.preview_layer, PREVIEW_LAYER, result,
                          job.plan.region, job.anchor)
            if layer is not job.preview_layer:
                undo = job.document.undo_text()
                if job is not self._job:
                    # Ended (Cancel) while Krita added the layer: adding one runs Qt's
                    # events until Krita is done, so the painter's shortcut can come first.
                    job.document.take_back_layer(layer, undo)
                    return
                job.preview_layer, job.preview_undo = layer, undo
            # Krita recomposites the whole image for every write: on a large canvas, step
            # previews must not take most of Qt's thread.
            now = time.monotonic()
            self._next_preview_at = now + PREVIEW_PAUSE_FACTOR * (now - started)
        else:
            assert work.done is not None
            self._finish(job, work.done, result)

    def _finish(self, job: _ActiveJob, done: JobDone, images: list[Any]) -> None:
        """``images``: ResultImages, or for an upscale or a texture set AssetImages."""
        if not images:
            self._end_job("the daemon finished the job without images")
            return
        if job.mode in (Mode.UPSCALE, Mode.TEXTURE):
            self._finish_asset(job, done, images)
            return
        if job.mode is Mode.CONTROL_IMAGE:
            self._finish_control_image(job, done, images[0])
            return
        seeds = [image.seed for image in images]
        document, region = job.document, job.plan.region
        # The step previews' layer (if any) goes on to show the result.
        layer, job.preview_layer = job.preview_layer, None
        if len(images) == 1:
            _show(document, layer, layer_name(job.settings.prompt, seeds[0]), images[0].bgra,
                  region, job.anchor)
            text = f"{job.mode.label}: done, seed {seeds[0]}"
        else:
            self._job = None            # the docker shows the batch, not the job's progress
            self.discard_results()      # an older batch nobody picked from: History has it
            self._batch = _Batch(job.mode, job.settings, region, document, job.anchor, layer,
                                 list(images), undo=job.preview_undo)
            self.select_result(0)
            text = f"{job.mode.label}: {len(images)} results; pick one and press Apply"
        self._job = None
        self.current_model = done.result.model   # a job's model stays loaded after it
        self.last_params = done.result.params
        self.message = text
        self.history.add(HistoryEntry(job.mode, job.settings.with_seed(seeds[0]), region, "done",
                                      tuple(seeds), done.result.seconds, images=tuple(images)))
        if self._batch is not None and self._batch.history_index is not None:
            self._batch.history_index += 1      # History's rows moved down by one
        self._start_next()

    def _finish_control_image(self, job: _ActiveJob, done: JobDone, image: ResultImage) -> None:
        """A control image: a new layer above the active one (one undo step), given to its
        control row. History keeps no entry: it is an input, not a picture."""
        (control,) = job.settings.guides.controls
        name = control_layer_name(control.kind)
        node = job.document.add_layer(name, image.bgra, job.plan.region, job.anchor)
        self._job = None
        self.last_params = done.result.params
        self.message = f"Control image: '{name}' added; edit it, the row uses it"
        if self.on_control_layer is not None and job.control_row is not None:
            self.on_control_layer(job.control_row, node.uniqueId().toString(), name)
        self._start_next()

    def _finish_asset(self, job: _ActiveJob, done: JobDone, images: list[AssetImage]) -> None:
        """An upscale (the image scaled as Image > Scale does, then the upscaled pixels in
        a new layer on top) or a texture set (a new group on top, a layer a map). The
        result lands a slice a pump (landing.py), from this one on; the job ends once it
        is in."""
        document, plan, settings = job.document, job.plan, job.settings
        dropped = [0]
        if plan.scaled_canvas is not None:
            canvas = plan.scaled_canvas

            def scaling() -> None:
                if canvas != document.extent:
                    # jobs queued on this image were planned in its old pixels
                    dropped[0] = self._drop_queued_on(document)

            name = upscale_layer_name(plan.placed.extent, settings.upscaler,
                                      settings.refine_strength)
            job.landing = upscale_landing(document, name, images[0].bands, canvas,
                                          document.top_node, scaling)
            text = (f"Upscale: done, {plan.region.extent} -> {plan.placed.extent}"
                    f" (the image is now {canvas})")
        else:
            labels = map_layer_names([image.label for image in images])
            group = texture_group_name(settings.prompt, document.name)
            job.landing = group_landing(document, group, [(label, image.bands) for label, image
                                                          in zip(labels, images)],
                                        document.top_node)
            text = f"Texture set: done, {', '.join(labels)} in '{group}'"

        def landed() -> None:
            message = text
            if dropped[0]:
                message += (f"; {dropped[0]} queued job{'s' if dropped[0] > 1 else ''} "
                            "dropped: made on the image before it was scaled")
            self._job = None
            self.last_params = done.result.params
            self.message = message
            seeds = tuple(image.result.seed for image in images)
            # History keeps thumbnails only: these results are not a picture for the region.
            self.history.add(HistoryEntry(job.mode, settings, plan.region, "done", seeds,
                                          done.result.seconds,
                                          images=tuple(image.result for image in images)))
            if self._batch is not None and self._batch.history_index is not None:
                self._batch.history_index += 1
            self._start_next()

        job.landed = landed
        self.message = f"{job.mode.label}: placing the result in the document\u2026"

    def _advance_landing(self) -> bool:
        """A slice of the running job's landing, if it has one; whether it did some."""
        job = self._job
        landing = job.landing if job is not None else None
        if job is None or landing is None:
            return False
        if landing.next_note:
            # Krita's long calls run Qt's events while they wait: the docker shows this
            self.message = f"{job.mode.label}: {landing.next_note}"
            self._changed()

        def advance() -> None:
            if landing.advance() and job is self._job and job.landed is not None:
                job.landing, landed, job.landed = None, job.landed, None
                self.last_landing = landing.timings()
                landed()

        self._guarded(advance, "Could not place the result in the document")
        if job is self._job and job.landing is not None:
            done, total = landing.progress
            job.step, job.total = done, total
        return True

    def _check_documents(self) -> bool:
        """End the job, or drop the batch, whose document the painter closed."""
        job, batch = self._job, self._batch
        if job is not None and not job.document.is_open():
            self._stop_on_daemon(job)
            self._end_job(_closed_text(f"the document '{job.document.name}' was closed", job))
            return True
        return batch is not None and not self._batch_document_open(batch)

    def _batch_document_open(self, batch: _Batch) -> bool:
        if batch.document.is_open():
            return True
        self._batch = None
        self.message = (f"The document '{batch.document.name}' was closed with its "
                        f"{len(batch.images)} results; they were dropped")
        self._changed()
        return False

    def _list_models(self) -> None:
        try:
            if self.client is not None:
                self.client.list_models()
        except ClientError:
            pass     # the connection broke again: the next Connected asks again

    def _stop_on_daemon(self, job: _ActiveJob) -> bool:
        """Tell the daemon to stop ``job``; False when it cannot be told. One it has not
        taken yet needs no telling now: ``_end_job`` keeps its ref, and it is cancelled
        when the daemon takes it."""
        if job.job_id is not None:
            return self._tell_cancel(job.job_id)
        return job.ref is None or (self.client is not None and self.client.connected)

    def _tell_cancel(self, job_id: str) -> bool:
        """Ask the daemon to cancel ``job_id``; False when it cannot be told."""
        client = self.client
        if client is None:
            return False
        try:
            client.cancel(job_id)
        except ClientError:
            return False
        return True

    def _drop_preview(self, job: _ActiveJob) -> None:
        if job.preview_layer is not None:
            if job.document.is_open():
                job.document.take_back_layer(job.preview_layer, job.preview_undo)
            job.preview_layer = None

    def _end_job(self, message: str, outcome: Optional[str] = None) -> None:
        job, self._job = self._job, None
        if job is None:
            return
        for work in job.work:
            work.future.cancel()
        if job.ref is not None and job.job_id is None:
            self._abandoned.add(job.ref)      # cancel it if the daemon takes it after all
        self._drop_preview(job)
        self.message = message
        self.history.add(HistoryEntry(job.mode, job.settings, job.plan.region,
                                      outcome or message))
        if self._batch is not None and self._batch.history_index is not None:
            self._batch.history_index += 1
        self._start_next()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # ------------------------------------------------------------ live painting
    def set_live(self, on: bool) -> None:
        """Live on: every change of the canvas (or the selection's region) goes to the
        daemon as img2img at ``live_strength`` after a short debounce, its result shown in
        one live layer above the work. Off: the running live job is cancelled and the live
        layer removed."""
        if on == self.live:
            return
        self.live = on
        self._live_debounce.reset()
        if on:
            self.message = "Live: on; paint and the result follows"
        else:
            job_id = self._live_results.newest_id()
            if job_id is not None:
                self._tell_cancel(job_id)
            accepted = set(self._live_results.by_id.values())
            for ref, number in self._live_results.by_ref.items():
                if number not in accepted:
                    self._abandoned.add(ref)     # cancelled if the daemon takes it after all
            self._live_results.clear()
            self._live_pending.clear()
            self._live_jobs.clear()
            for _, _, future in self._live_work:
                future.cancel()
            self._live_work.clear()
            self._drop_live_layer()
            self._live_document = None
            self._live_shown = None
            self.message = "Live: off"
        self._changed()

    @property
    def live_running(self) -> bool:
        return self._live_results.running

    @property
    def live_idle(self) -> bool:
        """Live is on and has nothing waiting: no change to send, no job out, no work."""
        return self.live and not self._live_debounce.pending and not self._live_work and \
            not self._live_results.running

    @property
    def live_shows_newest(self) -> bool:
        """The live layer shows the result of the newest state sent."""
        return self._live_results.shows_newest

    @property
    def live_layer(self) -> Any:
        return self._live_layer

    def apply_live(self) -> Any:
        """Copy the live result shown into a new normal layer (below the live layer);
        returns that layer, or None when there is none."""
        shown, document = self._live_shown, self._live_document
        if shown is None or document is None or not document.is_open():
            self.message = "Live: no result to apply yet"
            self._changed()
            return None
        bgra, region, seed, settings = shown
        below = self._live_layer if self._live_layer is not None and \
            document.has_layer(self._live_layer) else None
        anchor = _node_below(below) if below is not None else document.anchor()
        node = document.add_layer(layer_name(settings.prompt, seed), bgra, region,
                                  anchor if anchor is not None else document.anchor())
        self.message = f"Live: applied (seed {seed})"
        self._changed()
        return node

    def _guarded_live(self, action: Callable[[], bool]) -> bool:
        try:
            return action()
        except DocumentClosed:
            self.set_live(False)
            self.message = "Live: the document was closed; Live is off"
        except JobRefused as exc:
            self.message = "Live: " + str(exc)
        except (ProtocolError, ValueError, ClientError) as exc:
            log.warning("Live: %s", exc)
            self.message = f"Live: {exc}"
        except Exception as exc:
            log.exception("Atelier: live")
            self.message = f"Live: the Atelier plugin failed ({type(exc).__name__}: {exc})"
        return True

    def _live_tick(self) -> bool:
        document = self._live_document
        if document is not None and not document.is_open():
            self._drop_live_layer()
            self._live_document = None
            self._live_shown = None
            self._live_debounce.reset()
            document = None
        if document is None:
            document = self.document()
            if document is None:
                return False
            self._live_document = document
        now = time.monotonic()
        if now - self._live_polled_at >= LIVE_POLL_S:
            self._live_polled_at = now
            self._live_debounce.observe(document.pixels_checksum(self._live_layer), now)
        acted = False
        if self.connected and self.client is not None and self._live_debounce.due(now):
            self._live_start(document)
            acted = True
        return self._live_collect() or acted

    def _live_start(self, document: KritaDocument) -> None:
        problem = document.format_problem()
        if problem:
            raise JobRefused(problem)
        base = self.live_settings() if self.live_settings is not None else JobSettings()
        settings = replace(base, strength=self.live_strength, batch_size=1, previews=False)
        plan = plan_job(Mode.REFINE, settings, document.extent, document.selection_bounds(),
                        self.resolution_for(settings))
        hidden = (self._live_layer,) if self._live_layer is not None else ()
        if self._job is not None and self._job.preview_layer is not None and \
                self._job.document.same_as(document):
            hidden += (self._job.preview_layer,)
        hidden += _control_layers(document, settings.guides)
        read = _read_canvas(document, plan, settings, hidden)
        ids = upload_ids(plan, settings, new_id)
        request = build_request(plan, settings, ids)
        validate(request, "job")
        future = self._worker.submit(prepare_inputs, read, plan, settings, ids)
        self._live_work.append(("inputs", (request, plan, settings), future))

    def _live_collect(self) -> bool:
        acted = False
        while self._live_work and self._live_work[0][2].done():
            kind, info, future = self._live_work.popleft()
            if future.cancelled():
                continue
            result = future.result()
            if kind == "inputs":
                request, plan, settings = info
                client = self.client
                if client is None:
                    continue
                ref = client.submit(request, list(result.uploads.values()), live=LIVE_SESSION)
                self._live_results.sent(ref)
                self.live_sent_inputs = result.uploads
                self._live_pending[ref] = (plan, settings, result.clip)
                self.live_jobs_sent += 1
                acted = True
            else:
                job_id, plan, settings, done = info
                if result and self._live_results.should_show(job_id):
                    self._live_write(result[0].bgra, plan.region, result[0].seed, settings)
                    acted = True
                self._live_results.ended(job_id)
                break            # one write into the document a pump
        return acted

    def _live_event(self, event: Any) -> bool:
        """Handle an event of a live job; False when it is not one."""
        results = self._live_results
        ref = getattr(event, "ref", None) if isinstance(event, (Accepted, Error)) else None
        job_id = getattr(event, "job_id", None)
        if not results.owns(job_id, ref):
            return False
        if isinstance(event, Accepted):
            results.accepted(event.ref, event.job_id)
            if event.ref in self._live_pending:
                self._live_jobs[event.job_id] = self._live_pending.pop(event.ref)
        elif isinstance(event, JobDone):
            plan, settings, clip = self._live_jobs.pop(event.job_id, (None, None, None))
            if plan is not None:
                future = self._worker.submit(finished_images, event, plan.region, clip)
                self._live_work.append(("result", (event.job_id, plan, settings, event), future))
            self.current_model = event.result.model
        elif isinstance(event, Cancelled):
            # superseded by a newer state (or Live turned off): not the painter's cancel
            self._live_jobs.pop(event.job_id, None)
            results.ended(event.job_id)
        elif isinstance(event, Error):
            if job_id is not None:
                self._live_jobs.pop(job_id, None)
                results.ended(job_id)
            if ref is not None:
                self._live_pending.pop(ref, None)
                results.by_ref.pop(ref, None)
            self.message = "Live: " + _error_text(event, None)
        return True

    def _live_write(self, bgra: bytes, region: Bounds, seed: int, settings: JobSettings) -> None:
        document = self._live_document
        if document is None or not document.is_open() or not self.live:
            return
        layer = self._live_layer
        if layer is not None and document.has_layer(layer):
            old = self._live_region
            if old is not None and old != region:
                document.write_layer(layer, bytes(old.width * old.height * 4), old)
            document.write_layer(layer, bgra, region)
        else:
            layer = document.add_layer(LIVE_LAYER, bgra, region, document.top_node())
            self._live_layer, self._live_undo = layer, document.undo_text()
        self._live_region = region
        self._live_shown = (bgra, region, seed, settings)
        self.message = f"Live: updated (seed {seed})"

    def _drop_live_layer(self) -> None:
        layer, self._live_layer = self._live_layer, None
        document = self._live_document
        if layer is not None and document is not None and document.is_open():
            document.take_back_layer(layer, self._live_undo)
        self._live_undo = None
        self._live_region = None

    def close(self) -> None:
        self.set_live(False)
        self.discard_results()
        self.disconnect()
        self._worker.close()


def _read_canvas(document: KritaDocument, plan: JobPlan, settings: JobSettings,
                 hidden: tuple[Any, ...] = ()) -> CanvasRead:
    """What a job needs from the document (Krita's API: Qt's thread; quick copies)."""
    region = plan.region
    selection = canvas = depth = None
    if plan.send_mask or plan.clip_to_selection:
        selection = document.selection_mask(region)
        if is_empty_mask(selection):
            raise JobRefused("the selection is empty: select the area to work on")
    if plan.send_image:
        canvas = document.read_canvas(region, hidden)
    if plan.send_depth:
        assert settings.depth_layer is not None
        depth = document.read_layer(settings.depth_layer, region)
    if not plan.mode.guided:
        return CanvasRead(selection, canvas, depth)
    guides = settings.guides
    controls = []
    for number, row in enumerate(guides.controls, 1):
        what = f"control layer {number}"
        if row.layer == SELECTION:
            mask = document.selection_mask(region)
            if is_empty_mask(mask):
                raise JobRefused(f"{what} is the selection, and nothing is selected here")
            controls.append(mask)
        else:
            controls.append(document.read_node(row.layer, region, what))
    references = []
    for number, ref in enumerate(guides.references, 1):
        if ref.path:
            references.append(ReferenceRead(path=ref.path))
        else:
            bgra, bounds = document.read_whole_node(ref.layer, f"reference {number}")
            references.append(ReferenceRead(bgra, bounds.extent))
    regions = tuple(document.read_node(row.layer, region, f"region {number}")
                    for number, row in enumerate(guides.regions, 1))
    return CanvasRead(selection, canvas, depth, tuple(controls), tuple(references), regions)


def _control_layers(document: KritaDocument, guides: Guides) -> tuple[Any, ...]:
    """The control rows' layers: hidden while a job reads the canvas (they steer, they are
    not part of the picture)."""
    nodes = (document.node(row.layer) for row in guides.controls if row.layer != SELECTION)
    return tuple(node for node in nodes if node is not None)


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


def _node_below(node: Any) -> Any:
    """The sibling just below ``node`` (new layers placed above it go under ``node``)."""
    parent = node.parentNode()
    if parent is None:
        return None
    siblings = parent.childNodes()
    for index, child in enumerate(siblings):
        if child.uniqueId() == node.uniqueId():
            return siblings[index - 1] if index > 0 else None
    return None


def _superseded(work: "deque[_Work]") -> bool:
    """Whether the step preview first in ``work`` is replaced by what follows it: the
    result, or a newer step preview that is ready."""
    return any(later.kind == "result" or (later.kind == "preview" and later.future.done())
               for later in islice(work, 1, None))


def _belongs_to(event: Any, job: _ActiveJob) -> bool:
    if isinstance(event, (Accepted, Error)) and event.ref and event.ref == job.ref:
        return True
    job_id = getattr(event, "job_id", None)
    return job_id is not None and job_id == job.job_id


def _preview_name(index: int, count: int, seed: int) -> str:
    return f"{PREVIEW_LAYER} {index + 1}/{count} seed {seed}"


def _closed_text(what: str, job: Optional[_ActiveJob]) -> str:
    stopped = f"; its {job.mode.label} job was stopped" if job is not None else ""
    return _sentence(what + stopped)


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
    guide = _GUIDE_FIELD.fullmatch(error.field or "")
    if guide is not None and settings is not None:
        what, index = guide.group(1), int(guide.group(2))
        rows = getattr(settings.guides, what)
        if index < len(rows):
            label = {"controls": "control layer", "references": "reference",
                     "regions": "region"}[what]
            extra = f" ({rows[index].kind})" if what == "controls" else ""
            return (f"The daemon answered {error.code} for {label} {index + 1}{extra} "
                    f"[{error.field}]: {error.message}")
    lora = _lora_of_field(error.field, settings)
    if lora is not None:
        return (f"The daemon answered {error.code} for LoRA '{lora}': "
                f"{error.message.rstrip('.')}. Pick another in its LoRA row, or remove it")
    where = f" [{error.field}]" if error.field else ""
    return f"The daemon answered {error.code}{where}: {error.message}"


def _lora_of_field(field: Optional[str], settings: Optional[JobSettings]) -> Optional[str]:
    """The LoRA an error's field (``job.loras[i].name``) names, if the job had it."""
    match = _LORA_FIELD.fullmatch(field or "")
    if match is None or settings is None:
        return None
    index = int(match.group(1))
    return settings.loras[index][0] if index < len(settings.loras) else None


__all__ = ["Controller", "ConnectionSettings", "PREVIEW_LAYER"]
