"""The cluster's own promises (issue 17), on a local Ray cluster with two worker and two
gateway replicas (the session's ``cluster`` fixture): jobs spread over workers, model
affinity, fairness between clients, a lost worker or gateway. Its queue and routing rules
are also tested as plain data, without Ray."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from backend.cluster.config import ClusterConfig
from backend.cluster.fair_queue import FairQueue, WorkerView, choose_worker
from backend.cluster.records import WorkerReport
from backend.cluster.scheduler import SchedulerCore, State
from benchmarks.local_cluster import SECOND_MODEL
from protocol.client import AtelierClient, ClientError
from protocol.errors import ErrorCode
from protocol.events import JobDone
from protocol.frames import FrameKind, ImageFrame, PixelFormat
from protocol.messages import Accepted, Cancelled, Error, GenerateRequest, Progress, Started

SMALL = dict(width=64, height=64, steps=3, prompt="a brick wall")


# ------------------------------------------------------------------ rules, without Ray
def test_the_queue_takes_owners_in_turn():
    queue = FairQueue()
    for i in range(5):
        queue.push("burst", f"b{i}")
    queue.push("single", "s0")
    queue.take("burst", "b0")            # the burst's first job started: its turn passes
    assert [job for _, job in queue.in_turn()][:2] == ["s0", "b1"]
    assert queue.remove("burst", "b3") and not queue.remove("single", "b4")
    assert len(queue) == 4 and queue.owned_by("burst") == 3


def test_routing_prefers_a_free_holder_waits_for_a_busy_one_and_loads_on_the_emptiest():
    workers = {"a": WorkerView("a", "cpu", models=["tiny"]),
               "b": WorkerView("b", "cpu", models=["tiny", "big"])}
    assert choose_worker("big", workers, 1) == "b"
    workers["b"].busy = 1
    assert choose_worker("big", workers, 1) is None       # its holder is busy: wait
    assert choose_worker("big", workers, 3) == "a"        # a backlog spills over
    assert choose_worker("other", workers, 1) == "a"      # nobody holds it: the free one
    workers["a"].busy = 1
    assert choose_worker("tiny", workers, 1) is None      # nobody is free


class WorkerDied(Exception):
    """What the stand-in workers below raise for Ray's actor errors."""


def scheduler_rules(max_workers: int, worker_fails=None):
    """A SchedulerCore with one registered stand-in worker whose jobs wait until the test
    ends them; returns (core, tasks sent, {job id: future to end it})."""
    report = WorkerReport("r1", "worker-1", "cpu", ("tiny",), 1, (0, 0))
    sent, endings = [], {}

    async def send_job(task):
        sent.append(task)
        endings[task.job_id] = asyncio.get_running_loop().create_future()
        await endings[task.job_id]
        return report

    async def send_load(target, name):
        raise AssertionError("no loads here")

    core = SchedulerCore(ClusterConfig(min_workers=1, max_workers=max_workers), send_job,
                         send_load, lost=(WorkerDied,))
    core.register_worker(report)
    return core, sent, endings


def test_the_scheduler_asks_for_one_more_worker_only_below_its_maximum():
    async def scenario(max_workers: int) -> tuple[int, int]:
        core, sent, _ = scheduler_rules(max_workers)
        for i in range(3):
            core.submit(GenerateRequest(**SMALL, seed=i), {}, "a" * 32, None, "g/1")
        await asyncio.sleep(0)
        return len(sent), len(core.queue)

    assert asyncio.run(scenario(2)) == (2, 1)    # one running, one as the demand signal
    assert asyncio.run(scenario(1)) == (1, 2)    # at its maximum: jobs wait their turn


def test_a_lost_worker_reruns_its_job_once_elsewhere_unless_result_images_were_sent():
    async def scenario() -> None:
        core, sent, endings = scheduler_rules(1)
        job, _ = core.submit(GenerateRequest(**SMALL, seed=1), {}, "a" * 32, None, "g/1")
        await asyncio.sleep(0)
        core.post(job, "r1", [Started(job_id=job)])
        endings[job].set_exception(WorkerDied("killed"))
        await asyncio.sleep(0)
        assert core.jobs[job].state == State.QUEUED and not core.jobs[job].outcome
        assert not core.workers        # until a new replica registers
        # the lost replica, should it answer after all, is told to stop
        assert core.post(job, "r1", [Progress(job_id=job, step=2, total=3)]) is True
        core.register_worker(WorkerReport("r2", "worker-2", "cpu", ("tiny",), 1, (0, 0)))
        await asyncio.sleep(0)
        assert [(t.job_id, t.target) for t in sent] == [(job, "r1"), (job, "r2")]
        core.post(job, "r2", [Started(job_id=job)])
        endings[job].set_exception(WorkerDied("killed again"))        # a second loss: fail
        await asyncio.sleep(0)
        [error] = core.jobs[job].outcome
        assert error.code == ErrorCode.WORKER_LOST and "retried once already" in error.message

        core.register_worker(WorkerReport("r3", "worker-3", "cpu", ("tiny",), 1, (0, 0)))
        partial, _ = core.submit(GenerateRequest(**{**SMALL, "batch_size": 2}, seed=2), {},
                                 "a" * 32, None, "g/1")
        await asyncio.sleep(0)
        core.post(partial, "r3", [Started(job_id=partial), ImageFrame(
            FrameKind.RESULT, PixelFormat.RGBA8, 0, 64, 64, "0" * 32, bytes(64 * 64 * 4))])
        endings[partial].set_exception(WorkerDied("killed between its images"))
        await asyncio.sleep(0)
        [error] = core.jobs[partial].outcome
        assert error.code == ErrorCode.WORKER_LOST and "not retried" in error.message

        core.register_worker(WorkerReport("r4", "worker-4", "cpu", ("tiny",), 1, (0, 0)))
        cancelling, _ = core.submit(GenerateRequest(**SMALL, seed=4), {}, "a" * 32, None, "g/1")
        await asyncio.sleep(0)
        core.post(cancelling, "r4", [Started(job_id=cancelling)])
        assert core.cancel(cancelling, "a" * 32, "g/1") == []
        endings[cancelling].set_exception(WorkerDied("killed while cancelling"))
        await asyncio.sleep(0)
        assert core.jobs[cancelling].outcome == [Cancelled(job_id=cancelling)]

        core.register_worker(WorkerReport("r5", "worker-5", "cpu", ("tiny",), 1, (0, 0)))
        never, _ = core.submit(GenerateRequest(**SMALL, seed=3), {}, "a" * 32, None, "g/1")
        await asyncio.sleep(0)
        endings[never].set_exception(WorkerDied("killed before it started"))
        await asyncio.sleep(0)
        assert core.jobs[never].state == State.QUEUED and len(core.queue) == 1

    asyncio.run(scenario())


def test_cluster_serve_takes_its_layout_from_a_file_and_flags_win(tmp_path):
    from backend.cli import _parser
    from backend.cluster.cli import cluster_config

    layout = tmp_path / "studio.toml"
    layout.write_text("[cluster]\nmin_workers = 2\nmax_workers = 6\ngateways = 3\n"
                      "worker_gpus = 1\nmax_queue = 500\n")
    args = _parser().parse_args(["cluster", "serve", "--config", str(layout), "--max-workers",
                                 "8", "--host", "0.0.0.0", "--home", str(tmp_path)])
    config = cluster_config(args)
    assert (config.min_workers, config.max_workers, config.gateways) == (2, 8, 3)
    assert config.max_queue == config.limits.max_queue == 500
    assert config.server.token     # not loopback: a token was generated, as for serve
    layout.write_text("[cluster]\nmin_wokers = 2\n")
    with pytest.raises(ValueError, match="min_wokers"):
        cluster_config(_parser().parse_args(["cluster", "serve", "--config", str(layout)]))


# ------------------------------------------------------------------ on a local Ray cluster
def connected(url: str, **kw) -> AtelierClient:
    client = AtelierClient(url, client_name="pytest-cluster", **kw).start()
    client.wait_connected(timeout=30)
    return client


def run_all(client: AtelierClient, requests: list[GenerateRequest],
            timeout: float = 120) -> list[JobDone]:
    return [client.run_job(r, (), timeout=timeout) for r in requests]


def test_concurrent_clients_jobs_spread_over_both_workers(cluster):
    done: dict[str, list[JobDone]] = {}

    def client_jobs(name: str, seed: int) -> None:
        with connected(cluster.url) as c:
            done[name] = run_all(c, [GenerateRequest(**SMALL, seed=seed + i) for i in range(4)])

    threads = [threading.Thread(target=client_jobs, args=(n, s)) for n, s in (("a", 0), ("b", 50))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    ids = {d.job_id for jobs in done.values() for d in jobs}
    assert len(ids) == 8
    where = {job: replica for job, replica, _ in cluster.stats()["placements"] if job in ids}
    assert len(where) == 8 and len(set(where.values())) == 2, where


def test_jobs_naming_two_models_land_on_the_replicas_holding_them(cluster):
    before = cluster.stats()
    loads_before = sum(w["weight_loads"] for w in before["workers"].values())
    done: dict[str, list[JobDone]] = {}

    def client_jobs(model: str) -> None:
        with connected(cluster.url) as c:
            done[model] = run_all(c, [GenerateRequest(**SMALL, seed=i, model=model)
                                      for i in range(4)])

    threads = [threading.Thread(target=client_jobs, args=(m,)) for m in ("tiny", SECOND_MODEL)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert {d.result.model for d in done[SECOND_MODEL]} == {SECOND_MODEL}
    after = cluster.stats()
    where = {job: replica for job, replica, _ in after["placements"]}
    second = {where[d.job_id] for d in done[SECOND_MODEL]}
    assert len(second) == 1, f"{SECOND_MODEL} ran on {second}: loaded more than once"
    [holder] = second
    assert SECOND_MODEL in after["workers"][holder]["models"]
    # one read of its weights from disk for four jobs; the default model was resident
    assert sum(w["weight_loads"] for w in after["workers"].values()) - loads_before == 1


def test_one_clients_burst_does_not_starve_anothers_single_job(cluster):
    with connected(cluster.url) as burst, connected(cluster.url) as single:
        # Each burst job runs long enough (40 steps, ~0.5 s) that submitting all 50 cannot
        # outlast the burst on a quiet machine; 3-step jobs were all done before the single.
        refs = [burst.submit(GenerateRequest(**{**SMALL, "steps": 40}, seed=i))
                for i in range(50)]
        accepted: dict[str, str] = {}
        burst_done: list[str] = []

        def drain(budget_s: float = 0.2) -> None:
            # Bounded: the burst's progress events never go quiet while it runs, so reading
            # until a pause would wait out the whole burst.
            deadline = time.monotonic() + budget_s
            while time.monotonic() < deadline:
                try:
                    event = burst.next_event(0.05)
                except ClientError:
                    return
                if isinstance(event, Accepted):
                    accepted[event.ref] = event.job_id
                elif isinstance(event, JobDone):
                    burst_done.append(event.job_id)

        while len(accepted) < 50:
            drain()
        alone = single.run_job(GenerateRequest(**SMALL, seed=99), (), timeout=120)
        assert isinstance(alone, JobDone)
        drain()
        assert 50 - len(burst_done) >= 10, "the burst was nearly over before the single job"
        # In turn: once queued, the single job waits for at most one more of the burst's
        # (whose turn it was), not for the burst's remaining queue.
        history = [tuple(entry) for entry in cluster.stats()["history"]]
        queued = history.index(("queued", alone.job_id))
        started = history.index(("dispatched", alone.job_id))
        overtaking = [job for kind, job in history[queued:started] if kind == "dispatched"]
        assert len(overtaking) <= 1, f"{len(overtaking)} of the burst's jobs went first"
        # the rest of the burst is still queued: cancelling each ends it before it starts
        finished = set(burst_done)
        waiting = [accepted[r] for r in refs if accepted[r] not in finished]
        for job_id in waiting:
            burst.cancel(job_id)
        ended = set()
        deadline = time.monotonic() + 120
        while len(ended) < len(waiting) and time.monotonic() < deadline:
            event = burst.next_event(60)
            if isinstance(event, (Cancelled, JobDone)):
                ended.add(event.job_id)
            elif isinstance(event, Error) and event.job_id:
                ended.add(event.job_id)
        assert ended >= set(waiting)


def wait_healthy(cluster, timeout: float = 180) -> None:
    """Until Serve has replaced killed replicas and both workers are registered again."""
    from ray import serve

    from backend.cluster.config import APP_NAME

    deadline = time.monotonic() + timeout
    while True:
        app = serve.status().applications.get(APP_NAME)
        workers = cluster.stats()["workers"]
        if app is not None and str(app.status).endswith("RUNNING") and \
                len(workers) == cluster.config.min_workers:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the cluster did not recover: {app}, workers {workers}")
        time.sleep(0.5)


def test_fetch_through_another_gateway_after_the_first_was_lost(cluster):
    from backend.cluster.deployments import GATEWAY

    with connected(cluster.url) as first:
        ref = first.submit(GenerateRequest(**{**SMALL, "steps": 30}, seed=5))
        job_id = first.wait_for(lambda e: isinstance(e, Accepted) and e.ref == ref, 30).job_id
        key = first.client_key
        origin = cluster.stats()["origins"][job_id]
        [gateway] = [n for n in cluster.serve_actor_names(GATEWAY) if n.endswith(origin)]
        cluster.kill_actor(gateway)
    deadline = time.monotonic() + 60
    while True:      # Serve's proxy may still route to the lost replica for a moment
        try:
            back = connected(cluster.url, client_key=key, reconnect=False)
            break
        except ClientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    with back:
        back.fetch(job_id)
        done = back.wait_for(lambda e: isinstance(e, (JobDone, Error)), 120)
        assert isinstance(done, JobDone) and done.job_id == job_id
    wait_healthy(cluster)


def test_a_worker_killed_mid_job_has_that_job_run_again_on_another(cluster):
    with connected(cluster.url) as c:
        ref = c.submit(GenerateRequest(**{**SMALL, "steps": 150}, seed=6))
        job_id = c.wait_for(lambda e: isinstance(e, Accepted) and e.ref == ref, 30).job_id
        c.wait_for(lambda e: isinstance(e, Progress) and e.job_id == job_id and e.step > 1, 60)
        stats = cluster.stats()
        replica = stats["running"][job_id]
        cluster.kill_actor(stats["workers"][replica]["name"])
        killed = time.monotonic()
        seen: list = []
        end = c.wait_for(lambda e: isinstance(e, (JobDone, Error, Cancelled))
                         and getattr(e, "job_id", None) == job_id, 120, seen.append)
        assert isinstance(end, JobDone), end
        assert time.monotonic() - killed < 90
        # its client saw it start again, and its progress from the first steps
        ours = [e for e in seen if getattr(e, "job_id", None) == job_id]
        again = next(i for i, e in enumerate(ours) if isinstance(e, Started))
        steps = [e.step for e in ours[again:] if isinstance(e, Progress)]
        assert steps and steps[0] <= 2 and steps[-1] == 150
        ran_on = [r for j, r, _ in cluster.stats()["placements"] if j == job_id]
        assert ran_on and replica not in ran_on
        # the cluster serves on, and a fetch of the job gives its result again
        assert isinstance(c.run_job(GenerateRequest(**SMALL, seed=7), (), timeout=120), JobDone)
        c.fetch(job_id)
        assert isinstance(c.wait_for(lambda e: isinstance(e, (JobDone, Error))
                                     and e.job_id == job_id, 30), JobDone)
    wait_healthy(cluster)


def test_a_restarted_scheduler_gets_its_workers_back_and_serves_on(cluster):
    """The scheduler's state is in memory (README): kill it, and Serve starts a new one
    that forgets queued and finished jobs but learns its workers again and runs jobs."""
    from backend.cluster.deployments import SCHEDULER

    [scheduler] = cluster.serve_actor_names(SCHEDULER)
    cluster.kill_actor(scheduler)
    wait_healthy(cluster)
    with connected(cluster.url) as c:
        assert isinstance(c.run_job(GenerateRequest(**SMALL, seed=8), (), timeout=120), JobDone)
