"""Few-step sampler presets: ``GenerateRequest.sampler_preset`` -> scheduler, steps,
guidance and timestep spacing, as the distilled models (and LoRAs) were made to sample.

A preset overrides the request's ``scheduler``, ``steps`` and ``guidance``; the settled
request (``result.params``) shows what ran, so running it again gives the same pixels.
The timestep spacing is not a request field: it travels in the plan as a scheduler
config override (``SamplerPresetSpec.scheduler_config``).

Sources of each recipe (the model cards' own diffusers examples):
- SDXL-Lightning: Euler, ``timestep_spacing="trailing"``, guidance 0 (any value <= 1 turns
  classifier-free guidance off; 1.0 is used throughout).
- LCM / LCM-LoRA: LCMScheduler, 4-8 steps, guidance 1-2.
- SDXL-Turbo / SD-Turbo: 1 step, Euler ancestral with trailing spacing, no guidance.
- Hyper-SD (8-step LoRAs): DDIM with trailing spacing, no guidance.
- FLUX.1-schnell, SD3.5 Large Turbo: their flow-matching Euler, 4 steps, guidance 0.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import SAMPLER_PRESETS, GenerateRequest

TRAILING = (("timestep_spacing", "trailing"),)


@dataclass(frozen=True)
class SamplerPresetSpec:
    """One recipe. ``guidance`` None keeps the request's (the model's own)."""
    name: str
    scheduler: str                      # a protocol SchedulerName
    steps: int
    guidance: Optional[float]
    scheduler_config: tuple[tuple[str, Any], ...] = ()   # over the model's scheduler config


PRESETS: dict[str, SamplerPresetSpec] = {p.name: p for p in (
    SamplerPresetSpec("lightning_4", "euler", 4, 1.0, TRAILING),
    SamplerPresetSpec("lightning_8", "euler", 8, 1.0, TRAILING),
    SamplerPresetSpec("lcm_4", "lcm", 4, 1.0),
    SamplerPresetSpec("lcm_8", "lcm", 8, 1.0),
    SamplerPresetSpec("turbo_1", "euler_a", 1, 1.0, TRAILING),
    SamplerPresetSpec("hyper_8", "ddim", 8, 1.0, TRAILING),
    # FLUX.1-schnell and SD3.5 Large Turbo: flow-matching Euler on the model's own shift
    SamplerPresetSpec("schnell_4", "euler", 4, 0.0),
    SamplerPresetSpec("turbo_4", "euler", 4, 0.0),
)}
assert tuple(PRESETS) == SAMPLER_PRESETS, "every protocol preset name needs a recipe"


@dataclass(frozen=True)
class PresetApplied:
    """A request with its preset applied, and the scheduler config the preset adds."""
    request: GenerateRequest
    scheduler_config: tuple[tuple[str, Any], ...] = ()


def with_defaults(job: GenerateRequest, steps: int, guidance: float) -> GenerateRequest:
    """``job`` with the model's ``steps`` and ``guidance`` where it leaves them out (null)."""
    return dataclasses.replace(job, steps=steps if job.steps is None else job.steps,
                               guidance=guidance if job.guidance is None else job.guidance)


def apply_preset(job: GenerateRequest) -> PresetApplied:
    """``job`` with ``sampler_preset``'s scheduler, steps and guidance (unchanged without a
    preset). Raises ProtocolError on ``job.sampler_preset`` for an unknown name."""
    if job.sampler_preset is None:
        return PresetApplied(job)
    spec = PRESETS.get(job.sampler_preset)
    if spec is None:
        raise ProtocolError(ErrorCode.INVALID_FIELD,
                            f"unknown sampler_preset {job.sampler_preset!r}; one of "
                            f"{', '.join(PRESETS)}", "job.sampler_preset")
    guidance = job.guidance if spec.guidance is None else spec.guidance
    settled = dataclasses.replace(job, scheduler=spec.scheduler, steps=spec.steps,
                                  guidance=guidance)
    return PresetApplied(settled, spec.scheduler_config)
