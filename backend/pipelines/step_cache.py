"""Step caching (DeepCache's idea): most steps reuse the UNet's deep features.

Between neighbouring steps the deep, low-resolution part of a UNet changes little; the
shallow part at full latent resolution carries the detail. With ``cache_interval`` N,
every N-th step runs the whole UNet and keeps what enters its last up block; the steps
between run only the shallow path (time embedding, ``conv_in``, the first down block, the
last up block, ``conv_out``) and take the deep part from the cache. That skips most of
the UNet's work on those steps, at the price of images that differ a little from the
uncached ones: a quality trade the user opts into per job (``GenerateRequest.cache_interval``).

``StepCachedUNet`` wraps one job's UNet (the generator sets it on its per-job copy of the
pipeline), so the pipelines call it as they would call the UNet, and the shared model is
never changed. A full step is the UNet's own forward; what entered the last up block comes
from a ``DeepFeatureTap``, a forward pre-hook the store puts on that block once, when the
model loads. Being there for every call and before the compile warm-up, it is part of the
compiled graphs every job runs, so a cached job's full steps need no graph of their own
(a hook added per job would make dynamo compile a new variant on first use).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from ..models.deep_tap import DeepFeatureTap
from .job_unet import JobUNet


class StepCachedUNet(JobUNet):
    """A ``JobUNet`` whose ``forward`` runs the whole UNet on every ``interval``-th step and
    the shallow path on the others. ``position`` says (steps done, steps in all) at the
    time of the call; ``tap`` is the ``DeepFeatureTap`` installed on ``unet``."""

    def __init__(self, unet: UNet2DConditionModel, interval: int,
                 position: Callable[[], tuple[int, int]], tap: DeepFeatureTap):
        super().__init__(unet)
        if interval < 2:
            raise ValueError(f"a cache interval must be 2 or more to cache anything, got {interval}")
        self.interval = interval
        self._position = position
        self._tap = tap
        self._deep: Optional[torch.Tensor] = None    # the last up block's input, last full step
        self.full_steps = 0                           # calls that ran the whole UNet
        self.cached_steps = 0                         # calls that reused the deep features

    def forward(self, sample: torch.Tensor, timestep: Any,
                encoder_hidden_states: Optional[torch.Tensor] = None, **kwargs: Any) -> Any:
        step, _ = self._position()
        cached = self._deep is not None and self._deep.shape[0] == sample.shape[0]
        if step % self.interval == 0 or not cached or _has_masks(kwargs):
            return self._full(sample, timestep, encoder_hidden_states, **kwargs)
        return self._shallow(sample, timestep, encoder_hidden_states, **kwargs)

    def _full(self, sample: torch.Tensor, timestep: Any,
              encoder_hidden_states: Optional[torch.Tensor], **kwargs: Any) -> Any:
        self._tap.clear()
        out = self.call_unet(sample, timestep, encoder_hidden_states, **kwargs)
        if self._tap.last is None:
            raise RuntimeError("the UNet's deep-feature tap saw no call: it is not installed "
                               "on this UNet's last up block (install_deep_tap)")
        # A copy: under CUDA graphs (``--compile reduce-overhead``) the tapped tensor lives in
        # the graphs' memory pool, which later calls may reuse before the cached steps read it.
        self._deep = self._tap.last.clone()
        self.full_steps += 1
        return out

    def _shallow(self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor,
                 class_labels: Optional[torch.Tensor] = None,
                 timestep_cond: Optional[torch.Tensor] = None,
                 cross_attention_kwargs: Optional[dict[str, Any]] = None,
                 added_cond_kwargs: Optional[dict[str, torch.Tensor]] = None,
                 down_block_additional_residuals: Optional[tuple[torch.Tensor, ...]] = None,
                 mid_block_additional_residual: Optional[torch.Tensor] = None,
                 down_intrablock_additional_residuals: Optional[list[torch.Tensor]] = None,
                 return_dict: bool = True, **_masks: Any) -> Any:
        """The UNet's forward (diffusers' ``UNet2DConditionModel.forward``) cut to its first
        down block and last up block, with the deep features from the cache."""
        unet = self.unet
        assert self._deep is not None
        if unet.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), timestep_cond)
        class_emb = unet.get_class_embed(sample=sample, class_labels=class_labels)
        if class_emb is not None:
            emb = torch.cat([emb, class_emb], dim=-1) if unet.config.class_embeddings_concat else emb + class_emb
        aug_emb = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states,
                                     added_cond_kwargs=added_cond_kwargs)
        if aug_emb is not None:
            emb = emb + aug_emb
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        encoder_hidden_states = unet.process_encoder_hidden_states(
            encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs)

        sample = unet.conv_in(sample)
        first, last = unet.down_blocks[0], unet.up_blocks[-1]
        attention = dict(encoder_hidden_states=encoder_hidden_states,
                         cross_attention_kwargs=cross_attention_kwargs)
        if getattr(first, "has_cross_attention", False):
            extra = {}
            if down_intrablock_additional_residuals:   # a T2I-Adapter's first feature
                extra["additional_residuals"] = down_intrablock_additional_residuals[0]
            _, res_samples = first(hidden_states=sample, temb=emb, **attention, **extra)
        else:
            # A plain block adds the adapter's feature after its downsampler: deep path only.
            _, res_samples = first(hidden_states=sample, temb=emb)
        skips = ((sample,) + tuple(res_samples))[:len(last.resnets)]
        if down_block_additional_residuals is not None:    # a ControlNet's residuals
            skips = tuple(s + r for s, r in zip(skips, down_block_additional_residuals))
        if getattr(last, "has_cross_attention", False):
            sample = last(hidden_states=self._deep, temb=emb, res_hidden_states_tuple=skips,
                          upsample_size=None, **attention)
        else:
            sample = last(hidden_states=self._deep, temb=emb, res_hidden_states_tuple=skips,
                          upsample_size=None)
        if unet.conv_norm_out:
            sample = unet.conv_act(unet.conv_norm_out(sample))
        sample = unet.conv_out(sample)
        self.cached_steps += 1
        return UNet2DConditionOutput(sample=sample) if return_dict else (sample,)


def _has_masks(kwargs: dict[str, Any]) -> bool:
    """Attention masks take the uncached path (none of Atelier's pipelines pass them)."""
    return kwargs.get("attention_mask") is not None or kwargs.get("encoder_attention_mask") is not None
