"""The three ways a generation benchmark runs one job, each timed the same way:

- ``StockRunner``: a plain diffusers pipeline loaded with ``from_pretrained`` and called
  directly, default attention, the same sampler (Euler) and sizes;
- ``AtelierRunner``: Atelier's model store and ``DiffusionGenerator`` called directly, with
  the speed levers of ``backend.models.accel``;
- ``DaemonRunner``: the same store and generator behind the real daemon, driven through
  the real client over loopback (submit -> last result byte at the client).

Each call returns a ``CallTiming``: total seconds, the time of every step end and of the
first preview, all measured from the start of the call.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from diffusers import DiffusionPipeline, EulerDiscreteScheduler

from backend.app import StoreService
from backend.generation import Pixels
from backend.models.sources import operator_paths
from backend.models.store import ModelStore
from backend.models.accel import AccelOptions
from backend.pipelines.generator import DiffusionGenerator
from backend.server import Daemon, DaemonThread, ServerConfig
from protocol.client import AtelierClient
from protocol.events import JobDone, PreviewImage
from protocol.frames import ImageFrame
from protocol.messages import GenerateRequest, Progress

from .hardware import synchronize

PROMPT = "a photo of a mossy stone wall in warm evening light, seamless texture, high detail"
NEGATIVE = "blurry, low quality"


@dataclass
class CallTiming:
    total_s: float
    step_ends_s: list[float] = field(default_factory=list)
    first_preview_s: Optional[float] = None

    @property
    def it_per_s(self) -> Optional[float]:
        """Sampler steps per second between the first and the last step end."""
        ends = self.step_ends_s
        if len(ends) < 2 or ends[-1] <= ends[0]:
            return None
        return (len(ends) - 1) / (ends[-1] - ends[0])


class _Clock:
    def __init__(self, device: str):
        self.device = device
        self.started = time.perf_counter()
        self.timing = CallTiming(0.0)

    def step(self, preview: bool = False) -> None:
        synchronize(self.device)   # step ends are only meaningful once the GPU got there
        now = time.perf_counter() - self.started
        self.timing.step_ends_s.append(now)
        if preview and self.timing.first_preview_s is None:
            self.timing.first_preview_s = now

    def stop(self) -> CallTiming:
        synchronize(self.device)
        self.timing.total_s = time.perf_counter() - self.started
        return self.timing


def job_request(width: int, height: int, steps: int, guidance: float, batch: int,
                preview_every: int, **extra: Any) -> GenerateRequest:
    return GenerateRequest(prompt=PROMPT, negative_prompt=NEGATIVE, width=width, height=height,
                           steps=steps, guidance=guidance, seed=0, scheduler="euler",
                           batch_size=batch, preview_every=preview_every, output_format="raw",
                           **extra)


class StockRunner:
    """diffusers as its documentation shows it: from_pretrained, .to(device), call."""

    def __init__(self, folder: Path, device: str, dtype: torch.dtype):
        self.device = device
        index = json.loads((folder / "model_index.json").read_text("utf-8"))
        extra = ({"safety_checker": None, "requires_safety_checker": False}
                 if "safety_checker" in index else {})
        started = time.perf_counter()
        pipe = DiffusionPipeline.from_pretrained(str(folder), dtype=dtype,
                                                 local_files_only=True, **extra)
        pipe.to(device)
        synchronize(device)
        self.load_s = time.perf_counter() - started
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe

    def __call__(self, job: GenerateRequest) -> CallTiming:
        clock = _Clock(self.device)

        def on_step_end(_pipe: Any, _index: int, _t: Any, _tensors: dict) -> dict:
            clock.step()
            return {}

        self.call(job, job.steps, on_step_end)
        return clock.stop()

    def call(self, job: GenerateRequest, steps: int, on_step_end: Any = None) -> Any:
        return self.pipe(prompt=job.prompt, negative_prompt=job.negative_prompt,
                         num_inference_steps=steps, guidance_scale=job.guidance,
                         height=job.height, width=job.width,
                         num_images_per_prompt=job.batch_size,
                         generator=torch.Generator("cpu").manual_seed(job.seed or 0),
                         output_type="np", callback_on_step_end=on_step_end)

    def close(self) -> None:
        self.pipe = None


class AtelierRunner:
    """Atelier's model store and generator, called directly on this thread."""

    def __init__(self, model: str, device: str, dtype: torch.dtype, home: Path,
                 options: AccelOptions):
        self.device = device
        # the benchmark's --model is the operator's own choice, as on serve's command line
        self.store = ModelStore(device, dtype, home, [], accel=options,
                                allowed_paths=operator_paths([model]))
        self.generator = DiffusionGenerator(self.store)   # before the load, which it warms up
        started = time.perf_counter()
        loaded = self.store.load(model)
        self.accel = loaded.accel
        synchronize(device)
        self.load_s = time.perf_counter() - started

    def __call__(self, job: GenerateRequest,
                 uploads: Mapping[str, ImageFrame] | None = None) -> CallTiming:
        clock = _Clock(self.device)

        def progress(_step: int, _total: int, preview: Optional[Pixels]) -> None:
            clock.step(preview is not None)

        self.generator.generate(job, dict(uploads or {}), progress, lambda: False)
        return clock.stop()

    def close(self) -> None:
        self.store.release()


class DaemonRunner:
    """The real daemon (in this process, its own event loop and worker) and client."""

    def __init__(self, atelier: AtelierRunner):
        self.thread = DaemonThread(Daemon(ServerConfig(port=0), StoreService(atelier.store),
                                          atelier.generator)).start()
        self.client = AtelierClient(self.thread.url, reconnect=False,
                                    client_name="generation-benchmark").start()
        self.client.wait_connected(timeout=30)

    def __call__(self, job: GenerateRequest,
                 uploads: Mapping[str, ImageFrame] | None = None) -> CallTiming:
        started = time.perf_counter()
        timing = CallTiming(0.0)

        def on_event(event: Any) -> None:
            now = time.perf_counter() - started
            if isinstance(event, Progress):
                timing.step_ends_s.append(now)
            elif isinstance(event, PreviewImage) and timing.first_preview_s is None:
                timing.first_preview_s = now

        done = self.client.run_job(job, list((uploads or {}).values()), timeout=3600,
                                   on_event=on_event)
        timing.total_s = time.perf_counter() - started
        if not isinstance(done, JobDone) or len(done.images) != job.batch_size:
            raise RuntimeError(f"the daemon did not deliver {job.batch_size} images: {done!r}")
        return timing

    def close(self) -> None:
        self.client.close()
        self.thread.stop()
