"""Recent jobs with the settings that made them, to recall or re-run."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Iterator

from .geometry import Bounds, Extent
from .guides import guides_text
from .jobs import JobSettings, Mode
from .loras import loras_text


@dataclass(frozen=True)
class ResultImage:
    """A finished image: BGRA covering the job's region (b"" once History let it go),
    its seed, and a small RGBA thumbnail."""
    bgra: bytes
    seed: int
    thumb: bytes
    thumb_size: Extent

    def without_pixels(self) -> "ResultImage":
        return replace(self, bgra=b"")


@dataclass(frozen=True)
class HistoryEntry:
    mode: Mode
    settings: JobSettings        # seed resolved to the one the daemon used, when known
    region: Bounds
    outcome: str                 # "done", "cancelled" or the error message
    seeds: tuple[int, ...] = ()
    seconds: float = 0.0
    finished_at: float = field(default_factory=time.time)
    images: tuple[ResultImage, ...] = ()    # thumbnails, and pixels while kept

    @property
    def has_pixels(self) -> bool:
        return any(image.bgra for image in self.images)

    def summary(self) -> str:
        prompt = " ".join(self.settings.prompt.split()) or "(no prompt)"
        if len(prompt) > 48:
            prompt = prompt[:47] + "\u2026"
        seeds = ", ".join(str(s) for s in self.seeds) or "-"
        extras = ""
        if self.settings.loras:
            extras += f" | LoRAs {loras_text(self.settings.loras)}"
        if self.settings.sampler_preset:
            extras += f" | preset {self.settings.sampler_preset}"
        if not self.settings.guides.empty:
            extras += f" | {guides_text(self.settings.guides)}"
        return (f"{self.mode.label}: {prompt} | seed {seeds}{extras} | {self.region} | "
                f"{self.outcome}")


class History:
    """The newest ``limit`` jobs, newest first."""

    def __init__(self, limit: int = 30, pixel_budget: int = 256 * 1024 * 1024):
        if limit <= 0:
            raise ValueError("history limit must be positive")
        self._entries: deque[HistoryEntry] = deque(maxlen=limit)
        self.pixel_budget = pixel_budget

    def add(self, entry: HistoryEntry) -> None:
        """Newest first. Results' pixels are kept (to preview and apply them again) for the
        newest entries within ``pixel_budget`` bytes; older ones keep their thumbnails."""
        self._entries.appendleft(entry)
        used = 0
        for index, kept in enumerate(self._entries):
            size = sum(len(image.bgra) for image in kept.images)
            if size and used + size > self.pixel_budget:
                self._entries[index] = replace(
                    kept, images=tuple(image.without_pixels() for image in kept.images))
            else:
                used += size

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> HistoryEntry:
        return self._entries[index]

    def __iter__(self) -> Iterator[HistoryEntry]:
        return iter(self._entries)
