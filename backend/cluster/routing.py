"""Serve's request router for the worker deployment: a job or load goes to the replica the
scheduler chose (its ``target``). Serve's own routers pick by queue length or multiplexed
model id; the scheduler already weighed fairness, affinity and load, so this one obeys.
A target that is not (or no longer) a replica lets any replica take the request."""

from __future__ import annotations

from typing import Any, List, Optional

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica


def target_of(args: List[Any]) -> str:
    first = args[0] if args else None
    return first if isinstance(first, str) else getattr(first, "target", "")


class TargetedRouter(FIFOMixin, RequestRouter):
    async def choose_replicas(self, candidate_replicas: List[RunningReplica],
                              pending_request: Optional[PendingRequest] = None
                              ) -> List[List[RunningReplica]]:
        target = target_of(pending_request.args) if pending_request is not None else ""
        chosen = [r for r in candidate_replicas if r.replica_id.unique_id == target]
        return [chosen] if chosen else [candidate_replicas]
