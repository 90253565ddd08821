"""The contract between the job layer and the pipelines: plain data in, plain data out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Protocol

from protocol.frames import ImageFrame
from protocol.messages import GenerateRequest


@dataclass(frozen=True)
class Pixels:
    """An 8-bit RGBA image, rows top to bottom."""
    width: int
    height: int
    rgba: bytes


@dataclass(frozen=True)
class GeneratedImage:
    pixels: Pixels
    seed: int
    label: Optional[str] = None   # what it is, where a job returns several kinds (ImageInfo.label)


@dataclass(frozen=True)
class GenerationOutput:
    images: list[GeneratedImage]
    params: GenerateRequest       # the request as run: seed resolved, sizes settled
    tiling: str                   # what was actually applied
    model: str


class JobCancelled(Exception):
    """Raised inside a generation when its job was cancelled."""


# step (1-based), total steps, preview pixels when one was due at this step
ProgressSink = Callable[[int, int, Optional[Pixels]], None]


class Generator(Protocol):
    def check(self, job: GenerateRequest, uploads: Mapping[str, ImageFrame]) -> None:
        """Check what needs no model (sizes, uploads, masks) before the job is queued:
        ProtocolError naming the field. Runs on a thread of its own, beside the worker."""
        ...

    def generate(self, job: GenerateRequest, uploads: Mapping[str, ImageFrame],
                 progress: ProgressSink, cancelled: Callable[[], bool]) -> GenerationOutput:
        """Run one job on the worker thread. Raise ProtocolError for bad input (with the
        field and limit), JobCancelled when ``cancelled()`` turned true, anything else
        for a failure of this job alone."""
        ...
