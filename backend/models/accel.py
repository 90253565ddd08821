"""Speed and memory levers, applied once to a freshly loaded pipeline on the worker.

Every lever is an explicit field of ``AccelOptions``; ``apply_accel`` applies the ones
asked for and returns an ``Acceleration`` that says what it did and why it skipped the
rest. Levers change how the arithmetic is scheduled, never what is computed: the tests
hold the accelerated pipeline to the plain one's pixels within float tolerance.

The levers act on the shared component modules (UNet, VAE), so every pipeline kind
built from the base pipeline with ``from_pipe`` inherits them, and compiled modules are
compiled in place (``nn.Module.compile``), so they stay the objects ``from_pipe`` shares.

    accel = apply_accel(pipe, AccelOptions.for_device("cuda"), model_name="sdxl-base",
                        device="cuda")
    accel.applied            # ("sdpa", "channels_last", "fuse_qkv", ...)
    accel.skipped            # {"cpu_offload": "needs a GPU", ...}
    kwargs = accel.prompt_kwargs(pipe, prompt, negative_prompt,
                                 guidance=classifier_free_guidance(pipe, guidance_scale))
    pipe(**kwargs, ...)      # instead of prompt=/negative_prompt=
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch
from diffusers import DiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn

from .compile_modes import AUTO, COMPILE_MODES, OFF

# Lever names, as they appear in ``Acceleration.applied`` / ``skipped`` and benchmark reports.
SDPA = "sdpa"
CHANNELS_LAST = "channels_last"
FUSE_QKV = "fuse_qkv"
COMPILE_UNET = "compile_unet"
COMPILE_VAE_DECODE = "compile_vae_decode"
CPU_OFFLOAD = "cpu_offload"
VAE_TILING = "vae_tiling"
ATTENTION_SLICING = "attention_slicing"
PROMPT_CACHE = "prompt_cache"


@dataclass(frozen=True)
class AccelOptions:
    """Which levers to pull. The defaults change nothing but the attention kernel;
    ``for_device`` gives the intended choice for a device (for GPUs from published
    measurements; benchmarks/generation.py measures each on the machine at hand)."""
    sdpa: bool = True                 # torch's scaled_dot_product_attention (flash / mem-efficient)
    channels_last: bool = False       # NHWC memory layout for UNet and VAE convolutions
    fuse_qkv: bool = False            # one matmul for q, k and v (k and v for cross-attention)
    compile_unet: bool = False        # torch.compile the UNet in place
    compile_vae_decode: bool = False  # torch.compile the VAE decoder in place
    compile_mode: str = "default"     # torch.compile mode ("max-autotune-no-cudagraphs", ...)
    compile_backend: Union[str, Callable[..., Any]] = "inductor"   # any torch.compile backend
    cpu_offload: bool = False         # low memory: components on the GPU only while they run
    vae_tiling: bool = False          # low memory: decode large images tile by tile
    attention_slicing: bool = False   # low memory: attention in slices (slower with SDPA)
    prompt_cache_size: int = 16       # text-encoder outputs kept per model; 0 turns it off

    def __post_init__(self) -> None:
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode {self.compile_mode!r} is not one of {', '.join(COMPILE_MODES)}")
        if self.prompt_cache_size < 0:
            raise ValueError(f"prompt_cache_size must be 0 or more, got {self.prompt_cache_size}")

    @classmethod
    def plain(cls) -> "AccelOptions":
        """Nothing applied: the pipeline exactly as diffusers loaded it."""
        return cls(sdpa=False, prompt_cache_size=0)

    @classmethod
    def for_device(cls, device: str, low_memory: bool = False,
                   compile: Optional[bool] = None, compile_mode: str = "default") -> "AccelOptions":
        """The default levers for ``device``. On a GPU: SDPA, channels_last, fused QKV and
        (unless ``compile`` is False) compiled UNet and VAE decoder. On the CPU: SDPA and
        fused QKV only; compiling for the CPU is opt-in (``compile=True``).
        ``low_memory`` (for 8 GB cards): model CPU offload and tiled VAE decode, and no
        fused QKV, whose fused copies of the projection weights cost memory."""
        gpu = device.startswith("cuda")
        compiled = gpu if compile is None else compile
        return cls(sdpa=True, channels_last=gpu and not low_memory,
                   fuse_qkv=not low_memory, compile_unet=compiled and not low_memory,
                   compile_vae_decode=compiled and not low_memory, compile_mode=compile_mode,
                   cpu_offload=low_memory and gpu, vae_tiling=low_memory)

    @classmethod
    def for_choice(cls, device: str, choice: str = AUTO, low_memory: bool = False) -> "AccelOptions":
        """``for_device`` from a ``serve --compile`` choice (``compile_modes.CHOICES``)."""
        if choice == AUTO:
            return cls.for_device(device, low_memory)
        if choice == OFF:
            return cls.for_device(device, low_memory, compile=False)
        return cls.for_device(device, low_memory, compile=True, compile_mode=choice)

    def describe(self) -> dict[str, Any]:
        """The options as plain JSON-able data (a custom compile backend by its name)."""
        out = dataclasses.asdict(self)
        if not isinstance(self.compile_backend, str):
            out["compile_backend"] = getattr(self.compile_backend, "__name__", repr(self.compile_backend))
        return out


class PromptCache:
    """Text-encoder outputs of recent (model, prompt, negative prompt) triples, LRU.

    Repeated prompts (the common case while a user iterates on a seed or a mask) skip the
    text encoders. Cached tensors are shared between jobs: pipelines only read them."""

    def __init__(self, model_name: str, size: int):
        self.model_name = model_name
        self.size = size
        self.hits = 0
        self.misses = 0
        self._entries: collections.OrderedDict[tuple, dict[str, torch.Tensor]] = \
            collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def prompt_kwargs(self, pipe: DiffusionPipeline, prompt: str, negative_prompt: Optional[str],
                      guidance: bool) -> dict[str, Any]:
        """Keyword arguments for ``pipe(...)`` in place of ``prompt`` and
        ``negative_prompt``: the embeddings, from the cache when seen before.

        ``guidance`` must be what the pipeline will do (classifier-free guidance on or
        off), since that decides whether negative embeddings are made."""
        key = (self.model_name, type(pipe).__name__ if _is_sdxl(pipe) else "sd",
               prompt, negative_prompt, guidance)
        entry = self._entries.get(key) if self.size else None
        if entry is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return dict(entry)
        self.misses += 1
        entry = encode_prompt(pipe, prompt, negative_prompt, guidance)
        if self.size:
            self._entries[key] = entry
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return dict(entry)


def _is_sdxl(pipe: DiffusionPipeline) -> bool:
    return "prompt_2" in inspect.signature(pipe.encode_prompt).parameters


def encode_prompt(pipe: DiffusionPipeline, prompt: str, negative_prompt: Optional[str],
                  guidance: bool) -> dict[str, torch.Tensor]:
    """Run the pipeline's own text encoding once (one image per prompt; the pipeline
    repeats the embeddings for a batch itself)."""
    device = pipe._execution_device
    with torch.no_grad():
        if _is_sdxl(pipe):
            embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
                prompt, device=device, num_images_per_prompt=1,
                do_classifier_free_guidance=guidance, negative_prompt=negative_prompt)
            out = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
            if guidance:
                out.update(negative_prompt_embeds=negative,
                           negative_pooled_prompt_embeds=negative_pooled)
            return out
        embeds, negative = pipe.encode_prompt(prompt, device, 1, guidance,
                                              negative_prompt=negative_prompt)
    out = {"prompt_embeds": embeds}
    if guidance:
        out["negative_prompt_embeds"] = negative
    return out


@dataclass
class Acceleration:
    """What ``apply_accel`` did to one loaded model, and its prompt cache."""
    options: AccelOptions
    applied: tuple[str, ...]
    skipped: dict[str, str]
    prompt_cache: Optional[PromptCache] = field(default=None, repr=False)

    def prompt_kwargs(self, pipe: DiffusionPipeline, prompt: str, negative_prompt: Optional[str],
                      guidance: bool) -> dict[str, Any]:
        """``prompt``/``negative_prompt`` keyword arguments for ``pipe(...)``, or the
        cached embeddings that replace them when the prompt cache is on."""
        if self.prompt_cache is None:
            return {"prompt": prompt, "negative_prompt": negative_prompt}
        return self.prompt_cache.prompt_kwargs(pipe, prompt, negative_prompt, guidance)

    def report(self) -> dict[str, Any]:
        return {"options": self.options.describe(), "applied": list(self.applied),
                "skipped": dict(self.skipped)}


def _modules(pipe: DiffusionPipeline, *names: str) -> list[tuple[str, nn.Module]]:
    found = []
    for name in names:
        module = getattr(pipe, name, None)
        if isinstance(module, nn.Module):
            found.append((name, module))
    return found


def apply_accel(pipe: DiffusionPipeline, options: AccelOptions, *, model_name: str,
                device: Optional[str] = None) -> Acceleration:
    """Apply ``options`` to a freshly loaded ``pipe`` and leave it ready on ``device``
    (default: where it is). Call once per loaded model, on the worker thread, before the
    first job; for CPU offload pass the pipeline still on the CPU, so the whole model
    never has to fit on the GPU at once.

    Levers that cannot apply here (no GPU, no ``accelerate``, no attention in a module)
    are listed in ``skipped`` with the reason instead of failing the load."""
    device = device or str(pipe.device)
    applied: list[str] = []
    skipped: dict[str, str] = {}
    _place(pipe, options, device, applied, skipped)

    if options.sdpa:
        if not hasattr(nn.functional, "scaled_dot_product_attention"):
            skipped[SDPA] = "this torch has no scaled_dot_product_attention"
        else:
            for _, module in _modules(pipe, "unet", "vae", "controlnet"):
                if hasattr(module, "set_attn_processor"):
                    module.set_attn_processor(AttnProcessor2_0())
            applied.append(SDPA)

    if options.fuse_qkv:
        fused = [module for _, module in _modules(pipe, "unet", "vae")
                 if hasattr(module, "fuse_qkv_projections") and _has_attention(module)]
        for module in fused:
            module.fuse_qkv_projections()
        if fused:
            applied.append(FUSE_QKV)
        else:
            skipped[FUSE_QKV] = "no module with attention to fuse"

    if options.channels_last:
        for _, module in _modules(pipe, "unet", "vae", "controlnet"):
            module.to(memory_format=torch.channels_last)
        applied.append(CHANNELS_LAST)

    if options.attention_slicing:
        pipe.enable_attention_slicing()
        applied.append(ATTENTION_SLICING)

    if options.vae_tiling:
        vae = getattr(pipe, "vae", None)
        if vae is not None and hasattr(vae, "enable_tiling"):
            vae.enable_tiling()
            applied.append(VAE_TILING)
        else:
            skipped[VAE_TILING] = "this VAE cannot decode in tiles"

    if options.compile_unet or options.compile_vae_decode:
        _compile(pipe, options, applied, skipped)

    cache = PromptCache(model_name, options.prompt_cache_size) if options.prompt_cache_size else None
    if cache is not None:
        applied.append(PROMPT_CACHE)
    return Acceleration(options, tuple(applied), skipped, cache)


def accelerate_controlnet(controlnet: nn.Module, options: AccelOptions) -> tuple[str, ...]:
    """The module levers for a ControlNet the store loads on demand, after the base model:
    SDPA, channels_last and compilation, as the UNet got them. Returns what was applied.
    (A ControlNet runs next to the UNet at every step, so leaving it plain would hand its
    share of the work back to the slow path.)"""
    applied = []
    if options.sdpa and hasattr(controlnet, "set_attn_processor"):
        controlnet.set_attn_processor(AttnProcessor2_0())
        applied.append(SDPA)
    if options.channels_last:
        controlnet.to(memory_format=torch.channels_last)
        applied.append(CHANNELS_LAST)
    if options.compile_unet and not options.cpu_offload:
        controlnet.compile(**_compile_settings(options))
        applied.append(COMPILE_UNET)
    return tuple(applied)


def _place(pipe: DiffusionPipeline, options: AccelOptions, device: str, applied: list[str],
           skipped: dict[str, str]) -> None:
    """Model CPU offload when asked and possible, else every module on ``device``."""
    if options.cpu_offload:
        if not device.startswith("cuda"):
            skipped[CPU_OFFLOAD] = f"needs a GPU (the model runs on {device})"
        elif importlib.util.find_spec("accelerate") is None:
            skipped[CPU_OFFLOAD] = "needs the accelerate package (pip install accelerate)"
        else:
            pipe.enable_model_cpu_offload(device=device)
            applied.append(CPU_OFFLOAD)
            return
    if str(pipe.device) != device:
        pipe.to(device)


def classifier_free_guidance(pipe: DiffusionPipeline, guidance_scale: float) -> bool:
    """Whether ``pipe`` will run classifier-free guidance at ``guidance_scale`` (the rule
    of the diffusers SD/SDXL pipelines; guidance-distilled UNets embed it instead)."""
    unet = getattr(pipe, "unet", None)
    distilled = unet is not None and getattr(unet.config, "time_cond_proj_dim", None) is not None
    return guidance_scale > 1 and not distilled


def _has_attention(module: nn.Module) -> bool:
    return bool(getattr(module, "attn_processors", None))


# The same inductor mode without CUDA graphs, for the VAE decoder.
_WITHOUT_GRAPHS = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}


def _compile_settings(options: AccelOptions, graphs: bool = True) -> dict[str, Any]:
    """``torch.compile`` arguments. ``graphs=False`` drops CUDA graphs from the mode: the
    VAE decoder runs once per job, where launch costs are nothing next to its arithmetic,
    and its weights change dtype for every fp16 decode (``latents._full_precision``),
    which would make CUDA graphs record again each job."""
    if options.compile_backend != "inductor":
        return {"backend": options.compile_backend}   # modes are inductor's
    mode = options.compile_mode if graphs else _WITHOUT_GRAPHS.get(options.compile_mode,
                                                                   options.compile_mode)
    return {"mode": mode, "backend": options.compile_backend}


def _compile(pipe: DiffusionPipeline, options: AccelOptions, applied: list[str],
             skipped: dict[str, str]) -> None:
    # In place, so the module objects from_pipe shares between pipeline kinds stay the same.
    # The tiling hooks (tiling.wrapped_convolutions) are guarded by dynamo: switching
    # tiling on and off gives two cached graphs, not a recompilation per job.
    settings = _compile_settings(options)
    if options.compile_unet:
        if options.cpu_offload and CPU_OFFLOAD in applied:
            skipped[COMPILE_UNET] = "not combined with CPU offload (it moves weights every job)"
        elif not _modules(pipe, "unet"):
            # Flux's and SD3's transformers: not compiled yet (issue 18)
            skipped[COMPILE_UNET] = "this model has no UNet"
        else:
            for _, module in _modules(pipe, "unet", "controlnet"):
                module.compile(**settings)
            applied.append(COMPILE_UNET)
    if options.compile_vae_decode:
        vae = getattr(pipe, "vae", None)
        decoder = getattr(vae, "decoder", None)
        if not isinstance(decoder, nn.Module):
            skipped[COMPILE_VAE_DECODE] = "this VAE has no decoder module"
        elif options.cpu_offload and CPU_OFFLOAD in applied:
            skipped[COMPILE_VAE_DECODE] = "not combined with CPU offload"
        else:
            decoder.compile(**_compile_settings(options, graphs=False))
            applied.append(COMPILE_VAE_DECODE)
