"""Recent jobs with the settings that made them, to recall or re-run."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

from .geometry import Bounds
from .jobs import JobSettings, Mode


@dataclass(frozen=True)
class HistoryEntry:
    mode: Mode
    settings: JobSettings        # seed resolved to the one the daemon used, when known
    region: Bounds
    outcome: str                 # "done", "cancelled" or the error message
    seeds: tuple[int, ...] = ()
    seconds: float = 0.0
    finished_at: float = field(default_factory=time.time)

    def summary(self) -> str:
        prompt = " ".join(self.settings.prompt.split()) or "(no prompt)"
        if len(prompt) > 48:
            prompt = prompt[:47] + "\u2026"
        seeds = ", ".join(str(s) for s in self.seeds) or "-"
        return f"{self.mode.label}: {prompt} | seed {seeds} | {self.region} | {self.outcome}"


class History:
    """The newest ``limit`` jobs, newest first."""

    def __init__(self, limit: int = 30):
        if limit <= 0:
            raise ValueError("history limit must be positive")
        self._entries: deque[HistoryEntry] = deque(maxlen=limit)

    def add(self, entry: HistoryEntry) -> None:
        self._entries.appendleft(entry)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> HistoryEntry:
        return self._entries[index]

    def __iter__(self) -> Iterator[HistoryEntry]:
        return iter(self._entries)
