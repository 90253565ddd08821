"""The cluster's three Serve deployments: one ``Scheduler`` (queue, records, routing), the
``Worker`` replicas (one per GPU, each the daemon's own job layer and pipelines) and the
``Gateway`` replicas (protocol v1 over websockets, the daemon's own ``Session``)."""

# No ``from __future__ import annotations`` here: FastAPI reads the websocket route's
# parameter types at runtime, and a string "WebSocket" would make it a query parameter.
import asyncio
import concurrent.futures
import logging
from typing import Any, Callable, Mapping, Optional

import ray
from fastapi import FastAPI, WebSocket
from ray import serve
from ray.serve.handle import DeploymentHandle

from protocol.errors import ProtocolError
from protocol.frames import ImageFrame
from protocol.messages import Cancelled, Error, GenerateRequest, Result

from ..jobs import JobManager, OwnStatus, Subscriber
from ..server import refusal, serve_connection
from ..uploads import Hold, UploadBudget
from .config import APP_NAME, ClusterConfig
from .records import Delivery, JobTask, Reply, WorkerReport
from .scheduler import SchedulerCore, refusing, refusing_async
from .transport import StarletteTransport, refuse

log = logging.getLogger("atelier.cluster")

SCHEDULER = "AtelierScheduler"
WORKER = "AtelierWorker"
GATEWAY = "AtelierGateway"
PULL_WAIT_S = 10.0


# ---------------------------------------------------------------------- scheduler
@serve.deployment(name=SCHEDULER, num_replicas=1, max_ongoing_requests=10_000)
class Scheduler:
    """``SchedulerCore`` behind a Serve handle. One replica: the queue and the records are
    the cluster's single source of truth (README: what this means at 80 GPUs)."""

    def __init__(self, config: ClusterConfig, workers: DeploymentHandle):
        self.core = SchedulerCore(config, self._send_job, self._send_load,
                                  lost=(ray.exceptions.RayActorError,
                                        ray.exceptions.ActorUnavailableError))
        self._workers = workers

    async def _send_job(self, task: JobTask) -> WorkerReport:
        return await self._workers.run.remote(task)

    async def _send_load(self, target: str, name: str) -> tuple[tuple[str, str], WorkerReport]:
        reply: Reply = await self._workers.load.remote(target, name)
        return reply.unwrap()

    async def register_worker(self, report: WorkerReport) -> None:
        self.core.register_worker(report)

    async def post(self, job_id: str, replica: str, items: list[Any]) -> bool:
        return self.core.post(job_id, replica, items)

    async def submit(self, request: GenerateRequest, uploads: Mapping[str, ImageFrame],
                     owner: str, live: Optional[str], subscriber: str) -> Reply:
        return refusing(lambda: self.core.submit(request, uploads, owner, live, subscriber))

    async def cancel(self, job_id: str, owner: str, subscriber: str) -> Reply:
        return refusing(lambda: self.core.cancel(job_id, owner, subscriber))

    async def fetch(self, job_id: str, owner: str, subscriber: str) -> Reply:
        return refusing(lambda: self.core.fetch(job_id, owner, subscriber))

    async def unsubscribe(self, subscriber: str) -> None:
        self.core.unsubscribe(subscriber)

    async def own_status(self, owner: str) -> Reply:
        return refusing(lambda: self.core.own_status(owner))

    async def load_model(self, name: str) -> Reply:
        return await refusing_async(self.core.load_model(name))

    async def pull(self, gateway: str, wait_s: float) -> Delivery:
        return await self.core.pull(gateway, wait_s)

    async def stats(self) -> dict[str, Any]:
        return self.core.stats()


# ---------------------------------------------------------------------- worker
@serve.deployment(name=WORKER, max_ongoing_requests=2, health_check_period_s=5,
                  request_router_config={"request_router_class":
                                         "backend.cluster.routing:TargetedRouter"})
class Worker:
    """One GPU: a model store, the generator over it and the daemon's JobManager, which
    runs the scheduler's jobs one at a time on its own thread."""

    async def __init__(self, config: ClusterConfig):  # type: ignore[misc]  (Serve awaits it)
        from ..app import create_generator, create_store

        self.config = config
        self.store = create_store(model=config.model, **config.store_options())
        generator = create_generator(self.store, config.limits)
        self.jobs = JobManager(generator, asyncio.get_running_loop(),
                               max_queue=config.max_queue, keep_results_s=60.0,
                               after_out_of_memory=self.store.after_out_of_memory)
        await self.jobs.run_on_worker(lambda: self.store.load(config.model))
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.name = ray.get_runtime_context().get_actor_name() or self.replica
        self.scheduler = serve.get_deployment_handle(SCHEDULER, APP_NAME)
        await self.scheduler.register_worker.remote(self._report())

    def check_health(self) -> None:
        """Serve asks every few seconds; the answer also registers this worker again
        (idempotent, not awaited), so a scheduler that was restarted, and so forgot its
        workers, has them back within one period."""
        self.scheduler.register_worker.remote(self._report())

    def _report(self) -> WorkerReport:
        return WorkerReport(self.replica, self.name, self.store.device,
                            tuple(self.store.resident()), self.store.weight_loads,
                            self.store.memory())

    async def load(self, target: str, name: str) -> Reply:
        """Load ``name`` and make it this worker's default (``target``: for the router)."""
        async def load() -> tuple[tuple[str, str], WorkerReport]:
            model = await self.jobs.run_on_worker(lambda: self.store.load(name))
            return (model.name, model.family), self._report()

        return await refusing_async(load())

    async def run(self, task: JobTask) -> WorkerReport:
        """Run ``task`` through the job layer, pushing its events to the scheduler (whose
        answers carry a cancel); returns once its outcome is posted."""
        current = self.store.current
        if task.request.model is None and (current is None or current.name != task.default_model):
            try:       # the cluster's default changed (load_model) since this worker loaded
                await self.jobs.run_on_worker(lambda: self.store.load(task.default_model))
            except ProtocolError as exc:
                await self.scheduler.post.remote(task.job_id, self.replica, [Error(
                    code=exc.code, message=exc.message, field=exc.field, job_id=task.job_id)])
                return self._report()
        pending: list[Any] = []
        woken = asyncio.Event()

        def collect(item: Any) -> None:
            pending.append(item)
            woken.set()

        self.jobs.submit(task.request, task.uploads, collect, task.owner, job_id=task.job_id)
        cancelling = False
        while True:
            await woken.wait()
            woken.clear()
            items, pending[:] = list(pending), []
            stop = await self.scheduler.post.remote(task.job_id, self.replica, items)
            if any(isinstance(i, (Result, Error, Cancelled)) for i in items):
                return self._report()
            if stop and not cancelling:
                cancelling = True
                try:
                    await self.jobs.cancel(task.job_id, task.owner, collect)
                except ProtocolError:
                    pass     # it ended here meanwhile: its outcome is on its way


# ---------------------------------------------------------------------- gateway
class ClusterJobs:
    """The gateway's job service (server.JobService) over the scheduler. Subscribers are
    this replica's sessions; the scheduler knows them as ``<gateway>/<n>``, and one pull
    loop brings their events (``pump``)."""

    def __init__(self, scheduler: DeploymentHandle, gateway: str):
        self.scheduler = scheduler
        self.gateway = gateway
        self._ids: dict[Subscriber, str] = {}
        self._subscribers: dict[str, Subscriber] = {}
        self._holds: dict[str, list[Hold]] = {}      # upload bytes of jobs submitted here
        self._next = 0
        self.latest = Delivery()

    def _id_of(self, subscriber: Subscriber) -> str:
        sid = self._ids.get(subscriber)
        if sid is None:
            self._next += 1
            sid = self._ids[subscriber] = f"{self.gateway}/{self._next}"
            self._subscribers[sid] = subscriber
        return sid

    async def enqueue(self, request: GenerateRequest, uploads: Mapping[str, ImageFrame],
                      subscriber: Subscriber, owner: str, holds: list[Hold],
                      live: Optional[str]) -> tuple[str, int]:
        reply: Reply = await self.scheduler.submit.remote(request, dict(uploads), owner, live,
                                                          self._id_of(subscriber))
        job_id, position = reply.unwrap()
        self._holds[job_id] = list(holds)
        return job_id, position

    async def cancel(self, job_id: str, owner: str, subscriber: Subscriber) -> None:
        reply: Reply = await self.scheduler.cancel.remote(job_id, owner, self._id_of(subscriber))
        for item in reply.unwrap():
            subscriber(item)

    async def fetch(self, job_id: str, owner: str, subscriber: Subscriber) -> None:
        reply: Reply = await self.scheduler.fetch.remote(job_id, owner, self._id_of(subscriber))
        for item in reply.unwrap():
            subscriber(item)

    async def own_status(self, owner: str) -> OwnStatus:
        reply: Reply = await self.scheduler.own_status.remote(owner)
        return reply.unwrap()

    def unsubscribe(self, subscriber: Subscriber) -> None:
        sid = self._ids.pop(subscriber, None)
        if sid is not None:
            self._subscribers.pop(sid, None)
            self.scheduler.unsubscribe.remote(sid)

    def run_on_worker(self, fn: Callable[[], Any]) -> "asyncio.Future[Any]":
        """Blocking model calls (``load_model``) wait on a thread, off the event loop."""
        return asyncio.get_running_loop().run_in_executor(None, fn)

    async def pump(self) -> None:
        """Bring this replica's events home, one long-poll after another."""
        while True:
            try:
                delivery: Delivery = await self.scheduler.pull.remote(self.gateway, PULL_WAIT_S)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("pulling events from the scheduler failed; trying again")
                await asyncio.sleep(1.0)
                continue
            self.take(delivery)

    def take(self, delivery: Delivery) -> None:
        self.latest = delivery
        for sid, items in delivery.events:
            subscriber = self._subscribers.get(sid)
            if subscriber is not None:
                for item in items:
                    subscriber(item)
        for job_id in delivery.ended:
            for hold in self._holds.pop(job_id, ()):
                hold.release()


class ClusterModels:
    """The gateway's model service (server.ModelService): the cluster's default model,
    devices and memory as the scheduler last told them; the catalog from the model folders
    (every host mounts the same ones); loads run on a worker."""

    def __init__(self, config: ClusterConfig, jobs: ClusterJobs,
                 loop: asyncio.AbstractEventLoop):
        self._config = config
        self._jobs = jobs
        self._loop = loop

    @property
    def device(self) -> str:
        return self._jobs.latest.device

    def current_name(self) -> Optional[str]:
        return self._jobs.latest.default_model

    def catalog(self):
        from ..app import list_models

        return list_models(home=self._config.home, models_dirs=list(self._config.models_dirs))

    def load(self, name: str) -> tuple[str, str]:
        """On a thread (``ClusterJobs.run_on_worker``): waits for a worker to load it."""
        async def load() -> tuple[str, str]:
            reply: Reply = await self._jobs.scheduler.load_model.remote(name)
            return reply.unwrap()

        loaded = asyncio.run_coroutine_threadsafe(load(), self._loop).result()
        self._jobs.latest = Delivery(default_model=loaded[0], device=self._jobs.latest.device,
                                     memory=self._jobs.latest.memory)
        return loaded

    def memory(self) -> tuple[int, int]:
        return self._jobs.latest.memory

    def after_out_of_memory(self) -> None:
        pass     # workers free their own device memory


gateway_api = FastAPI()


@serve.deployment(name=GATEWAY, max_ongoing_requests=10_000)
@serve.ingress(gateway_api)
class Gateway:
    """Protocol v1 on ``/``: the daemon's handshake rules (server.refusal) and its
    ``Session``, over the cluster's job service. Any replica serves any client."""

    async def __init__(self, config: ClusterConfig, scheduler: DeploymentHandle):  # type: ignore[misc]
        from ..app import create_generator, create_store

        self.config = config.server
        replica = serve.get_replica_context().replica_id.unique_id
        self.jobs = ClusterJobs(scheduler, replica)
        self.models = ClusterModels(config, self.jobs, asyncio.get_running_loop())
        # Only ``check`` runs here (what needs no model): a store with nothing loaded.
        store = create_store(model=config.model,
                             **{**config.store_options(), "device": "cpu", "dtype": "fp32"})
        self.generator = create_generator(store, config.limits)
        self.uploads = UploadBudget(config.limits.max_upload_bytes,
                                    config.limits.max_total_upload_bytes)
        self.checks = concurrent.futures.ThreadPoolExecutor(1, "atelier-check")
        self.sessions: set = set()
        self.jobs.take(await scheduler.pull.remote(replica, 0.0))
        self._pump = asyncio.get_running_loop().create_task(self.jobs.pump())

    @property
    def job_service(self) -> ClusterJobs:
        return self.jobs

    @gateway_api.websocket("/")
    async def connect(self, websocket: WebSocket) -> None:
        refused = refusal(self.config, websocket.headers.getlist, len(self.sessions))
        if refused is not None:
            log.info("refused a connection: %s", refused[1].strip())
            await refuse(websocket, *refused)
            return
        await websocket.accept()
        await serve_connection(self, StarletteTransport(websocket,
                                                        self.config.limits.max_message_bytes))
