"""``DiffusionGenerator``: runs one GenerateRequest on the store's model (the ``Generator``
protocol of ``backend.generation``), on the worker thread that owns the device.

One job goes through four steps, each in one place:

1. ``plan_generation`` (plan.py) checks the request and settles seeds, sizes, the inpaint
   mask and its context region. Pure data, no model.
2. ``_pipeline_call`` picks the pipeline kind and builds its call's keyword arguments from
   the plan (init images become latents here), conditioned on the job's controls
   (ControlNets, T2I-Adapters, SD2-depth: ``_condition``). New job kinds and conditionings
   add their kind and kwargs here.
3. ``_run`` runs the pipeline: a per-job copy carrying its own scheduler, a step callback
   that reports progress and previews and honours cancel within one step, and
   ``output_type="latent"``. Anything that must wrap the pipeline's modules for the
   duration of the call (circular padding for seamless tiling, a T2I-Adapter's residuals)
   goes in ``_job_context``; the job's view of the UNet (step caching, regions' passes:
   step_cache.py, regions.py) is set on its copy of the pipeline.
4. ``_finish`` decodes the latents and, for inpainting, pastes the crop back into the init
   image through the feathered mask.

A generator also warms up each model its store loads (``warm_up``, warm_up.py): where
modules are compiled, it runs two-step jobs of the model's kind through these same steps.

Batches run as one pipeline call with one ``torch.Generator`` per image, seeded
``seed + i`` on the CPU: image i of a batch is image 0 of a job with seed ``seed + i``, and
the noise is the same on every device.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional, TypeVar

import numpy as np
import torch
from diffusers import ControlNetModel, DiffusionPipeline, MultiControlNetModel

from protocol.errors import ErrorCode, ProtocolError
from protocol.families import base_family, sampling_defaults
from protocol.frames import ImageFrame
from protocol.schema import shorten
from protocol.messages import GenerateRequest

from ..limits import ServerLimits
from ..generation import GeneratedImage, GenerationOutput, JobCancelled, ProgressSink
from ..models.control_models import kind_of_model
from ..models.accel import COMPILE_UNET, COMPILE_VAE_DECODE, CPU_OFFLOAD, classifier_free_guidance
from ..models.families import FLUX, FLUX_CONTROL, SD15, SD2_DEPTH, SDXL, T2I_ADAPTER, is_transformer
from ..models.store import LoadedModel, ModelStore, native_side
from .adapter import AdapterGuide, adapter_guide, adapter_residuals
from .control import condition_on_controlnets, condition_on_depth2img, control_tensor
from .controls import PlannedControl, nearness_of
from .depth import DepthEstimator, find_depth_model
from .dit import (DiTLatents, dit_call, flow_scheduler, refuse_unsupported, rolled_transformer,
                  work_size)
from .dit_controls import (condition_on_control_transformer, condition_on_dit_controlnet,
                           control_transformer_control, controlnet_job_context, one_control,
                           union_mode)
from .job_unet import JobUNet
from .latents import decode_rgb, encode_rgb
from .masks import composite
from .pixels import mask_to_tensor, resize, to_pixels
from .plan import SEED_RANGE, GenerationPlan, ModelTraits, plan_generation, plan_preprocess
from .previews import LatentPalette, PreviewLayout, preview_due, scaled_box
from .references import ReferenceSetup, reference_attention, reference_setup
from .regions import region_texts, with_regions
from .schedulers import make_scheduler
from .seamless import roll_image
from .step_cache import StepCachedUNet
from .tiling import decode_wrapped, tile_axes, whole_image_vae, wrapped_convolutions
from .warm_up import warm_up_jobs


@dataclass
class PipelineCall:
    """Which pipeline to run and with what; ``kwargs`` go straight to its ``__call__``."""
    kind: str                      # a kind of ``LoadedModel.pipeline``
    kwargs: dict[str, Any]
    controlnet: Optional[ControlNetModel | MultiControlNetModel] = None
    adapters: tuple[AdapterGuide, ...] = ()   # T2I-Adapter features added inside the UNet
    references: Optional[ReferenceSetup] = None   # IP-Adapter attention for the call


class DiffusionGenerator:
    """Turns requests into images on the store's default model (or the one a job names)."""

    def __init__(self, store: ModelStore, limits: ServerLimits = ServerLimits()):
        self._store = store
        self._limits = limits
        self._depth_estimator: Optional[DepthEstimator] = None   # loaded on first use
        store.warm_up = self.warm_up     # models loaded from now on warm up through our jobs

    def warm_up(self, model: LoadedModel) -> int:
        """Run ``model``'s warm-up jobs (warm_up.py) when it has compiled modules, so they
        compile now and not in the first user's job. Returns how many jobs ran."""
        if not {COMPILE_UNET, COMPILE_VAE_DECODE} & set(model.accel.applied):
            return 0
        side = min(native_side(model.pipe), self._limits.max_side) // 64 * 64
        jobs = warm_up_jobs(model.family, side)
        for job, uploads in jobs:
            # On ``model`` itself: it is neither the default nor resident yet (store.use).
            self._generate_on(model, job, uploads, lambda *_: None, lambda: False)
        return len(jobs)

    def check(self, job: GenerateRequest, uploads: Mapping[str, ImageFrame]) -> None:
        """Everything ``plan_generation`` checks, with neutral model traits (those only
        size the inpaint working area)."""
        if job.kind == "preprocess":
            plan_preprocess(job, uploads, self._limits)
            return
        plan_generation(job, uploads, self._limits, ModelTraits(), fresh_seed=0)

    def generate(self, job: GenerateRequest, uploads: Mapping[str, ImageFrame],
                 progress: ProgressSink, cancelled: Callable[[], bool]) -> GenerationOutput:
        if cancelled():
            raise JobCancelled()
        if job.kind == "preprocess":
            return self._preprocess(job, uploads)
        return self._generate_on(self._model(job), job, uploads, progress, cancelled)

    def _preprocess(self, job: GenerateRequest, uploads: Mapping[str, ImageFrame]) -> GenerationOutput:
        """A "preprocess" job: the control image its one control makes, as RGB; no model
        runs unless depth is estimated (the default model's device and precision then)."""
        control = plan_preprocess(job, uploads, self._limits)
        if control.estimate:
            control = self._estimated(control, self._store.current)
        image = np.round(np.clip(control.image, 0.0, 1.0) * 255).astype(np.uint8)
        model = self._store.current.name if self._store.current is not None else ""
        return GenerationOutput(images=[GeneratedImage(to_pixels(image), 0)],
                                params=job, tiling=job.tiling, model=model)

    def _generate_on(self, model: LoadedModel, job: GenerateRequest,
                     uploads: Mapping[str, ImageFrame], progress: ProgressSink,
                     cancelled: Callable[[], bool]) -> GenerationOutput:
        """``job`` on ``model``, which the store has made its active model."""
        plan = plan_generation(job, uploads, self._limits, model_traits(model),
                               fresh_seed=secrets.randbelow(SEED_RANGE))
        if is_transformer(model.family):
            # What Flux or SD3 cannot do fails here, before any weights change (dit.py).
            refuse_unsupported(plan, model.name, model.family)
            model.pipeline_class(plan.kind, controlnet=bool(plan.controls)
                                 and model.family != FLUX_CONTROL)
            plan = dataclasses.replace(plan, **dict(zip(
                ("work_width", "work_height"), work_size(plan.work_width, plan.work_height))))
        # Exactly this job's LoRAs (none: the model's own weights), and the embeddings its
        # prompts name, on the model (store.py: loras.py, embeddings.py).
        self._store.use_loras(plan.request.loras)
        self._store.use_embeddings([plan.request.prompt, plan.request.negative_prompt,
                                    *region_texts(plan.regions)])
        # Init images are encoded here: on a tiled axis their edges wrap as well.
        vae = whole_image_vae(model.pipe.vae, plan.work_width, plan.work_height)
        with wrapped_convolutions([vae], tile_axes(plan.tiling)):
            call = self._pipeline_call(plan, model)
        latents = self._run(call, plan, model, progress, cancelled)
        if cancelled():
            raise JobCancelled()
        images = self._finish(latents, plan, model)
        return GenerationOutput(
            images=[GeneratedImage(to_pixels(image), seed) for image, seed in zip(images, plan.seeds)],
            params=dataclasses.replace(plan.request, model=model.name),
            tiling=plan.tiling,
            model=model.name)

    # ------------------------------------------------------------------ 1. the model
    def _model(self, job: GenerateRequest) -> LoadedModel:
        return job_model(self._store, job)

    # ------------------------------------------------------------------ 2. what to call
    def _pipeline_call(self, plan: GenerationPlan, model: LoadedModel) -> PipelineCall:
        job = plan.request
        if is_transformer(model.family):
            rgb = None if plan.init is None else work_region(plan, plan.init[..., :3])
            mask = None if plan.mask is None else work_region(plan, plan.mask)
            call = PipelineCall(plan.kind, dit_call(plan, model.pipe, model.family, rgb, mask))
            return self._condition_dit(call, plan, model, rgb)
        if job.loras:
            # A LoRA may change the text encoder: its embeddings are not the cached ones.
            prompts = dict(prompt=job.prompt, negative_prompt=job.negative_prompt or None)
        else:
            prompts = model.accel.prompt_kwargs(model.pipe, job.prompt, job.negative_prompt or None,
                                                classifier_free_guidance(model.pipe, job.guidance))
        kwargs: dict[str, Any] = dict(
            **prompts,
            num_inference_steps=job.steps, guidance_scale=job.guidance,
            num_images_per_prompt=plan.batch_size,
            generator=[torch.Generator("cpu").manual_seed(seed) for seed in plan.seeds],
            output_type="latent")
        vae, device = model.pipe.vae, model.pipe.device
        if plan.kind == "txt2img":
            kwargs.update(width=plan.work_width, height=plan.work_height)
        elif plan.kind == "img2img":
            assert plan.init is not None
            init = encode_rgb(vae, plan.init[..., :3], device)
            kwargs.update(image=init.expand(plan.batch_size, -1, -1, -1), strength=job.strength)
        else:
            kwargs.update(self._inpaint_inputs(plan, model), strength=job.strength,
                          width=plan.work_width, height=plan.work_height)
        return self._with_references(self._condition(PipelineCall(plan.kind, kwargs), plan, model),
                                     plan, model)

    def _condition(self, call: PipelineCall, plan: GenerationPlan,
                   model: LoadedModel) -> PipelineCall:
        """The call conditioned on the job's controls: ControlNets (several: one
        MultiControlNetModel) and T2I-Adapters in any mix (control.py, adapter.py), or
        SD2-depth's own depth input."""
        if not plan.controls:
            return call
        controls = [self._estimated(c, model) if c.estimate else c for c in plan.controls]
        init_rgb = None if plan.init is None else work_region(plan, plan.init[..., :3])
        if model.family == SD2_DEPTH:
            return self._depth2img(call, plan, controls, init_rgb)
        axes = tile_axes(plan.tiling)
        nets: list[tuple[str, PlannedControl, torch.Tensor]] = []
        guides: list[AdapterGuide] = []
        for control in controls:
            image = control_tensor(control, work_region(plan, control.image))
            name = self._control_model(control)
            if _refielded(control, lambda: self._store.conditioner_family(name)) == T2I_ADAPTER:
                adapter = _refielded(control, lambda: self._store.adapter(name))
                guides.append(_refielded(control, lambda: adapter_guide(
                    adapter, image, model.pipe.unet, model.pipe.vae_scale_factor, control,
                    axes, name, field=_model_field(control))))
            else:
                nets.append((name, control, image))
        if not nets:
            return dataclasses.replace(call, adapters=tuple(guides))
        for name, control, _ in nets:
            _refielded(control, lambda: self._store.controlnet(name))
        controlnet = self._store.controlnet_set([name for name, _, _ in nets])
        conditioned = condition_on_controlnets(call.kind, call.kwargs,
                                               [image for _, _, image in nets],
                                               [control for _, control, _ in nets], init_rgb)
        return PipelineCall(conditioned.kind, conditioned.kwargs, controlnet, tuple(guides))

    def _condition_dit(self, call: PipelineCall, plan: GenerationPlan, model: LoadedModel,
                       init_rgb: Optional[np.ndarray]) -> PipelineCall:
        """A transformer's call conditioned on the job's controls through ControlNets of
        the model's family (dit_controls.py; the store refuses one of another family): on
        Flux any number (a set), on SD3 one."""
        if model.family == FLUX_CONTROL:
            control = control_transformer_control(plan.controls, model.name)
            control = self._estimated(control, model) if control.estimate else control
            image = control_tensor(control, work_region(plan, control.image))
            return PipelineCall(call.kind, condition_on_control_transformer(
                call.kind, call.kwargs, image, init_rgb))
        if not plan.controls:
            return call
        if model.family != FLUX:
            one_control(plan.controls, model.family)
        controls = [self._estimated(c, model) if c.estimate else c for c in plan.controls]
        names = [self._control_model(control) for control in controls]
        nets = [_refielded(control, lambda n=name: self._store.controlnet(n))
                for control, name in zip(controls, names)]
        modes = [union_mode(net, control.kind, f"{control.field}.kind")
                 for net, control in zip(nets, controls)]
        images = [control_tensor(control, work_region(plan, control.image)) for control in controls]
        kwargs = condition_on_dit_controlnet(call.kind, call.kwargs, images, controls, init_rgb, modes)
        return PipelineCall(call.kind, kwargs, self._store.controlnet_set(names))

    def _with_references(self, call: PipelineCall, plan: GenerationPlan,
                         model: LoadedModel) -> PipelineCall:
        """The call with the job's reference images (IP-Adapter, references.py): their
        image embeddings as ``ip_adapter_image_embeds``, their attention set up in
        ``_job_context``."""
        if not plan.references:
            return call
        if base_family(model.family) not in (SD15, SDXL):
            raise ProtocolError(ErrorCode.UNSUPPORTED,
                                f"reference images need an IP-Adapter, which exists for SD1.5 "
                                f"and SDXL models; model {model.name} is {model.family}",
                                "job.references")
        setup = reference_setup(
            plan.references, lambda ref: self._store.ip_adapter(ref.model, f"{ref.field}.model"),
            model.pipe.unet, classifier_free_guidance(model.pipe, plan.request.guidance))
        kwargs = dict(call.kwargs, ip_adapter_image_embeds=list(setup.embeds))
        return dataclasses.replace(call, kwargs=kwargs, references=setup)

    def _control_model(self, control: PlannedControl) -> str:
        """The control model ``control`` names, else the default for its kind; refused
        (invalid_field) when its name says it was trained on another kind."""
        name = control.model or _refielded(control, lambda: self._store.default_control(control.kind))
        trained_on = kind_of_model(name)
        if trained_on is not None and trained_on != control.kind:
            raise ProtocolError(ErrorCode.INVALID_FIELD,
                                f"{shorten(name)} is a {trained_on} control model; this control "
                                f"is {control.kind}", _model_field(control))
        return name

    def _depth2img(self, call: PipelineCall, plan: GenerationPlan,
                   controls: list[PlannedControl], init_rgb: Optional[np.ndarray]) -> PipelineCall:
        """SD2-depth: one depth control, fed as the UNet's fifth channel."""
        if len(controls) != 1 or controls[0].kind != "depth":
            raise ProtocolError(ErrorCode.UNSUPPORTED,
                                "an SD2-depth model takes exactly one control, of kind depth",
                                controls[-1].field if controls[0].kind == "depth"
                                else f"{controls[0].field}.kind")
        near = work_region(plan, nearness_of(controls[0]))
        conditioned = condition_on_depth2img(call.kind, call.kwargs, near, controls[0],
                                             init_rgb, plan.request.strength)
        return PipelineCall(conditioned.kind, conditioned.kwargs)

    def _estimated(self, control: PlannedControl, model: Optional[LoadedModel]) -> PlannedControl:
        """A depth control with its image estimated from its picture by the depth model
        (loaded on first use, on the model's device and in its precision)."""
        assert control.source is not None
        if self._depth_estimator is None:
            folder = find_depth_model(os.environ, self._store.hf_cache)
            # In low-memory mode it leaves the GPU between estimates, as the model's parts do.
            offloaded = model is not None and CPU_OFFLOAD in model.accel.applied
            self._depth_estimator = DepthEstimator(
                folder, self._store.device, model.dtype if model is not None else torch.float32,
                keep_on_device=not offloaded)
        near = self._depth_estimator.estimate(control.source)
        return control.with_image(np.repeat(near[..., None], 3, axis=2))

    def _inpaint_inputs(self, plan: GenerationPlan, model: LoadedModel) -> dict[str, Any]:
        """The context crop at working size: init latents, the mask, and the masked-image
        latents a 9-channel inpaint UNet is conditioned on."""
        assert plan.init is not None and plan.mask is not None and plan.crop is not None
        rgb, mask = work_region(plan, plan.init[..., :3]), work_region(plan, plan.mask)
        vae, device = model.pipe.vae, model.pipe.device
        init = encode_rgb(vae, rgb, device)
        if model.pipe.unet.config.in_channels == 9:
            # What diffusers would compute, encoded here without a random draw (see latents.py).
            masked = encode_rgb(vae, np.where(mask[..., None] < 0.5, rgb, 127).astype(np.uint8), device)
        else:
            masked = init   # a 4-channel UNet ignores it; passing latents skips a VAE encode
        return dict(image=init, mask_image=mask_to_tensor(mask), masked_image_latents=masked)

    # ------------------------------------------------------------------ 3. run it
    def _run(self, call: PipelineCall, plan: GenerationPlan, model: LoadedModel,
             progress: ProgressSink, cancelled: Callable[[], bool]) -> torch.Tensor:
        """The denoising loop; returns the final latents or raises JobCancelled."""
        shared = model.pipeline(call.kind, call.controlnet)
        # A shallow copy: the same modules, but this job's own scheduler and call state
        # (diffusers keeps ``_interrupt`` and the step count on the pipeline object).
        pipe = copy.copy(shared)
        # Flux, SD3: their flow-matching scheduler, Flux's packed latents unpacked (dit.py).
        dit = None
        if is_transformer(model.family):
            pipe.scheduler = flow_scheduler(shared.scheduler)
            dit = DiTLatents(shared, plan.work_width, plan.work_height)
            # Seamless tiling for a transformer: each call sees the latent rolled (dit.py).
            rolled = rolled_transformer(shared, plan)
            if rolled is not None:
                pipe.transformer = rolled
        else:
            # The model's prediction (v-prediction, zero terminal SNR) and the job's preset.
            pipe.scheduler = make_scheduler(plan.request.scheduler,
                                            {**shared.scheduler.config,
                                             **model.prediction.scheduler_config(),
                                             **dict(plan.scheduler_config)})
        steps_done = 0

        def position() -> tuple[int, int]:
            """(steps done, steps in all), for what changes from step to step."""
            return steps_done, pipe.num_timesteps

        # On this job's copy only: the shared pipeline keeps the plain UNet.
        if plan.request.cache_interval > 1:
            if model.deep_tap is None:
                raise ProtocolError(ErrorCode.UNSUPPORTED, f"model {model.name} has no UNet to "
                                    "cache steps of", field="job.cache_interval")
            pipe.unet = StepCachedUNet(shared.unet, plan.request.cache_interval, position,
                                       model.deep_tap)
        elif COMPILE_UNET in model.accel.applied:
            pipe.unet = JobUNet(shared.unet)    # keeps per-job state out of the compiled graphs
        if plan.regions:    # each step's UNet call fans out to the regions' prompts
            pipe.unet = with_regions(pipe.unet, pipe, model, plan,
                                     [work_region(plan, region.mask) for region in plan.regions])
        layout = preview_layout(plan, model.pipe.vae_scale_factor)
        palette = LatentPalette.for_family(model.family)
        was_cancelled = False

        def on_step_end(p: DiffusionPipeline, index: int, _t: Any, tensors: dict) -> dict:
            nonlocal was_cancelled, steps_done
            step, total = index + 1, p.num_timesteps
            steps_done = step
            preview = None
            if preview_due(step, plan.request.preview_every, total):
                latents = tensors["latents"] if dit is None else dit.unpack(tensors["latents"])
                preview = to_pixels(layout.render(latents, palette))
            progress(step, total, preview)
            if cancelled():
                # diffusers' documented way to stop: the remaining steps are skipped
                p._interrupt = True
                was_cancelled = True
            return {}

        try:
            with self._job_context(plan, pipe, call.adapters, position), \
                    reference_attention(call.references, shared), \
                    controlnet_job_context(pipe, plan):
                result = pipe(**call.kwargs, callback_on_step_end=on_step_end,
                              callback_on_step_end_tensor_inputs=["latents"])
        finally:
            if model.deep_tap is not None:
                model.deep_tap.clear()    # the last step's deep features: not kept between jobs
        if was_cancelled:
            raise JobCancelled()
        return result.images if dit is None else dit.unpack(result.images)

    @staticmethod
    @contextlib.contextmanager
    def _job_context(plan: GenerationPlan, pipe: DiffusionPipeline,
                     adapters: tuple[AdapterGuide, ...],
                     position: Callable[[], tuple[int, int]]) -> Iterator[None]:
        """What wraps the model's modules for the duration of this job's call: seamless
        tiling's circular padding (tiling.py) and a T2I-Adapter's residuals (adapter.py),
        undone when the call ends however it ends."""
        vae = whole_image_vae(pipe.vae, plan.work_width, plan.work_height)
        modules = [getattr(pipe, "unet", None), vae, getattr(pipe, "controlnet", None)]
        with wrapped_convolutions(modules, tile_axes(plan.tiling)):
            if not adapters:
                yield
            else:
                with adapter_residuals(pipe.unet, adapters, position):
                    yield

    # ------------------------------------------------------------------ 4. pixels out
    def _finish(self, latents: torch.Tensor, plan: GenerationPlan, model: LoadedModel) -> list[np.ndarray]:
        """Decoded images at the output size: RGB, or RGBA pasted into the init image."""
        vae = model.pipe.vae
        decoded = decode_wrapped(vae, latents, tile_axes(plan.tiling),
                                 lambda z: decode_rgb(vae, z))
        if plan.kind != "inpaint":
            return [resize(image, plan.width, plan.height) for image in decoded]
        assert plan.init is not None and plan.mask is not None and plan.crop is not None
        crop = plan.crop
        back = (-plan.offset[0], -plan.offset[1])   # make_seamless rolls the texture back
        return [roll_image(composite(plan.init, resize(image, crop.width, crop.height),
                                     plan.mask[crop.slices()], crop), back)
                for image in decoded]


T = TypeVar("T")


def _model_field(control: PlannedControl) -> str:
    """Where a control's model is named: errors of the old depth form keep the field
    the store gives them."""
    return "control.model" if control.legacy else f"{control.field}.model"


def _refielded(control: PlannedControl, step: Callable[[], T]) -> T:
    """``step()``, its ProtocolErrors naming ``control``'s model field. For controls of
    ``job.controls`` a model made for another family (``unsupported`` from the store) is
    ``invalid_field``; the old depth form keeps its codes."""
    try:
        return step()
    except ProtocolError as exc:
        if control.legacy:
            raise
        code = ErrorCode.INVALID_FIELD if exc.code == ErrorCode.UNSUPPORTED else exc.code
        raise ProtocolError(code, exc.message, _model_field(control)) from exc


def job_model(store: ModelStore, job: GenerateRequest) -> LoadedModel:
    """The model ``job`` names, else the store's default. A named model leaves the
    default, which other clients' jobs run on, as it is."""
    if job.model is not None:
        return store.use(job.model)
    if store.current is None:
        raise ProtocolError(ErrorCode.NOT_READY, "no model is loaded; load one or name it",
                            "job.model")
    return store.use_default()


def work_region(plan: GenerationPlan, image: np.ndarray) -> np.ndarray:
    """An output-size array as the pipeline sees it: the inpaint context crop (if any)
    at the working size."""
    if plan.crop is not None:
        image = np.ascontiguousarray(image[plan.crop.slices()])
    return resize(image, plan.work_width, plan.work_height)


def model_traits(model: LoadedModel) -> ModelTraits:
    transformer = getattr(model.pipe, "transformer", None)
    distilled = getattr(getattr(transformer, "config", None), "guidance_embeds", True)
    steps, guidance = sampling_defaults(model.family, guidance_distilled=distilled)
    return ModelTraits(native_side=native_side(model.pipe), steps=steps, guidance=guidance)


def preview_layout(plan: GenerationPlan, scale: int) -> PreviewLayout:
    """Previews show the whole output at latent resolution (output size / VAE scale)."""
    width, height = max(1, plan.width // scale), max(1, plan.height // scale)
    if plan.kind != "inpaint":
        return PreviewLayout((width, height))
    assert plan.init is not None and plan.crop is not None
    background = resize(np.ascontiguousarray(plan.init[..., :3]), width, height)
    return PreviewLayout((width, height), background,
                         scaled_box(plan.crop, 1 / scale, width, height))
