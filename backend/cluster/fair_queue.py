"""The cluster's queue and routing decisions, as plain data (the scheduler acts on them).

Fair sharing: jobs wait per owner (client key); the next job is taken round-robin across
owners, so one client's burst of 50 delays another's single job by at most one job per
busy worker. Affinity: a job goes to a free worker already holding its model; a model
held only by busy workers waits for one of them unless its backlog is long, and a model
nobody holds is loaded on the free worker holding the fewest models.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Optional


class FairQueue:
    """Job ids waiting, per owner, served round-robin across owners."""

    def __init__(self) -> None:
        # owner -> its waiting job ids, oldest first; owners in turn order
        self._owners: collections.OrderedDict[str, collections.deque[str]] = \
            collections.OrderedDict()

    def __len__(self) -> int:
        return sum(len(jobs) for jobs in self._owners.values())

    def owned_by(self, owner: str) -> int:
        return len(self._owners.get(owner, ()))

    def push(self, owner: str, job_id: str, *, first: bool = False) -> None:
        """``first``: ahead of the owner's other jobs (one to run again after a lost worker)."""
        jobs = self._owners.setdefault(owner, collections.deque())
        if first:
            jobs.appendleft(job_id)
        else:
            jobs.append(job_id)

    def remove(self, owner: str, job_id: str) -> bool:
        jobs = self._owners.get(owner)
        if jobs is None or job_id not in jobs:
            return False
        jobs.remove(job_id)
        if not jobs:
            del self._owners[owner]
        return True

    def in_turn(self) -> Iterator[tuple[str, str]]:
        """(owner, job id) in the order jobs should run: each owner's oldest first, in
        owners' turn order, then each owner's second, and so on."""
        depth = 0
        while True:
            found = False
            for owner, jobs in list(self._owners.items()):
                if depth < len(jobs):
                    found = True
                    yield owner, jobs[depth]
            if not found:
                return
            depth += 1

    def take(self, owner: str, job_id: str) -> None:
        """Remove a job that starts; its owner's turn passes (it goes to the back)."""
        self.remove(owner, job_id)
        if owner in self._owners:
            self._owners.move_to_end(owner)


@dataclass
class WorkerView:
    """What the scheduler knows of one worker replica."""
    name: str                       # Ray actor name of the replica (what ``ray.kill`` takes)
    device: str
    models: list[str] = field(default_factory=list)    # resident, least recent first
    loading: set[str] = field(default_factory=set)     # sent jobs of these, not yet reported
    busy: int = 0                   # jobs and loads sent to it and not yet answered
    jobs_run: int = 0
    weight_loads: int = 0
    memory: tuple[int, int] = (0, 0)

    def holds(self, model: str) -> bool:
        return model in self.models or model in self.loading

    def report(self, resident: tuple[str, ...], limit: int) -> None:
        """What the worker says it holds: routing counts its ``limit`` most recent."""
        self.models = list(resident)[-limit:]


def choose_worker(model: str, workers: Mapping[str, WorkerView], waiting_for_model: int,
                  spill_after: int = 2) -> Optional[str]:
    """The replica id to run a job of ``model`` on now, or None to keep it waiting.
    ``waiting_for_model``: queued jobs of that model (this one included)."""
    free = [rid for rid, w in workers.items() if w.busy == 0]
    if not free:
        return None
    holders = [rid for rid, w in workers.items() if w.holds(model)]
    free_holders = [rid for rid in free if rid in holders]
    if free_holders:
        return min(free_holders, key=lambda rid: (workers[rid].jobs_run, rid))
    if holders and waiting_for_model <= spill_after * len(holders):
        return None     # its holders are busy; loading it again elsewhere costs more
    return min(free, key=lambda rid: (len(workers[rid].models) + len(workers[rid].loading),
                                      workers[rid].jobs_run, rid))
