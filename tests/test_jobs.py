"""The job layer on its own: failures stay inside their job, including running out of memory.

A real out-of-memory error cannot be provoked on demand, so the generator here raises the
error torch raises; the job layer (queue, worker, outcomes) is the real one.
"""

from __future__ import annotations

import asyncio
import dataclasses

import torch

from backend.generation import GeneratedImage, GenerationOutput, Pixels
from backend.jobs import JobManager
from protocol.errors import ErrorCode
from protocol.frames import ImageFrame
from protocol.messages import Error, GenerateRequest, Result


class FailsFirst:
    """Raises ``error`` on its first job, then returns a 8x8 image."""

    def __init__(self, error: Exception):
        self.error = error
        self.calls = 0

    def generate(self, job, uploads, progress, cancelled):
        self.calls += 1
        if self.calls == 1:
            raise self.error
        progress(1, 1, None)
        pixels = Pixels(8, 8, bytes(range(256)))
        return GenerationOutput([GeneratedImage(pixels, 1)], dataclasses.replace(job, seed=1),
                                "none", "test")


def run_two_jobs(error: Exception, after_out_of_memory=lambda: None) -> list[list[object]]:
    async def scenario() -> list[list[object]]:
        loop = asyncio.get_running_loop()
        manager = JobManager(FailsFirst(error), loop, after_out_of_memory=after_out_of_memory)
        outcomes: list[list[object]] = [[], []]
        done = [asyncio.Event(), asyncio.Event()]

        def subscriber(i: int):
            def receive(item: object) -> None:
                outcomes[i].append(item)
                if isinstance(item, (Result, Error)):
                    done[i].set()
            return receive

        for i in range(2):
            manager.submit(GenerateRequest(width=8, height=8, steps=1), {}, subscriber(i),
                           owner="a" * 32)
        await asyncio.wait_for(asyncio.gather(done[0].wait(), done[1].wait()), 30)
        await loop.run_in_executor(None, manager.stop)
        return outcomes

    return asyncio.run(scenario())


def test_out_of_memory_fails_only_its_job_with_its_own_code():
    freed: list[int] = []
    first, second = run_two_jobs(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
                                 after_out_of_memory=lambda: freed.append(1))
    error = first[-1]
    assert isinstance(error, Error) and error.code == ErrorCode.OUT_OF_MEMORY
    assert "smaller size or batch" in error.message and error.job_id
    assert freed == [1]          # the device cache was freed before the next job ran
    assert isinstance(second[-1], Result)
    assert any(isinstance(item, ImageFrame) for item in second)


def test_other_failures_free_nothing():
    freed: list[int] = []
    run_two_jobs(ValueError("broken weights"), after_out_of_memory=lambda: freed.append(1))
    assert freed == []


def test_an_unexpected_exception_fails_only_its_job():
    first, second = run_two_jobs(ValueError("broken weights"))
    error = first[-1]
    assert isinstance(error, Error) and error.code == ErrorCode.JOB_FAILED
    assert "ValueError: broken weights" == error.message
    assert isinstance(second[-1], Result)
