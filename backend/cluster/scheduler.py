"""The cluster's one source of truth: the fair queue, every job's record and finished
outcome, which worker replica holds which model, and the events on their way to the
gateway replicas. Run as a single-replica Serve deployment (``deployments.Scheduler``);
this module is plain asyncio, so its rules read apart from Ray's plumbing.

Workers push a job's events here (``post``) and learn of a cancel in the answer; gateways
long-poll ``pull`` for the events of their subscribers. A client may reconnect to any
gateway replica and ``fetch``: state lives here, not in a gateway.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Optional

from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import FrameKind, ImageFrame, new_id
from protocol.messages import Cancelled, Error, GenerateRequest, JobStatus, Result, Started

from .config import ClusterConfig
from .fair_queue import FairQueue, WorkerView, choose_worker
from ..jobs import JobState as State, OwnStatus
from .records import Delivery, JobTask, Refusal, Reply, WorkerReport

log = logging.getLogger("atelier.cluster.scheduler")

GATEWAY_STALE_S = 60.0     # a gateway that has not pulled for this long is gone: drop its events


@dataclass
class ClusterJob:
    id: str
    owner: str
    request: GenerateRequest
    uploads: Mapping[str, ImageFrame]
    model: str                           # what it runs on (the default at submit if it names none)
    origin: str                          # the gateway it was submitted through
    live: Optional[str] = None
    state: State = State.QUEUED
    subscribers: set[str] = field(default_factory=set)
    replica: Optional[str] = None        # where it runs or ran
    started: bool = False
    cancel: bool = False
    superseded: bool = False
    lost_on: list[str] = field(default_factory=list)   # replicas lost while running it
    results: list[ImageFrame] = field(default_factory=list)    # RESULT frames before the result
    outcome: list[Any] = field(default_factory=list)
    outcome_bytes: int = 0
    finished_at: float = 0.0

    @property
    def active(self) -> bool:
        return self.state in (State.QUEUED, State.RUNNING)


@dataclass
class Inbox:
    """Events waiting for one gateway replica's next pull."""
    items: list[tuple[str, list[Any]]] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    last_pull: float = field(default_factory=time.monotonic)


# (task) -> the worker's report; raises when the replica died or could not be reached
SendJob = Callable[[JobTask], Awaitable[WorkerReport]]
# (target replica, model name) -> ((name, family), report)
SendLoad = Callable[[str, str], Awaitable[tuple[tuple[str, str], WorkerReport]]]


class SchedulerCore:
    def __init__(self, config: ClusterConfig, send_job: SendJob, send_load: SendLoad,
                 lost: tuple[type[BaseException], ...] = ()):
        """``lost``: the exceptions that mean a worker replica died (Ray's actor errors)."""
        self.config = config
        self._lost = lost
        self._send_job = send_job
        self._send_load = send_load
        self.default_model = config.model
        self.jobs: dict[str, ClusterJob] = {}
        self.finished: collections.OrderedDict[str, ClusterJob] = collections.OrderedDict()
        self.queue = FairQueue()
        self.workers: dict[str, WorkerView] = {}
        self.inboxes: dict[str, Inbox] = {}
        self.placements: collections.deque[tuple[str, str, str]] = collections.deque(maxlen=1000)
        # ("queued" | "dispatched", job id), in order: what the fair turns did
        self.history: collections.deque[tuple[str, str]] = collections.deque(maxlen=1000)
        self._tasks: set[asyncio.Task[None]] = set()
        self._asking = False      # a job sent as a second request, to grow the workers

    # ------------------------------------------------------------ workers
    def register_worker(self, report: WorkerReport) -> None:
        view = self.workers.get(report.replica) or WorkerView(report.name, report.device)
        self.workers[report.replica] = view
        self._update(view, report)
        log.info("worker %s up (%s)", report.name, report.device)
        for inbox in self.inboxes.values():     # gateways learn the device and memory now
            inbox.ready.set()
        self._dispatch()

    def _update(self, view: WorkerView, report: WorkerReport) -> None:
        view.report(report.models, self.config.models_per_worker)
        view.weight_loads = report.weight_loads
        view.memory = report.memory

    def post(self, job_id: str, replica: str, items: list[Any]) -> bool:
        """A worker's events for a job it runs; True when the job should stop."""
        job = self.jobs.get(job_id)
        if job is None or not job.active or replica in job.lost_on:
            return True          # a replica taken for lost that answers again: stop there
        for item in items:
            if isinstance(item, Started):
                job.state, job.started, job.replica = State.RUNNING, True, replica
            if isinstance(item, ImageFrame) and item.kind == FrameKind.RESULT:
                job.results.append(item)
                continue         # sent with its result, as part of the outcome
            if isinstance(item, (Result, Error, Cancelled)):
                state = (State.DONE if isinstance(item, Result) else
                         State.CANCELLED if isinstance(item, Cancelled) else State.FAILED)
                if isinstance(item, Cancelled) and job.superseded:
                    item = Cancelled(job_id=job.id, reason="superseded")
                self._finish(job, state, [*job.results, item])
                return True
            self._forward(job, [item])
        return job.cancel

    # ------------------------------------------------------------ gateways
    def submit(self, request: GenerateRequest, uploads: Mapping[str, ImageFrame], owner: str,
               live: Optional[str], subscriber: str) -> tuple[str, int]:
        if live is not None:
            self._supersede(owner, live)
        if len(self.queue) >= self.config.max_queue:
            raise ProtocolError(ErrorCode.QUEUE_FULL,
                                f"the cluster's queue holds {len(self.queue)} jobs, the limit "
                                f"is {self.config.max_queue}; try again when one finishes")
        job = ClusterJob(new_id(), owner, request, dict(uploads),
                         model=request.model or self.default_model,
                         origin=_gateway_of(subscriber), live=live, subscribers={subscriber})
        self.jobs[job.id] = job
        running = sum(1 for j in self.jobs.values() if j.state == State.RUNNING)
        position = len(self.queue) + running
        self.queue.push(owner, job.id)
        self.history.append(("queued", job.id))
        self._dispatch()
        return job.id, position

    def _supersede(self, owner: str, live: str) -> None:
        for job in list(self.jobs.values()):
            if job.active and job.live == live and _same_owner(job.owner, owner):
                if job.state == State.QUEUED:
                    self.queue.remove(job.owner, job.id)
                    self._finish(job, State.CANCELLED, [Cancelled(job_id=job.id,
                                                                  reason="superseded")])
                else:
                    job.superseded = job.cancel = True

    def _owned(self, job_id: str, owner: str) -> ClusterJob:
        self._expire()
        job = self.jobs.get(job_id)
        if job is None or not _same_owner(job.owner, owner):
            raise ProtocolError(ErrorCode.UNKNOWN_JOB,
                                f"no job with id {job_id} of this client (finished results are "
                                f"kept {self.config.server.keep_results_s:g} s)", "job_id")
        return job

    def cancel(self, job_id: str, owner: str, subscriber: str) -> list[Any]:
        """What to replay to ``subscriber`` now (a cancelled job's ``cancelled`` again)."""
        job = self._owned(job_id, owner)
        if job.active:
            job.subscribers.add(subscriber)
            if job.state == State.QUEUED:
                self.queue.remove(job.owner, job.id)
                self._finish(job, State.CANCELLED, [Cancelled(job_id=job.id)])
            else:
                job.cancel = True     # the worker hears it in answer to its next event
            return []
        if len(job.outcome) == 1 and isinstance(job.outcome[0], Cancelled):
            return list(job.outcome)
        raise ProtocolError(ErrorCode.JOB_FINISHED,
                            f"job {job_id} has already finished: nothing to cancel; its "
                            "outcome can be fetched", "job_id")

    def fetch(self, job_id: str, owner: str, subscriber: str) -> list[Any]:
        job = self._owned(job_id, owner)
        if job.active:
            job.subscribers.add(subscriber)
            return []
        return list(job.outcome)

    def unsubscribe(self, subscriber: str) -> None:
        for job in self.jobs.values():
            job.subscribers.discard(subscriber)

    def own_status(self, owner: str) -> OwnStatus:
        mine = [j for j in self.jobs.values() if j.active and _same_owner(j.owner, owner)]
        running = [j.id for j in mine if j.state == State.RUNNING]
        return OwnStatus(queue_length=len(self.queue),
                         busy=any(w.busy for w in self.workers.values()),
                         running=running[0] if running else None,
                         jobs=[JobStatus(job_id=j.id, state=j.state.value) for j in mine])

    async def load_model(self, name: str) -> tuple[str, str]:
        """Load ``name`` on a worker (one holding it, else the least busy) and make it the
        default of jobs naming no model."""
        if not self.workers:
            raise ProtocolError(ErrorCode.SHUTTING_DOWN, "no worker replica is up yet")
        holders = [r for r, w in self.workers.items() if w.holds(name)]
        target = min(holders or self.workers, key=lambda r: (self.workers[r].busy, r))
        view = self.workers[target]
        view.busy += 1
        try:
            (loaded, family), report = await self._send_load(target, name)
        finally:
            view.busy -= 1
        self.default_model = loaded
        current = self.workers.get(report.replica)
        if current is not None:
            self._update(current, report)
        self._dispatch()
        return loaded, family

    async def pull(self, gateway: str, wait_s: float) -> Delivery:
        inbox = self.inboxes.setdefault(gateway, Inbox())
        inbox.last_pull = time.monotonic()
        if not inbox.items and not inbox.ended:
            try:
                await asyncio.wait_for(inbox.ready.wait(), wait_s)
            except asyncio.TimeoutError:
                pass
        inbox.ready.clear()
        inbox.last_pull = time.monotonic()
        items, inbox.items = inbox.items, []
        ended, inbox.ended = inbox.ended, []
        self._drop_stale_gateways()
        return Delivery(events=items, ended=ended, default_model=self.default_model,
                        device=self._device(), memory=self._memory())

    def _device(self) -> str:
        devices = sorted({w.device for w in self.workers.values()})
        return ", ".join(devices) if devices else "cluster"

    def _memory(self) -> tuple[int, int]:
        return (sum(w.memory[0] for w in self.workers.values()),
                sum(w.memory[1] for w in self.workers.values()))

    def _drop_stale_gateways(self) -> None:
        now = time.monotonic()
        for gateway, inbox in list(self.inboxes.items()):
            if now - inbox.last_pull > GATEWAY_STALE_S:
                log.warning("gateway %s stopped pulling: its events are dropped", gateway)
                del self.inboxes[gateway]
                for job in self.jobs.values():
                    job.subscribers = {s for s in job.subscribers if _gateway_of(s) != gateway}

    def stats(self) -> dict[str, Any]:
        """For operators, tests and benchmarks: workers, their models and where jobs ran."""
        return {"default_model": self.default_model, "queued": len(self.queue),
                "workers": {r: {"name": w.name, "models": list(w.models), "busy": w.busy,
                                "jobs_run": w.jobs_run, "weight_loads": w.weight_loads}
                            for r, w in self.workers.items()},
                "placements": list(self.placements), "history": list(self.history),
                "running": {j.id: j.replica for j in self.jobs.values()
                            if j.state == State.RUNNING},
                "origins": {j.id: j.origin for j in self.jobs.values()}}

    # ------------------------------------------------------------ dispatch
    def _dispatch(self) -> None:
        """Start queued jobs on free workers, in fair turn, by model affinity; then ask
        for more workers while jobs wait (``_ask_for_workers``)."""
        waiting = collections.Counter(self.jobs[j].model for _, j in self.queue.in_turn())
        for owner, job_id in list(self.queue.in_turn()):
            if not any(w.busy == 0 for w in self.workers.values()):
                break
            job = self.jobs[job_id]
            target = choose_worker(job.model, self.workers, waiting[job.model],
                                   self.config.spill_after)
            if target is not None:
                waiting[job.model] -= 1
                self._start(owner, job, target)
        self._ask_for_workers()

    def _ask_for_workers(self) -> None:
        """Serve autoscales workers on their ongoing requests, and this scheduler sends a
        worker one job at a time: below ``max_workers``, while jobs wait and all workers
        are busy, the next job in turn goes to the least busy worker as a second request
        (it runs after that worker's current job); the demand makes Serve add a replica,
        which registers and takes work. One such job at a time."""
        if (self._asking or not len(self.queue) or not self.workers
                or len(self.workers) >= self.config.max_workers
                or any(w.busy == 0 for w in self.workers.values())):
            return
        owner, job_id = next(self.queue.in_turn())
        job = self.jobs[job_id]
        target = min(self.workers, key=lambda r: (not self.workers[r].holds(job.model),
                                                  self.workers[r].busy, r))
        self._asking = True
        self._start(owner, job, target)

    def _start(self, owner: str, job: ClusterJob, target: str) -> None:
        self.queue.take(owner, job.id)
        job.state = State.RUNNING      # handed to a worker: a cancel now goes through it
        self.history.append(("dispatched", job.id))
        view = self.workers[target]
        view.busy += 1
        if job.model not in view.models:
            view.loading.add(job.model)
        self._spawn(self._run(job, target, asking=view.busy > 1))

    async def _run(self, job: ClusterJob, target: str, asking: bool = False) -> None:
        task = JobTask(job.id, job.owner, job.request, job.uploads, self.default_model, target)
        try:
            report = await self._send_job(task)
        except self._lost as exc:
            self._worker_lost(job, target, exc)
        except Exception as exc:     # the worker is alive: this job alone failed there
            log.exception("job %s failed on worker %s", job.id, target)
            if job.active:
                self._finish(job, State.FAILED, [Error(
                    code=ErrorCode.INTERNAL, job_id=job.id,
                    message=f"the worker failed this job: {type(exc).__name__}")])
        else:
            view = self.workers.get(report.replica)
            if view is None:         # taken for lost, yet it answers: it is back
                self.register_worker(report)
                view = self.workers[report.replica]
            self._update(view, report)
            view.jobs_run += 1
            self.placements.append((job.id, report.replica, job.model))
            if job.active:     # the worker answered without an outcome: a bug, not a hang
                self._finish(job, State.FAILED, [Error(
                    code=ErrorCode.INTERNAL, job_id=job.id,
                    message="the worker returned without an outcome for this job")])
        finally:
            view = self.workers.get(target)
            if view is not None:
                view.busy = max(0, view.busy - 1)
                view.loading.discard(job.model)
            if asking:
                self._asking = False
            self._dispatch()

    def _worker_lost(self, job: ClusterJob, target: str, exc: Exception) -> None:
        """A job that never started, or started but sent no result image yet, runs again
        elsewhere (a started one once: its clients see ``started`` again, and its progress
        from the first step); otherwise, and on a second loss, it fails with
        ``worker_lost``, or ends ``cancelled`` when a cancel was on its way."""
        where = job.replica or target
        lost = self.workers.pop(where, None)
        name = lost.name if lost is not None else where
        log.warning("worker %s lost running job %s: %s", name, job.id, exc)
        if not job.active:
            return
        if job.started:
            job.lost_on.append(where)
        if job.cancel:           # what its client asked for happened anyway
            self._finish(job, State.CANCELLED, [Cancelled(
                job_id=job.id, reason="superseded" if job.superseded else None)])
            return
        if not job.started or (len(job.lost_on) == 1 and not job.results):
            job.state, job.started, job.replica = State.QUEUED, False, None
            self.queue.push(job.owner, job.id, first=True)
            return
        kept = ("it had been retried once already, after a first worker was lost"
                if len(job.lost_on) > 1 else
                "it had sent part of its result images, so it was not retried")
        self._finish(job, State.FAILED, [Error(
            code=ErrorCode.WORKER_LOST, job_id=job.id,
            message=f"the worker replica running this job ({name}) was lost "
                    f"({type(exc).__name__}); {kept}: submit it again")])

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ outcomes
    def _finish(self, job: ClusterJob, state: State, outcome: list[Any]) -> None:
        job.state = state
        job.outcome = outcome
        job.outcome_bytes = sum(len(o.data) for o in outcome if isinstance(o, ImageFrame))
        job.finished_at = time.monotonic()
        job.uploads, job.results = {}, []
        self.finished[job.id] = job
        self._forward(job, outcome)
        inbox = self.inboxes.get(job.origin)
        if inbox is not None:
            inbox.ended.append(job.id)
            inbox.ready.set()
        self._expire()

    def _forward(self, job: ClusterJob, items: list[Any]) -> None:
        for subscriber in job.subscribers:
            inbox = self.inboxes.get(_gateway_of(subscriber))
            if inbox is not None:
                inbox.items.append((subscriber, items))
                inbox.ready.set()

    def _expire(self) -> None:
        now = time.monotonic()
        keep_s, keep_bytes = self.config.server.keep_results_s, self.config.server.keep_results_bytes
        kept = sum(j.outcome_bytes for j in self.finished.values())
        while self.finished:
            oldest = next(iter(self.finished.values()))
            if now - oldest.finished_at < keep_s and kept <= keep_bytes:
                break
            kept -= oldest.outcome_bytes
            del self.finished[oldest.id]
            del self.jobs[oldest.id]


def refusing(call: Callable[[], Any]) -> Reply:
    """``call``'s value, or the ProtocolError it raised, as a Reply for another process."""
    try:
        return Reply(call())
    except ProtocolError as exc:
        return Reply(refusal=Refusal.of(exc))


async def refusing_async(work: Awaitable[Any]) -> Reply:
    """``refusing`` for a coroutine."""
    try:
        return Reply(await work)
    except ProtocolError as exc:
        return Reply(refusal=Refusal.of(exc))


def _gateway_of(subscriber: str) -> str:
    return subscriber.split("/", 1)[0]


def _same_owner(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
