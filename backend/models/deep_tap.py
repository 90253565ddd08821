"""The deep-feature tap step caching reads (``backend/pipelines/step_cache.py``).

The store installs it on every loaded UNet, before compiled modules warm up, so the
compiled graphs include it: a job with step caching then runs the same graphs as any other
job instead of compiling a variant with a hook of its own on first use. Between jobs it
holds nothing (the generator clears it when a job ends).
"""

from __future__ import annotations

from typing import Optional

import torch
from diffusers import UNet2DConditionModel
from torch import nn


class DeepFeatureTap:
    """Forward pre-hook on a UNet's last up block: every UNet call leaves what enters that
    block in ``last``. It stores unconditionally, so the hook itself never changes what a
    compiled graph guards on; ``clear`` drops the tensor when a job ends."""

    def __init__(self) -> None:
        self.last: Optional[torch.Tensor] = None

    def __call__(self, _module: nn.Module, _args: tuple, block_kwargs: dict) -> None:
        self.last = block_kwargs["hidden_states"]

    def clear(self) -> None:
        self.last = None


def install_deep_tap(unet: UNet2DConditionModel) -> DeepFeatureTap:
    """Put a ``DeepFeatureTap`` on ``unet`` for the model's lifetime (call once per loaded
    model, before compiled modules warm up)."""
    tap = DeepFeatureTap()
    unet.up_blocks[-1].register_forward_pre_hook(tap, with_kwargs=True)
    return tap
