"""One job's view of the shared UNet: what the pipelines call instead of the model's UNet.

Where the UNet is compiled, the generator gives each job's copy of the pipeline a
``JobUNet`` around it. Everything that varies per job and per step then happens here,
outside the compiled graphs, so dynamo never guards on it:

- timesteps reach the UNet as float32 tensors of their own whatever the sampler (DDIM and DPM-Solver step on
  integers, Euler on floats), so every sampler runs the graph warmed up at load. The UNet
  turns timesteps into float32 itself before using them, so the images do not change;
- a T2I-Adapter's per-job hook (adapter.py) goes on this wrapper, so which steps it covers
  is decided in Python rather than traced into the graph once per step;
- step caching (step_cache.py) is a ``JobUNet`` that skips the deep blocks on some steps.

Public attributes fall through to the UNet (``config``, ``dtype``, ...); private ones do
not, so code that probes modules for its own private state (accelerate's offload hooks,
``_hf_hook``) sees the wrapper as a module of its own.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from diffusers import UNet2DConditionModel
from torch import nn


class ModelView(nn.Module):
    """A module standing in for the one it holds as submodule ``WRAPPED``: public
    attributes it lacks are that module's; private ones are not (see above)."""
    WRAPPED: str

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_"):
                raise
            return getattr(self._modules[self.WRAPPED], name)


class JobUNet(ModelView):
    WRAPPED = "unet"

    def __init__(self, unet: UNet2DConditionModel):
        super().__init__()
        self.unet = unet

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
