"""Plain records passed between the cluster's deployments (pickled by Ray)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from protocol.errors import ProtocolError
from protocol.frames import ImageFrame
from protocol.messages import GenerateRequest


@dataclass(frozen=True)
class Refusal:
    """A ProtocolError carried across processes (Ray's wrapping of exceptions would hide
    its code)."""
    code: str
    message: str
    field: Optional[str] = None

    @staticmethod
    def of(exc: ProtocolError) -> "Refusal":
        return Refusal(str(exc.code), exc.message, exc.field)

    def error(self) -> ProtocolError:
        return ProtocolError(self.code, self.message, self.field)


@dataclass(frozen=True)
class Reply:
    value: Any = None
    refusal: Optional[Refusal] = None

    def unwrap(self) -> Any:
        if self.refusal is not None:
            raise self.refusal.error()
        return self.value


@dataclass(frozen=True)
class JobTask:
    """One job as the scheduler sends it to a worker replica."""
    job_id: str
    owner: str
    request: GenerateRequest
    uploads: Mapping[str, ImageFrame]
    default_model: str
    target: str                      # the replica the scheduler chose (routing.TargetedRouter)


@dataclass(frozen=True)
class WorkerReport:
    """What a worker replica says of itself after each job or load."""
    replica: str
    name: str                        # its Ray actor name
    device: str
    models: tuple[str, ...]          # models resident in its store
    weight_loads: int                # times its store read weights from disk
    memory: tuple[int, int]


@dataclass(frozen=True)
class Delivery:
    """What one long-poll of a gateway brings: events for its subscribers, jobs of its
    submits that ended (their upload holds are let go), and the cluster's summary."""
    events: list[tuple[str, list[Any]]] = field(default_factory=list)   # (subscriber, items)
    ended: list[str] = field(default_factory=list)
    default_model: Optional[str] = None
    device: str = "cluster"
    memory: tuple[int, int] = (0, 0)
