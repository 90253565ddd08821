"""The add-on's live side: one protocol client, the jobs in flight, and the event pump.

Network I/O runs on the client's background threads; :meth:`Session.pump`
runs on Blender's main thread (from a ``bpy.app.timers`` callback, or from a
test driving it with :meth:`Session.pump_until_idle`) and is the only place
where daemon events turn into Blender data.
"""

from __future__ import annotations

import enum
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import bpy

from . import assets, host, settings
from .live import LiveMode
from .pacing import Throttle
from .protocol import ErrorCode, GenerateRequest, ImageFrame
from .protocol.client import START_HINT, AtelierClient, ClientError, default_url
from .protocol.events import Connected, Disconnected, JobDone, PreviewImage
from .protocol.messages import (Accepted, Cancelled, Error, Limits, Models, ModelLoaded,
                                Progress, Result, Started, Status)

CLIENT_NAME = "atelier-blender"
ACTIVE_INTERVAL = 0.1   # seconds between pumps while a job runs
IDLE_INTERVAL = 0.5
KEEP_FINISHED = 20      # finished jobs kept for the panel
# At most this often (seconds) the add-on's regions are redrawn and the latest preview is
# written, and rarer where drawing is slow: each waits until what Blender drew after the
# last one takes at most REDRAW_SHARE of the main thread's time (but at most 2 s). With
# software OpenGL any redraw costs about 0.1 s, and writing an image's pixels also makes
# Blender redraw every 3D Viewport (0.25 s to over a second).
REDRAW_INTERVAL = 0.25
# What a job's finish left to do (it returned an iterator) runs in slices of about this
# many seconds, one slice a pump, so Blender keeps answering in between.
FINISH_SLICE = 0.05
REDRAW_SHARE = 0.25
# What a job says when the daemon lost it (it was killed or restarted: fetch found nothing)
# or stopped it while shutting down.
RESTARTED = "the daemon restarted and no longer has this job; generate again"
SHUT_DOWN = "the daemon shut down and stopped this job; generate again"
REFETCHING = "reconnected; asking the daemon for this job"


class JobState(enum.Enum):
    PREPARING = "preparing"                 # its request and uploads are still being made
    WAITING = "waiting for the daemon"      # not sent yet: no connection so far
    SENT = "sent"
    QUEUED = "queued"
    RUNNING = "running"
    RECONNECTING = "connection lost; resumes when the daemon is back"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


@dataclass
class Job:
    """One generation the add-on asked for, and the datablocks it made so far.

    ``finish`` runs on the main thread with the result images, once all
    pixels are in (apply a material, project onto objects ...). ``uploads``
    (what was sent: render, depth) are kept until the job ends.
    """
    label: str
    request: GenerateRequest
    uploads: Sequence[ImageFrame]
    scene_name: str
    finish: Optional[Callable[["Job", list[Any]], None]] = None
    ref: str = ""
    job_id: Optional[str] = None
    state: JobState = JobState.WAITING
    step: int = 0
    total: int = 0
    message: str = ""
    cancel_requested: bool = False
    image_names: list[str] = field(default_factory=list)   # made by this job, in batch order
    images_as_files: bool = False   # results saved as PNGs beside the .blend, not packed
    preview: Optional[ImageFrame] = None   # the latest preview, not written yet
    note: str = ""                  # told when sent, and again in the line of a done job
    result: Optional[Result] = None   # the daemon's account of what it ran
    # The name of each result image from its label (ImageInfo.label: a texture set's map,
    # "upscaled"); None: named after prompt and seed
    name_for: Optional[Callable[[Optional[str]], str]] = None
    # Runs on the main thread when the job ends other than done (failed, cancelled), after
    # its images are gone: a caller that changed the scene for it puts it back
    ended: Optional[Callable[["Job"], None]] = None
    # What ``finish`` left to do, when it returned an iterator: stepped by the pump a slice
    # at a time (each step short); the job is done when it is exhausted
    finishing: Optional[Iterator[Any]] = None
    # What makes the job's request and uploads, when they take long to make (renders,
    # rasterising): stepped by the pump a slice at a time, like ``finishing``, while the
    # job is PREPARING; it sets ``request`` and ``uploads`` and the job is sent when it is
    # exhausted
    preparing: Optional[Iterator[Any]] = None

    @property
    def progress_text(self) -> str:
        if self.state == JobState.RUNNING and self.total:
            return f"{self.label}: step {self.step}/{self.total}"
        return f"{self.label}: {self.message or self.state.value}"


class Session:
    """The add-on's connection to one daemon and the jobs sent through it."""

    def __init__(self) -> None:
        self._client: Optional[AtelierClient] = None
        self._address: Optional[tuple[str, str]] = None
        self.jobs: list[Job] = []
        self.connection_text = "not connected"
        self.connection_ok = False
        self.status: Optional[Status] = None
        self.limits: Optional[Limits] = None   # the daemon's, from its welcome
        self.models: list[str] = []
        self.conditioners: list[tuple[str, str]] = []   # depth models: (name, family)
        # The other pass controls' models (normal, lineart): kind -> [(name, family)]
        self.pass_conditioners: dict[str, list[tuple[str, str]]] = {}
        self.models_listed = False   # whether ``models`` and ``conditioners`` came from it
        self.loras: list[tuple[str, str]] = []           # the daemon's LoRAs: (name, family)
        self.upscalers: list[str] = []                   # the daemon's upscaler models
        self.model_families: dict[str, str] = {}         # checkpoint name -> family
        self.current_model: Optional[str] = None         # the daemon's loaded model
        self.sampler_presets: list[str] = []             # welcome.sampler_presets
        self.capabilities: tuple[str, ...] = ()          # welcome.capabilities (connected)
        self.last_failure: Optional[str] = None
        self._on_connect: list[Callable[[AtelierClient], Any]] = []
        self._redraw = Throttle(REDRAW_INTERVAL, REDRAW_SHARE)
        self._previews = Throttle(REDRAW_INTERVAL, REDRAW_SHARE)
        self._drawn_for: Optional[Throttle] = None   # what the last pump set off, if anything
        self._redraw_due = False
        self._pumped_at: Optional[float] = None   # when the last pump ended
        self._next_tick = ACTIVE_INTERVAL         # and how long after it the timer pumps
        self._job_ended = False            # since the last redraw: show it without waiting
        self._written: set[str] = set()    # images written since the last redraw
        # The secret that owns this session's jobs on the daemon (PROTOCOL.md, 3); kept when the
        # client is replaced, so jobs sent before a reconnect can still be fetched.
        self._client_key: Optional[str] = None
        self.live = LiveMode(self)
        # Work a feature keeps to refine later, by scene name: Texture from Views' last run
        # (its views and each view's share of the texture, for a re-run of one view)
        self.kept_runs: dict[str, Any] = {}

    # ------------------------------------------------------------ connection
    def connect(self, host_name: str, port: int, token: str) -> AtelierClient:
        """The client for this address, started (re)connecting in the background."""
        url = default_url(host_name, port)
        if self._client is None or self._address != (url, token):
            if self._address is not None and self._address != (url, token):
                self.models, self.conditioners = [], []   # another daemon's lists
                self.pass_conditioners = {}
                self.loras, self.model_families, self.sampler_presets = [], {}, []
                self.upscalers = []
                self.current_model = None
                self.models_listed = False
            self.close_client()
            self._start(url, token)
        assert self._client is not None
        return self._client

    def _start(self, url: str, token: str) -> None:
        self._client = AtelierClient(url, token=token or None, client_name=CLIENT_NAME,
                                     reconnect=True, connect_timeout=5.0,
                                     client_key=self._client_key).start()
        self._address = (url, token)
        self.connection_text = f"connecting to {url} ..."
        self.connection_ok = False
        self.last_failure = None

    def retry_now(self) -> None:
        """After a failed attempt, try again now instead of after the client's backoff
        (the user just asked for something, perhaps having started the daemon)."""
        if self.last_failure is None or self._address is None:
            return
        if any(job.job_id is not None for job in self.active_jobs):
            return   # the client fetches these again itself once it is back
        url, token = self._address
        self.close_client()
        self._start(url, token)

    def close_client(self) -> None:
        """Drop the client; it shuts down on a thread of its own, since closing joins its
        threads (up to the connect timeout) and Blender's main thread must not wait."""
        if self._client is not None:
            self._client_key = self._client.client_key or self._client_key
            threading.Thread(target=self._client.close, name="atelier-close",
                             daemon=True).start()
        self._client = None
        self._address = None
        self.connection_ok = False

    def request_status(self) -> None:
        """Ask for device, model and queue; the answer lands in ``status``."""
        self._send_when_connected(lambda c: (c.get_status(), c.list_models()))

    def _send_when_connected(self, send: Callable[[AtelierClient], Any]) -> None:
        client = self._require_client()
        if client.connected:
            send(client)
        else:
            self._on_connect.append(send)

    @property
    def client(self) -> Optional[AtelierClient]:
        return self._client

    def note_written(self, image_name: str) -> None:
        """An image was written outside a job (the live image): redraw what shows it."""
        self._written.add(image_name)
        self._redraw_due = self._job_ended = True

    def _require_client(self) -> AtelierClient:
        if self._client is None:
            raise ClientError("no daemon address set; connect first")
        return self._client

    # ------------------------------------------------------------ jobs
    @property
    def active_jobs(self) -> list[Job]:
        return [job for job in self.jobs if not job.state.finished]

    def submit(self, job: Job) -> Job:
        client = self._require_client()
        finished = [j for j in self.jobs if j.state.finished]
        for old in finished[:max(0, len(finished) - KEEP_FINISHED)]:
            self.jobs.remove(old)
        self.jobs.append(job)
        if job.preparing is not None:
            job.state = JobState.PREPARING   # the pump sends it once it is made
        elif client.connected:
            self._send_job(client, job)
        return job

    def _send_waiting(self, client: AtelierClient, job: Job) -> None:
        """Send a job made before the daemon's limits were known, if they allow it."""
        problem = assets.request_size_problem(job.request, self.limits)
        if problem is not None:
            self._end(job, JobState.FAILED, problem)
        else:
            self._send_job(client, job)

    def _send_job(self, client: AtelierClient, job: Job) -> None:
        job.ref = client.submit(job.request, job.uploads)
        job.state = JobState.SENT

    def cancel(self, job: Job) -> None:
        """Ask the daemon to stop ``job``; its datablocks go when the daemon confirms."""
        job.cancel_requested = True
        job.preview = None
        if job.finishing is not None or job.preparing is not None:
            # the daemon is done with it, or never had it: what is left is ours
            self._end(job, JobState.CANCELLED, "cancelled")
            return
        if job.job_id is not None and self._client is not None and self._client.connected:
            self._client.cancel(job.job_id)
        elif job.state in (JobState.WAITING, JobState.RECONNECTING):
            # Nobody to tell: drop it here; a late result for it is ignored.
            self._end(job, JobState.CANCELLED, "cancelled")

    def cancel_all(self) -> None:
        for job in self.active_jobs:
            self.cancel(job)

    def _end(self, job: Job, state: JobState, message: str, keep_images: bool = False) -> None:
        job.state = state
        job.message = message
        job.preview = None
        self._job_ended = self._redraw_due = True
        job.uploads = ()   # renders and depth maps can be large; the daemon has them now
        job.finishing = job.preparing = None
        if state != JobState.DONE and not keep_images:
            host.remove_images(job.image_names)
            job.image_names.clear()
        if job.image_names:
            host.push_undo(f"Atelier: {job.label}")
        if state != JobState.DONE and job.ended is not None:
            job.ended(job)

    # ------------------------------------------------------------ pump
    def pump(self) -> bool:
        """Handle every event waiting from the daemon; True while jobs are active."""
        if self._client is None:
            return False
        if self._drawn_for is not None and self._pumped_at is not None:
            # The timer comes late by what Blender drew meanwhile: charged to what set it off.
            self._drawn_for.took(time.monotonic() - self._pumped_at - self._next_tick)
            self._drawn_for = None
        while True:
            try:
                event = self._client.events.get_nowait()
            except queue.Empty:
                break
            self._handle(event)
            self._redraw_due = True
        self._step_preparing()
        self._step_finishing()
        self._show_changes()
        active = bool(self.active_jobs) or self.live.running
        self._pumped_at = time.monotonic()
        self._next_tick = ACTIVE_INTERVAL if active else IDLE_INTERVAL   # as addon._tick asks
        return active

    def _show_changes(self) -> None:
        """Write each job's latest preview and redraw what shows the add-on's state, as
        often as ``_previews`` and ``_redraw`` allow (at once when a job ended); what comes
        in between waits for a later pump."""
        urgent = self._job_ended
        wrote = self._write_previews(urgent)
        redrew = self._redraw_due and self._redraw.ready(urgent)
        if redrew:
            active = self.active_jobs
            host.redraw(active[-1].progress_text if active else None, self._written)
            self._redraw_due = self._job_ended = False
            self._written = set()
        if wrote or redrew:   # what Blender draws next is charged to what set it off
            self._drawn_for = self._previews if wrote else self._redraw

    def _write_previews(self, urgent: bool) -> bool:
        waiting = [job for job in self.active_jobs if job.preview is not None]
        if not waiting or not self._previews.ready(urgent):
            return False
        for job in waiting:
            self._show_preview(job, job.preview)
            job.preview = None
        self._redraw_due = True
        return True

    def pump_until_idle(self, timeout: float, until: Optional[Callable[[], bool]] = None) -> None:
        """Pump until no job is active (or ``until`` says so); for scripts and tests.

        Background Blender runs no timers, so this drives the same code path
        the timer does. TimeoutError if it takes longer than ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            active = self.pump()
            if (until() if until is not None else not active):
                return
            if time.monotonic() > deadline:
                states = ", ".join(job.progress_text for job in self.active_jobs)
                raise TimeoutError(f"Atelier jobs still active after {timeout:g} s: {states}")
            time.sleep(0.02)

    def _job_for(self, job_id: Optional[str] = None, ref: Optional[str] = None) -> Optional[Job]:
        for job in self.jobs:
            if (job_id is not None and job.job_id == job_id) or (ref and job.ref == ref):
                return job
        return None

    def _handle(self, event: Any) -> None:
        if self.live.handle(event):
            return
        handler = self._HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def _connected(self, event: Connected) -> None:
        client = self._require_client()
        welcome = event.welcome
        self.connection_ok = True
        self.last_failure = None
        self.connection_text = (f"connected to {client.url}: {welcome.server} on "
                                f"{welcome.device}, model {welcome.model or 'none loaded'}")
        self.limits = welcome.limits
        self.sampler_presets = list(welcome.sampler_presets)
        self.capabilities = tuple(welcome.capabilities)
        self.current_model = welcome.model or self.current_model
        for job in self.jobs:
            if job.state == JobState.WAITING:
                self._send_waiting(client, job)
            elif job.state == JobState.RECONNECTING:   # the client fetches it again
                job.state, job.message = JobState.SENT, REFETCHING
        pending, self._on_connect = self._on_connect, []
        for send in pending:
            send(client)
        try:
            client.list_models()   # fills the panel's Depth Model menu
        except ClientError:
            pass                   # gone again already; its Disconnected event follows

    def _disconnected(self, event: Disconnected) -> None:
        self.connection_ok = False
        self.connection_text = self.last_failure = not_running_message(event.reason)
        for job in self.active_jobs:
            # Jobs the daemon never acknowledged are lost with the connection;
            # acknowledged ones are fetched again after a reconnect.
            if job.state == JobState.PREPARING:
                continue   # nothing sent yet: it waits for the daemon once it is made
            if job.job_id is None or not event.will_retry:
                self._end(job, JobState.FAILED, self.last_failure)
            else:
                job.state = JobState.RECONNECTING
                job.message = f"{JobState.RECONNECTING.value} ({self.last_failure})"

    def _accepted(self, event: Accepted) -> None:
        job = self._job_for(ref=event.ref)
        if job is None:
            return
        job.job_id = event.job_id
        job.state = JobState.QUEUED
        job.message = f"queued at position {event.position}"
        if job.cancel_requested:
            self._require_client().cancel(event.job_id)

    def _live_job(self, job_id: Optional[str]) -> Optional[Job]:
        job = self._job_for(job_id)
        return job if job is not None and not job.state.finished else None

    def _started(self, event: Started) -> None:
        job = self._live_job(event.job_id)
        if job is not None:
            job.state = JobState.RUNNING

    def _progress(self, event: Progress) -> None:
        job = self._live_job(event.job_id)
        if job is not None:
            job.state = JobState.RUNNING
            job.step, job.total = event.step, event.total

    def _preview(self, event: PreviewImage) -> None:
        job = self._live_job(event.job_id)
        if job is not None and not job.cancel_requested:
            job.preview = event.image   # written by _show_changes; older ones are skipped

    def _done(self, event: JobDone) -> None:
        job = self._live_job(event.job_id)
        if job is None:
            return
        if job.cancel_requested:   # finished before the cancel arrived: drop it all the same
            self._end(job, JobState.CANCELLED, "cancelled")
        else:
            self._deliver(job, event)

    def _cancelled(self, event: Cancelled) -> None:
        job = self._live_job(event.job_id)
        if job is None:
            return
        if job.cancel_requested:
            self._end(job, JobState.CANCELLED, "cancelled")
        else:   # nobody here asked: the daemon stopped it on its way down
            self._end(job, JobState.FAILED, SHUT_DOWN)

    def _error(self, event: Error) -> None:
        job = self._job_for(event.job_id, event.ref)
        text = f"daemon: {event.message}" + (f" [{event.field}]" if event.field else "")
        if job is None or job.state.finished:
            self.connection_text = text
        elif job.cancel_requested:   # asked to go; the daemon's reason no longer matters
            self._end(job, JobState.CANCELLED, "cancelled")
        elif event.code == ErrorCode.UNKNOWN_JOB:
            self._end(job, JobState.FAILED, RESTARTED)
        else:
            self._end(job, JobState.FAILED, text)

    def _status(self, event: Status) -> None:
        self.status = event
        self.connection_text = (f"connected to {self._require_client().url}: {event.device}, "
                                f"model {event.model or 'none loaded'}, {event.queue_length} "
                                "job(s) queued" + (", one running" if event.busy else ""))

    def _models(self, event: Models) -> None:
        # LoRAs, embeddings, upscalers and IP-Adapters (the reference's) are no ``model``:
        # they have menus (or prompts) of their own, or the daemon picks them
        self.models = [m.name for m in event.models
                       if m.kind not in ("lora", "embedding", "upscaler", "ip_adapter")]
        self.upscalers = assets.daemon_upscalers(event.models)
        self.conditioners = settings.depth_conditioners(event.models)
        self.pass_conditioners = {kind: settings.conditioners_for(event.models, kind)
                                  for kind in settings.PASS_CONTROLS if kind != "depth"}
        self.loras = settings.daemon_loras(event.models)
        self.model_families = {m.name: m.family for m in event.models if m.kind == "checkpoint"}
        if event.current:
            self.current_model = event.current
        self.models_listed = True

    def conditioners_of(self, kind: str) -> list[tuple[str, str]]:
        """(name, family) of the daemon's models for pass control ``kind``, as last listed."""
        return self.conditioners if kind == "depth" else self.pass_conditioners.get(kind, [])

    def model_family(self, model: str) -> Optional[str]:
        """The family of ``model`` ("" = the daemon's loaded one), None while unknown."""
        name = model or (self.status.model if self.status is not None else None) \
            or self.current_model
        return self.model_families.get(name) if name else None

    def _model_loaded(self, event: ModelLoaded) -> None:
        self.connection_text = f"model {event.model} loaded in {event.seconds:.1f} s"
        self.current_model = event.model

    _HANDLERS: dict[type, Callable[["Session", Any], None]] = {
        Connected: _connected, Disconnected: _disconnected, Accepted: _accepted,
        Started: _started, Progress: _progress, PreviewImage: _preview, JobDone: _done,
        Cancelled: _cancelled, Error: _error, Status: _status, Models: _models,
        ModelLoaded: _model_loaded,
    }

    def _show_preview(self, job: Job, frame: ImageFrame) -> None:
        if not job.image_names:
            image = host.new_image(settings.preview_name(job.request.prompt), frame.width,
                                   frame.height)
            job.image_names.append(image.name)
            host.show_image(image)
        image = bpy.data.images[job.image_names[0]]
        host.write_rgba8(image, frame.data, frame.width, frame.height)
        self._written.add(image.name)

    def _deliver(self, job: Job, done: JobDone) -> None:
        job.result = done.result
        failure = None
        try:
            images = self._write_results(job, done)
            if job.finish is not None:
                rest = job.finish(job, images)
                job.finishing = rest if isinstance(rest, Iterator) else None
        except host.HostError as exc:   # the pixels are complete; only the step after failed
            failure = str(exc)
        except Exception as exc:  # noqa: BLE001  a bug must not stop the pump's timer
            traceback.print_exc()
            failure = f"{type(exc).__name__}: {exc}"
        if job.finishing is not None and failure is None:
            job.total, job.message = 0, "finishing"   # the pump steps the rest
            return
        self._conclude(job, failure)

    def _step_preparing(self) -> None:
        """Run a slice of each PREPARING job's ``preparing``; send the exhausted (or fail
        them, saying why)."""
        for job in [j for j in self.jobs if j.preparing is not None and not j.state.finished]:
            over, failure = _run_slice(job.preparing)
            if not over or job.state.finished:   # (a step may have cancelled it)
                continue
            job.preparing = None
            if failure is not None:
                self._end(job, JobState.FAILED, failure)
                continue
            job.state = JobState.WAITING
            if self._client is not None and self._client.connected:
                self._send_waiting(self._client, job)

    def _step_finishing(self) -> None:
        """Run a slice of each job's unfinished ``finishing``; conclude the exhausted."""
        for job in [j for j in self.jobs if j.finishing is not None and not j.state.finished]:
            if job.cancel_requested:
                self._end(job, JobState.CANCELLED, "cancelled")
                continue
            over, failure = _run_slice(job.finishing)
            if not over or job.state.finished:
                continue
            job.finishing = None
            self._conclude(job, failure)

    def _conclude(self, job: Job, failure: Optional[str]) -> None:
        """End a delivered job: its images kept; done, or failed saying why."""
        kept = self._keep(job)
        if failure is not None:
            self._end(job, JobState.FAILED, "; ".join(filter(None, (failure, kept))),
                      keep_images=True)
        else:
            done_in = f"done in {job.result.seconds:.1f} s" if job.result is not None else ""
            self._end(job, JobState.DONE, "; ".join(filter(None, (done_in, job.note, kept))))

    def _write_results(self, job: Job, done: JobDone) -> list[Any]:
        """The result frames into images named after prompt and seed (the preview image
        becomes the first), each with its parameters; shows the first."""
        result = done.result
        seeds = {info.index: info.seed for info in result.images}
        labels = {info.index: info.label for info in result.images}
        images = []
        for frame in done.images:
            seed = seeds.get(frame.index, result.params.seed or 0)
            label = labels.get(frame.index)
            name = (job.name_for(label) if job.name_for is not None else
                    settings.image_name(result.params.prompt, seed, frame.index,
                                        len(done.images)))
            if frame.index < len(job.image_names):
                image = bpy.data.images[job.image_names[frame.index]]
                image.name = name
                job.image_names[frame.index] = image.name   # Blender may add ".001"
            else:
                # A texture set's data maps (normal, height, ...) are no colours
                image = host.new_image(name, frame.width, frame.height,
                                       assets.MAP_COLORSPACE.get(label or "", "sRGB"))
                job.image_names.append(image.name)
            host.write_rgba8(image, frame.data, frame.width, frame.height)
            record = settings.result_record(result, frame.index, seed)
            if label:
                record["label"] = label
            image[settings.RECORD_KEY] = record
            images.append(image)
            self._written.add(image.name)
        if images:
            host.show_image(images[0])
        return images

    def _keep(self, job: Job) -> Optional[str]:
        """Pack or save the job's images (host.keep_images); a note for the job's line."""
        images = [bpy.data.images[name] for name in job.image_names if name in bpy.data.images]
        try:
            return host.keep_images(images, job.images_as_files)
        except RuntimeError as exc:
            traceback.print_exc()
            return f"could not keep the images in the .blend ({exc}); save them by hand"


def _run_slice(steps: Iterator[Any]) -> tuple[bool, Optional[str]]:
    """Step ``steps`` for about FINISH_SLICE seconds: (whether it is over, why it failed
    or None)."""
    deadline = time.monotonic() + FINISH_SLICE
    try:
        while time.monotonic() < deadline:
            next(steps)
        return False, None
    except StopIteration:
        return True, None
    except host.HostError as exc:
        return True, str(exc)
    except Exception as exc:  # noqa: BLE001  a bug must not stop the pump's timer
        traceback.print_exc()
        return True, f"{type(exc).__name__}: {exc}"


def not_running_message(reason: str) -> str:
    """The report for an unreachable daemon, always with the command that starts one."""
    return reason if START_HINT in reason else f"{reason}; {START_HINT}"
