"""What the client hands to its user, beside the daemon's own messages."""

from __future__ import annotations

from dataclasses import dataclass

from .frames import ImageFrame
from .messages import Result, Welcome


@dataclass(frozen=True)
class Connected:
    welcome: Welcome


@dataclass(frozen=True)
class Disconnected:
    reason: str
    will_retry: bool


@dataclass(frozen=True)
class PreviewImage:
    job_id: str
    step: int
    image: ImageFrame


@dataclass(frozen=True)
class JobDone:
    """A finished job: the daemon's ``Result`` and its images, ordered by index."""
    result: Result
    images: list[ImageFrame]

    @property
    def job_id(self) -> str:
        return self.result.job_id
