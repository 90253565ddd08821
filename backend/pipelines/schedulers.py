"""Sampler names of the protocol -> a fresh diffusers scheduler for one job.

Each job gets its own instance built from the model's scheduler config, so a job never
changes the scheduler that the shared pipelines (or the next job) see.
"""

from __future__ import annotations

from typing import Any, Mapping

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import SCHEDULERS

# name -> (class, settings that make it that sampler, over the model's own config)
_SAMPLERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler,
                 {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler,
                        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "ddim": (DDIMScheduler, {}),
    "lcm": (LCMScheduler, {}),
}
# LCM picks its steps out of a fixed 50-step schedule (its default original_inference_steps).
_STEP_LIMITS: dict[str, int] = {"lcm": 50}
assert set(_SAMPLERS) == set(SCHEDULERS), "every protocol sampler name needs a scheduler"


def make_scheduler(name: str, model_config: Mapping[str, Any]) -> SchedulerMixin:
    """A new scheduler for sampler ``name``, configured from the model's scheduler config
    (beta schedule, prediction type, timestep count carry over)."""
    try:
        cls, settings = _SAMPLERS[name]
    except KeyError:
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            f"unknown scheduler '{name}'; one of {', '.join(SCHEDULERS)}",
                            "job.scheduler") from None
    return cls.from_config(dict(model_config), **settings)


def step_limit(name: str) -> int | None:
    """The most steps sampler ``name`` can run, where it has a limit of its own."""
    return _STEP_LIMITS.get(name)
