"""The job layer: one queue, one worker thread that owns the device, results kept until fetched.

The event loop never runs model code. The worker reports back through
``loop.call_soon_threadsafe``; subscribers are plain callables run on the loop.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import enum
import hmac
import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Union

from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import FORMAT_NAMES, ImageFrame, new_id
from protocol.messages import (Cancelled, Error, GenerateRequest, ImageInfo, JobStatus, Progress,
                               Result, Started)

from .generation import GenerationOutput, Generator, JobCancelled, Pixels
from .outputs import preview_frame, result_frame
from .spool import OutcomeSpool
from .uploads import Hold

log = logging.getLogger("atelier.jobs")

Subscriber = Callable[[Union[ImageFrame, Any]], None]


class JobState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass
class Job:
    id: str
    request: GenerateRequest
    uploads: Mapping[str, ImageFrame]
    owner: str                         # the submitting client's key; only it may fetch or cancel
    holds: list[Hold] = field(default_factory=list)   # upload bytes, given back when it ends
    live: Optional[str] = None         # its live session: a newer job of it supersedes this one
    superseded: bool = False
    state: JobState = JobState.QUEUED
    subscribers: list[Subscriber] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)
    outcome: list[Any] = field(default_factory=list)   # what a late fetch replays
    outcome_bytes: int = 0
    finished_at: float = 0.0


@dataclass(frozen=True)
class OwnStatus:
    """What ``get_status`` may tell one client: others' jobs only as counts."""
    queue_length: int
    busy: bool
    running: Optional[str]
    jobs: list[JobStatus]


@dataclass
class _Task:
    """Non-job work that must run on the device thread (loading a model)."""
    fn: Callable[[], Any]
    future: "asyncio.Future[Any]"


class JobManager:
    """``spool``: where finished outcomes are also kept on disk, so that a restarted daemon
    can still hand them to their owners. ``after_out_of_memory`` runs on the worker after a
    job failed for lack of device memory (it frees the device's cache)."""

    def __init__(self, generator: Generator, loop: asyncio.AbstractEventLoop, *,
                 max_queue: int = 32, keep_results_s: float = 3600.0,
                 keep_results_bytes: int = 1024 * 1024 * 1024,
                 spool: Optional[OutcomeSpool] = None,
                 after_out_of_memory: Callable[[], None] = lambda: None):
        self._generator = generator
        self._loop = loop
        self._spool = spool
        self._after_out_of_memory = after_out_of_memory
        self._max_queue = max_queue
        self._keep_s = keep_results_s
        self._keep_bytes = keep_results_bytes
        self._jobs: dict[str, Job] = {}
        self._finished: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._queue: collections.deque[Union[Job, _Task]] = collections.deque()
        self._cond = threading.Condition()
        self._running: Optional[Job] = None
        self._stopping = False
        self._encoder = concurrent.futures.ThreadPoolExecutor(1, "atelier-encoder")
        self._worker = threading.Thread(target=self._work, name="atelier-worker", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------ loop side
    @property
    def queue_length(self) -> int:
        with self._cond:
            return sum(isinstance(item, Job) for item in self._queue)

    @property
    def running_id(self) -> Optional[str]:
        job = self._running
        return job.id if job else None

    def status_for(self, owner: str) -> OwnStatus:
        with self._cond:
            waiting = sum(isinstance(item, Job) for item in self._queue)
            running = self._running
            mine = [JobStatus(job_id=job.id, state=job.state.value)
                    for job in self._jobs.values()
                    if job.state in (JobState.QUEUED, JobState.RUNNING)
                    and _same_owner(job.owner, owner)]
        return OwnStatus(queue_length=waiting, busy=running is not None,
                         running=running.id if running and _same_owner(running.owner, owner)
                         else None, jobs=mine)

    def submit(self, request: GenerateRequest, uploads: Mapping[str, ImageFrame],
               subscriber: Subscriber, owner: str, holds: list[Hold] = (),
               live: Optional[str] = None, job_id: Optional[str] = None) -> tuple[Job, int]:
        """Queue a job of ``owner``'s. With ``live``, it first supersedes the owner's queued
        and running jobs of that live session: the queue holds at most one of each.
        ``job_id``: the id it already has (a cluster worker runs the scheduler's jobs)."""
        with self._cond:
            if self._stopping:
                raise ProtocolError(ErrorCode.SHUTTING_DOWN,
                                    "the daemon is shutting down and takes no new jobs")
            if live is not None:
                self._supersede(owner, live)
            waiting = sum(isinstance(item, Job) for item in self._queue)
            if waiting >= self._max_queue:
                raise ProtocolError(ErrorCode.QUEUE_FULL,
                                    f"the queue holds {waiting} jobs, the limit is "
                                    f"{self._max_queue}; try again when one finishes")
            job = Job(job_id or new_id(), request, dict(uploads), owner, list(holds), live=live,
                      subscribers=[subscriber])
            self._jobs[job.id] = job
            self._queue.append(job)
            self._cond.notify()
            position = waiting + (1 if self._running else 0)
        return job, position

    async def enqueue(self, request: GenerateRequest, uploads: Mapping[str, ImageFrame],
                      subscriber: Subscriber, owner: str, holds: list[Hold] = (),
                      live: Optional[str] = None) -> tuple[str, int]:
        """``submit`` as a session asks for it (the cluster's job service is remote)."""
        job, position = self.submit(request, uploads, subscriber, owner, holds, live)
        return job.id, position

    async def own_status(self, owner: str) -> OwnStatus:
        return self.status_for(owner)

    def _supersede(self, owner: str, live: str) -> None:
        """End ``owner``'s queued jobs of live session ``live`` and stop its running one
        (call with the lock held)."""
        for item in list(self._queue):
            if isinstance(item, Job) and item.live == live and _same_owner(item.owner, owner):
                self._queue.remove(item)
                self._finish(item, JobState.CANCELLED,
                             [Cancelled(job_id=item.id, reason="superseded")])
        running = self._running
        if running is not None and running.live == live and _same_owner(running.owner, owner):
            running.superseded = True
            running.cancel.set()

    def _owned(self, job_id: str, owner: str) -> Optional[Job]:
        """The job, if it is in memory and ``owner``'s (call with the lock held)."""
        job = self._jobs.get(job_id)
        return job if job is not None and _same_owner(job.owner, owner) else None

    async def cancel(self, job_id: str, owner: str, subscriber: Subscriber) -> None:
        """Remove a queued job or stop a running one within one step; ``subscriber`` gets
        the ``cancelled``. A job that already ended answers JOB_FINISHED (or ``cancelled``
        again when that is how it ended). Jobs of other clients are unknown here."""
        self._expire()
        with self._cond:
            job = self._owned(job_id, owner)
            if job is not None and job.state in (JobState.QUEUED, JobState.RUNNING):
                if subscriber not in job.subscribers:
                    job.subscribers.append(subscriber)
                if job.state == JobState.QUEUED:
                    self._queue.remove(job)
                    self._finish(job, JobState.CANCELLED, [Cancelled(job_id=job.id)])
                else:
                    job.cancel.set()
                return
            outcome = list(job.outcome) if job is not None else None
        if outcome is None:     # read off the event loop: an outcome can be large
            outcome = await self._loop.run_in_executor(None, self._spooled, job_id, owner)
        if len(outcome) == 1 and isinstance(outcome[0], Cancelled):
            subscriber(outcome[0])
            return
        raise ProtocolError(ErrorCode.JOB_FINISHED,
                            f"job {job_id} has already finished: nothing to cancel; its "
                            "outcome can be fetched", "job_id")

    async def fetch(self, job_id: str, owner: str, subscriber: Subscriber) -> None:
        """Replay a finished job's outcome (from memory, or from the spool after a restart),
        or subscribe to a queued or running one. Jobs of other clients are unknown here."""
        self._expire()
        with self._cond:
            job = self._owned(job_id, owner)
            if job is not None and job.state in (JobState.QUEUED, JobState.RUNNING):
                if subscriber not in job.subscribers:
                    job.subscribers.append(subscriber)
                return
            outcome = list(job.outcome) if job is not None else None
        if outcome is None:     # read off the event loop: an outcome can be large
            outcome = await self._loop.run_in_executor(None, self._spooled, job_id, owner)
        for item in outcome:
            subscriber(item)

    def _spooled(self, job_id: str, owner: str) -> list[Any]:
        outcome = self._spool.get(job_id, owner) if self._spool is not None else None
        if outcome is None:
            raise ProtocolError(ErrorCode.UNKNOWN_JOB,
                                f"no job with id {job_id} of this client (finished results are "
                                f"kept {self._keep_s:g} s)", "job_id")
        return outcome

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """A connection went away: its jobs keep running, their results are kept."""
        with self._cond:
            for job in self._jobs.values():
                if subscriber in job.subscribers:
                    job.subscribers.remove(subscriber)

    def run_on_worker(self, fn: Callable[[], Any]) -> "asyncio.Future[Any]":
        future = self._loop.create_future()
        with self._cond:
            self._queue.append(_Task(fn, future))
            self._cond.notify()
        return future

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking work: queued jobs end with SHUTTING_DOWN (their owners are told, and
        the outcome is spooled like any other), queued tasks fail, the running job stops
        within a step and ends with SHUTTING_DOWN too. Waits at most ``timeout`` s for the worker (a model load cannot be
        interrupted; the worker thread is a daemon thread and ends with the process)."""
        with self._cond:
            self._stopping = True
            queued, self._queue = list(self._queue), collections.deque()
            if self._running:
                self._running.cancel.set()
            self._cond.notify()
        for item in queued:
            if isinstance(item, Job):
                self._finish(item, JobState.FAILED, [Error(
                    code=ErrorCode.SHUTTING_DOWN, job_id=item.id,
                    message="the daemon was stopped before this job ran; submit it again")])
            else:
                self._loop.call_soon_threadsafe(_set_exception, item.future, ProtocolError(
                    ErrorCode.SHUTTING_DOWN, "the daemon is shutting down"))
        self._worker.join(timeout=timeout)
        self._encoder.shutdown(wait=True)

    # ------------------------------------------------------------ worker side
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                item = self._queue.popleft()
                if isinstance(item, Job):
                    item.state = JobState.RUNNING
                    self._running = item
            if isinstance(item, _Task):
                self._run_task(item)
            else:
                self._run_job(item)

    def _run_task(self, task: _Task) -> None:
        try:
            value = task.fn()
        except BaseException as exc:  # handed to the awaiting coroutine, which reports it
            self._loop.call_soon_threadsafe(_set_exception, task.future, exc)
        else:
            self._loop.call_soon_threadsafe(_set_result, task.future, value)

    def _run_job(self, job: Job) -> None:
        self._post(job, Started(job_id=job.id))
        started = time.perf_counter()

        def progress(step: int, total: int, preview: Optional[Pixels]) -> None:
            self._post(job, Progress(job_id=job.id, step=step, total=total,
                                     preview=preview is not None))
            if preview is not None:
                self._post(job, preview_frame(job.id, step, preview))

        try:
            output = self._generator.generate(job.request, job.uploads, progress,
                                              job.cancel.is_set)
        except JobCancelled:
            if self._stopping:     # not the client's cancel: say why the job ended
                self._finish(job, JobState.FAILED, [Error(
                    code=ErrorCode.SHUTTING_DOWN, job_id=job.id,
                    message="the daemon was stopped while this job ran; submit it again")])
            else:
                self._finish(job, JobState.CANCELLED, [Cancelled(
                    job_id=job.id, reason="superseded" if job.superseded else None)])
            return
        except ProtocolError as exc:
            self._finish(job, JobState.FAILED, [Error(code=exc.code, message=exc.message,
                                                      field=_in_job(exc.field), job_id=job.id)])
            return
        except Exception as exc:  # one failing job must not take the daemon down
            failure = self._failure_of(job, exc)
        else:
            failure = None
        if failure is not None:
            # Out of the except block, the traceback no longer holds the job's tensors.
            if failure.code == ErrorCode.OUT_OF_MEMORY:
                self._free_device_memory(job)
            self._finish(job, JobState.FAILED, [failure])
            return
        # Encoding (PNG can take longer than a fast GPU's job) runs beside the next job's
        # sampling; one encoder thread keeps results in submission order.
        with self._cond:
            if self._running is job:
                self._running = None
        self._encoder.submit(self._deliver_output, job, output, started)

    def _deliver_output(self, job: Job, output: GenerationOutput, started: float) -> None:
        try:
            frames = [result_frame(job.id, i, image, output.params, output.model)
                      for i, image in enumerate(output.images)]
        except Exception as exc:
            self._finish(job, JobState.FAILED, [self._failure_of(job, exc)])
            return
        result = Result(
            job_id=job.id,
            images=[ImageInfo(index=f.index, width=f.width, height=f.height,
                              format=FORMAT_NAMES[f.format], seed=img.seed,
                              label=img.label)
                    for f, img in zip(frames, output.images)],
            params=output.params, tiling=output.tiling, model=output.model,
            seconds=round(time.perf_counter() - started, 4))
        self._finish(job, JobState.DONE, [*frames, result])

    def _failure_of(self, job: Job, exc: Exception) -> Error:
        log.error("job %s failed:\n%s", job.id, traceback.format_exc())
        return _failure(job.id, exc)

    def _free_device_memory(self, job: Job) -> None:
        try:
            self._after_out_of_memory()
        except Exception:
            log.exception("freeing device memory after job %s failed", job.id)

    def _finish(self, job: Job, state: JobState, outcome: list[Any]) -> None:
        with self._cond:
            job.state = state
            job.outcome = outcome
            job.outcome_bytes = sum(len(o.data) for o in outcome if isinstance(o, ImageFrame))
            job.finished_at = time.monotonic()
            job.uploads = {}
            holds, job.holds = job.holds, []
            self._finished[job.id] = job
            if self._running is job:
                self._running = None
        for hold in holds:
            hold.release()
        self._post_many(job, outcome)
        if self._spool is not None:
            try:
                self._encoder.submit(self._keep_on_disk, job, outcome)
            except RuntimeError:     # the encoder was shut down: stopping, write it here
                self._keep_on_disk(job, outcome)
        self._expire()

    def _keep_on_disk(self, job: Job, outcome: list[Any]) -> None:
        assert self._spool is not None
        try:
            self._spool.put(job.id, job.owner, outcome)
        except Exception:   # the outcome stays in memory; only a restart would lose it
            log.exception("could not spool the outcome of job %s", job.id)

    def _expire(self) -> None:
        with self._cond:
            now = time.monotonic()
            kept = sum(j.outcome_bytes for j in self._finished.values())
            while self._finished:
                oldest = next(iter(self._finished.values()))
                if now - oldest.finished_at < self._keep_s and kept <= self._keep_bytes:
                    break
                kept -= oldest.outcome_bytes
                del self._finished[oldest.id]
                del self._jobs[oldest.id]

    def _post(self, job: Job, item: Any) -> None:
        self._loop.call_soon_threadsafe(self._deliver, job, [item])

    def _post_many(self, job: Job, items: list[Any]) -> None:
        self._loop.call_soon_threadsafe(self._deliver, job, items)

    def _deliver(self, job: Job, items: list[Any]) -> None:
        with self._cond:
            subscribers = list(job.subscribers)
        for subscriber in subscribers:
            for item in items:
                subscriber(item)


def _same_owner(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _in_job(field_path: Optional[str]) -> Optional[str]:
    """Error fields of a job are paths in the submit message: ``job.<field>``."""
    if field_path is None or field_path == "job" or field_path.startswith("job."):
        return field_path
    return f"job.{field_path}"


def _failure(job_id: str, exc: Exception) -> Error:
    if _is_out_of_memory(exc):
        return Error(code=ErrorCode.OUT_OF_MEMORY,
                     message=f"the device ran out of memory for this job ({exc}); try a smaller "
                             "size or batch", job_id=job_id)
    return Error(code=ErrorCode.JOB_FAILED, message=f"{type(exc).__name__}: {exc}", job_id=job_id)


def _is_out_of_memory(exc: Exception) -> bool:
    import torch  # the job layer only needs torch to recognise its OOM error

    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def _set_result(future: "asyncio.Future[Any]", value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: "asyncio.Future[Any]", exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
