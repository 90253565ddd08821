"""Controls on Flux and SD3 models: a job's controls through ControlNets of the model's
family (``FluxControlNetPipeline`` and its img2img / inpaint kin, several as one
``FluxMultiControlNetModel``; ``StableDiffusion3ControlNetPipeline`` for txt2img, one
control), and seamless tiling with them; and FLUX.1-Depth/Canny-dev's one control image,
which their transformers read themselves (``FluxControlPipeline`` and kin).

The Flux ControlNet pipelines encode the init image themselves (they take no latents), so
img2img and inpaint get pixels here; the unmasked pixels of an inpaint job are pasted back
afterwards as for any model (generator.py). SD3's pipeline encodes the control image by
sampling the VAE's distribution with the global generator: for the job's call that
generator is forked and seeded from the job's seed, so a job reproduces and nothing
outside it changes.

Tiling. A tiled job's transformer sees the latent rolled by a fresh offset at every call
(``RolledTransformer``, dit.py), and rolls the ControlNet's residuals with it (they are
image tokens). The ControlNet, called just before with the pipeline's unrolled latent, is
rolled the same way for the duration of the job: hooks on the shared module roll its
latent and its control latents by the offset the transformer draws next (the same seed)
and roll its residuals back, so it sees the latent the transformer sees, and what it hands
on lines up with the unrolled latent. A set's call draws the offset once, and each of its
ControlNets rolls by it. Hooks rather than a wrapper: the pipeline tells a single
ControlNet from a set by its class.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from diffusers import DiffusionPipeline, FluxMultiControlNetModel, SD3ControlNetModel

from protocol.errors import ErrorCode, ProtocolError

from .adapter import Window
from .control import pixels_tensor
from .dit import RolledTransformer
from .plan import GenerationPlan
from .tiling import tile_axes


# The modes of the Flux union ControlNets (InstantX's FLUX.1-dev-Controlnet-Union and
# Shakker-Labs' Union-Pro share them: canny 0, tile 1, depth 2, blur 3, pose 4, gray 5,
# low quality 6), for the control kinds that have one.
UNION_MODES = {"canny": 0, "depth": 2, "pose": 4}


def union_mode(controlnet: Any, kind: str, field: str) -> Optional[int]:
    """The ``control_mode`` a union ControlNet runs a control of ``kind`` in (None for a
    ControlNet of one kind); a kind it has no mode for is refused on ``field``."""
    if getattr(controlnet.config, "num_mode", None) is None:
        return None
    if kind not in UNION_MODES:
        raise ProtocolError(ErrorCode.UNSUPPORTED,
                            f"a Flux union ControlNet has no {kind} mode (it takes: "
                            f"{', '.join(UNION_MODES)}); name a {kind} ControlNet", field)
    return UNION_MODES[kind]


def one_control(controls: Sequence[Any], family: str) -> None:
    """Refuse a second control where the family's pipeline takes one ControlNet (SD3's)."""
    if len(controls) > 1:
        raise ProtocolError(ErrorCode.UNSUPPORTED,
                            f"a {family} job takes one control (one ControlNet of its family); "
                            f"this job has {len(controls)}", controls[1].field)


def condition_on_dit_controlnet(kind: str, kwargs: dict[str, Any], images: Sequence[torch.Tensor],
                                windows: Sequence[Window], init_rgb: Optional[np.ndarray],
                                modes: Sequence[Optional[int]]) -> dict[str, Any]:
    """The call of ``kind``'s ControlNet pipeline: each of ``images`` (``(1, 3, H, W)`` in
    [0, 1]) as a control image at its window's scale and steps (its mode: a union
    ControlNet's, else None); one control as the single ControlNet's arguments, several
    as a set's lists. The init image (img2img, inpaint: the work area, uint8 RGB) as
    pixels, which these pipelines encode."""
    if len(images) == 1:
        kwargs = dict(kwargs, control_image=images[0], controlnet_conditioning_scale=windows[0].scale,
                      control_guidance_start=windows[0].start, control_guidance_end=windows[0].end)
        if modes[0] is not None:
            kwargs["control_mode"] = modes[0]
    else:
        kwargs = dict(kwargs, control_image=list(images),
                      controlnet_conditioning_scale=[w.scale for w in windows],
                      control_guidance_start=[w.start for w in windows],
                      control_guidance_end=[w.end for w in windows], control_mode=list(modes))
    return _with_init_pixels(kind, kwargs, init_rgb)


def _with_init_pixels(kind: str, kwargs: dict[str, Any],
                      init_rgb: Optional[np.ndarray]) -> dict[str, Any]:
    """img2img and inpaint: the init image (the work area, uint8 RGB) as pixels, which the
    control pipelines encode themselves (they take no init latents)."""
    if kind != "txt2img":
        assert init_rgb is not None
        kwargs["image"] = pixels_tensor(init_rgb)
        kwargs.pop("masked_image_latents", None)
    return kwargs


def control_transformer_control(controls: Sequence[Any], model: str) -> Any:
    """The one control a FLUX.1-Depth/Canny-dev job needs: its transformer reads the control
    image's latents beside the picture's, so there is no ControlNet to name and nothing to
    scale or to stop early; anything else fails on its field."""
    if not controls:
        raise ProtocolError(ErrorCode.UNSUPPORTED,
                            f"model {model} (flux_control: FLUX.1-Depth/Canny-dev) needs a "
                            f"control image: one control of kind depth or canny", "job.controls")
    one_control(controls, "FLUX.1-Depth/Canny-dev")
    control = controls[0]
    if control.kind not in ("depth", "canny"):
        raise ProtocolError(ErrorCode.UNSUPPORTED,
                            f"FLUX.1-Depth/Canny-dev take a depth or canny image, not {control.kind}",
                            f"{control.field}.kind")
    fixed = {"model": (control.model, None), "scale": (control.scale, 1.0),
             "start": (control.start, 0.0), "end": (control.end, 1.0)}
    for name, (value, plain) in fixed.items():
        if value != plain:
            raise ProtocolError(ErrorCode.UNSUPPORTED,
                                f"model {model} reads its control image itself (no ControlNet): "
                                f"{name} must be left at {plain}", f"{control.field}.{name}")
    return control


def condition_on_control_transformer(kind: str, kwargs: dict[str, Any], image: torch.Tensor,
                                     init_rgb: Optional[np.ndarray]) -> dict[str, Any]:
    """The call of ``kind``'s FluxControl pipeline: ``image`` (``(1, 3, H, W)`` in [0, 1])
    as its control image, the init image as pixels."""
    return _with_init_pixels(kind, dict(kwargs, control_image=image), init_rgb)


def _roll_residuals(roller: RolledTransformer, output: Any, dx: int, dy: int) -> Any:
    """A ControlNet's output (tuples of per-block token residuals, or None) rolled."""
    if torch.is_tensor(output):
        return roller.roll_tokens(output, dx, dy)
    if isinstance(output, (list, tuple)):
        return type(output)(_roll_residuals(roller, part, dx, dy) for part in output)
    return output


@contextlib.contextmanager
def controlnet_job_context(pipe: DiffusionPipeline, plan: GenerationPlan) -> Iterator[None]:
    """What a transformer's ControlNet needs around the job's call: SD3's global
    generator seeded (forked), and for a tiled job the ControlNet rolled (module docstring)."""
    controlnet = getattr(pipe, "controlnet", None)
    if controlnet is None or not hasattr(pipe, "transformer"):
        yield
        return
    with contextlib.ExitStack() as stack:
        if isinstance(controlnet, SD3ControlNetModel):
            devices = [torch.cuda.current_device()] if pipe.device.type == "cuda" else []
            stack.enter_context(torch.random.fork_rng(devices=devices))
            torch.manual_seed(plan.seeds[0])
        stack.enter_context(_rolled_controlnet(controlnet, pipe, plan))
        yield


@contextlib.contextmanager
def _rolled_controlnet(controlnet: torch.nn.Module, pipe: DiffusionPipeline,
                       plan: GenerationPlan) -> Iterator[None]:
    """For a tiled job: the ControlNet's calls see the latent and the control latents
    rolled, and their residuals come back in place."""
    axes = tile_axes(plan.tiling)
    if not axes.any:
        yield
        return
    # The transformer's seed: one ControlNet call and one transformer call per step draw the
    # same offsets, so the ControlNet sees the very latent the transformer sees.
    roller = RolledTransformer(controlnet, axes, plan.work_width, plan.work_height,
                               packed=hasattr(pipe, "_unpack_latents"), seed=plan.seeds[0])
    nets = list(dict.fromkeys(controlnet.nets)) if isinstance(controlnet, FluxMultiControlNetModel) \
        else [controlnet]

    def draw(_module: Any, _args: tuple, _kwargs: dict) -> None:
        roller.draw()       # once per call of the ControlNet or of the set

    def before(_module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        dx, dy = roller.offsets[-1]
        rolled = {name: roller.roll(kwargs[name], dx, dy)
                  for name in ("hidden_states", "controlnet_cond") if kwargs.get(name) is not None}
        return args, {**kwargs, **rolled}

    def after(_module: Any, _args: tuple, _kwargs: dict, output: Any) -> Any:
        dx, dy = roller.offsets[-1]
        if isinstance(output, tuple):
            return _roll_residuals(roller, output, -dx, -dy)
        for name in ("controlnet_block_samples", "controlnet_single_block_samples"):
            setattr(output, name, _roll_residuals(roller, getattr(output, name), -dx, -dy))
        return output

    handles = [controlnet.register_forward_pre_hook(draw, with_kwargs=True)]
    for net in nets:
        handles += [net.register_forward_pre_hook(before, with_kwargs=True),
                    net.register_forward_hook(after, with_kwargs=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
