"""One job's view of the shared UNet: what the pipelines call instead of the model's UNet.

The generator gives each job's copy of the pipeline a ``JobUNet`` around the shared
(possibly compiled) UNet. Everything that varies per job and per step happens here, outside
the compiled graphs, so dynamo never guards on it:

- timesteps reach the UNet as float32 tensors of their own whatever the sampler (DDIM and DPM-Solver step on
  integers, Euler on floats), so every sampler runs the graph warmed up at load. The UNet
  turns timesteps into float32 itself before using them, so the images do not change;
- a T2I-Adapter's per-job hook (adapter.py) goes on this wrapper, so which steps it covers
  is decided in Python rather than traced into the graph once per step;
- step caching (step_cache.py) is a ``JobUNet`` that skips the deep blocks on some steps.

Attributes other than ``forward`` fall through to the UNet (``config``, ``dtype``, ...).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from diffusers import UNet2DConditionModel
from torch import nn


class JobUNet(nn.Module):
    def __init__(self, unet: UNet2DConditionModel):
        super().__init__()
        self.unet = unet

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["unet"], name)

    def forward(self, sample: torch.Tensor, timestep: Any,
                encoder_hidden_states: Optional[torch.Tensor] = None, **kwargs: Any) -> Any:
        return self.call_unet(sample, timestep, encoder_hidden_states, **kwargs)

    def call_unet(self, sample: torch.Tensor, timestep: Any,
                  encoder_hidden_states: Optional[torch.Tensor], **kwargs: Any) -> Any:
        """The shared UNet, called as diffusers' pipelines call it (two positional
        arguments, the rest by name), with a float32 timestep."""
        return self.unet(sample, float_timestep(timestep),
                         encoder_hidden_states=encoder_hidden_states, **kwargs)


def float_timestep(timestep: Any) -> Any:
    """A timestep tensor as a float32 tensor of its own (what the UNet's time embedding
    makes of it anyway). Always a new tensor: samplers hand over an element of their
    timestep list, a view, and integer ones would arrive as a fresh tensor, and compiled
    graphs guard on that difference. Anything but a tensor as it is."""
    if isinstance(timestep, torch.Tensor):
        return timestep.to(torch.float32, copy=True)
    return timestep
