"""``AssetGenerator``: the game-asset job kinds ("upscale", "texture_set") in front of the
diffusion generator, which keeps every other kind. Both are ``Generator``s
(backend/generation.py), so the job layer sees one.

upscale: Lanczos, or the named super-resolution model (models/upscalers.py) in tiles, as
many passes of its factor as the size needs, then Lanczos to the exact size
(upscale.py); then, with ``refine_strength`` > 0, the tiled refine on the job's model
(refine.py). Progress counts the model's tiles and the refine's tiles x steps as one run.
texture_set: PBR maps (pbr.py), one labelled result image per map.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import ImageFrame
from protocol.messages import GenerateRequest

from ..generation import GeneratedImage, GenerationOutput, Generator, JobCancelled, ProgressSink
from ..limits import ServerLimits
from ..models.sources import ModelRoots
from ..models.families import SD2_DEPTH, T2I_ADAPTER
from ..models.store import LoadedModel, ModelStore
from ..models.upscalers import LoadedUpscaler, load_upscaler, resolve_upscaler
from .asset_plan import ASSET_KINDS, TexturePlan, UpscalePlan, plan_texture_set, plan_upscale
from .generator import job_model, model_traits
from .pbr import (MARIGOLD_APPEARANCE, MARIGOLD_DEPTH, MARIGOLD_FOR_MAP, MARIGOLD_NORMALS,
                  find_marigold, maps_from_colour, marigold_maps, require_marigold)
from .pixels import to_pixels
from .plan import SEED_RANGE, ModelTraits
from .control import control_tensor
from .refine import TileControl, refine_tile_steps, tiled_refine
from .tiling import wrapped_convolutions
from .upscale import lanczos, model_grid, model_upscale

log = logging.getLogger("atelier.assets")

MAX_MODEL_PASSES = 3          # 4x model, 64x at most before Lanczos takes over
LANCZOS = "lanczos"           # Result.model of an upscale without a model
UPSCALED_LABEL = "upscaled"


class AssetGenerator:
    """Runs the asset kinds itself and hands every other job to ``inner``."""

    def __init__(self, inner: Generator, store: ModelStore, limits: ServerLimits = ServerLimits()):
        self._inner = inner
        self._store = store
        self._limits = limits
        self._upscaler: Optional[tuple[Path, LoadedUpscaler]] = None   # the last one used
        self._marigold: dict[str, Any] = {}     # repo id -> pipeline, those of the last job

    # ------------------------------------------------------------------ Generator
    def check(self, job: GenerateRequest, uploads: Mapping[str, ImageFrame]) -> None:
        if job.kind == "upscale":
            plan = plan_upscale(job, uploads, self._limits, ModelTraits(), fresh_seed=0)
            if plan.upscaler is not None:
                resolve_upscaler(plan.upscaler, self._roots())
        elif job.kind == "texture_set":
            plan = plan_texture_set(job, uploads, fresh_seed=0)
            if plan.request.texture is not None and plan.request.texture.source == "marigold":
                for name in plan.maps:     # missing weights: refused before the job queues
                    require_marigold(MARIGOLD_FOR_MAP[name], self._store.hf_cache, name)
        else:
            self._inner.check(job, uploads)

    def generate(self, job: GenerateRequest, uploads: Mapping[str, ImageFrame],
                 progress: ProgressSink, cancelled: Callable[[], bool]) -> GenerationOutput:
        if job.kind not in ASSET_KINDS:
            return self._inner.generate(job, uploads, progress, cancelled)
        if cancelled():
            raise JobCancelled()
        if job.kind == "upscale":
            return self._upscale(job, uploads, progress, cancelled)
        return self._texture_set(plan_texture_set(job, uploads, secrets.randbelow(SEED_RANGE)),
                                 progress, cancelled)

    # ------------------------------------------------------------------ upscale
    def _upscale(self, job: GenerateRequest, uploads: Mapping[str, ImageFrame],
                 progress: ProgressSink, cancelled: Callable[[], bool]) -> GenerationOutput:
        upscale = job.upscale
        model = job_model(self._store, job) if upscale and upscale.refine_strength > 0 else None
        traits = model_traits(model) if model is not None else ModelTraits()
        plan = plan_upscale(job, uploads, self._limits, traits, secrets.randbelow(SEED_RANGE))
        upscaler = self._load_upscaler(plan.upscaler) if plan.upscaler else None
        init = plan.init
        height, width = init.shape[:2]
        passes = _passes(width, height, plan.width, plan.height, upscaler)
        total = sum(_model_tiles(w, h, plan) for w, h in passes)
        if plan.refine is not None:
            total += refine_tile_steps(plan.width, plan.height, plan.refine)
        done = 0

        def on_tile(_done: int, _total: int) -> None:
            nonlocal done
            done += 1
            progress(done, total, None)

        rgb = np.ascontiguousarray(init[..., :3])
        for _ in passes:
            assert upscaler is not None
            rgb = model_upscale(rgb, upscaler, plan.axes, cancelled, self._store.device,
                                on_tile=on_tile)
        rgb = lanczos(rgb, plan.width, plan.height, plan.axes)
        name = plan.upscaler or LANCZOS
        if plan.refine is not None:
            assert model is not None
            self._store.use_loras(plan.request.loras)
            self._store.use_embeddings([plan.request.prompt, plan.request.negative_prompt])
            scheduler_config = {**model.pipe.scheduler.config,
                                **model.prediction.scheduler_config()}
            rgb = tiled_refine(model.pipe, model.family, rgb, plan.refine, scheduler_config,
                               progress, cancelled, progress_offset=done, progress_total=total,
                               controls=self._tile_controls(plan, model))
            name = model.name
        alpha = lanczos(np.ascontiguousarray(init[..., 3:]), plan.width, plan.height, plan.axes)
        image = np.concatenate([rgb, alpha], axis=2)
        params = dataclasses.replace(plan.request, model=model.name if model else job.model)
        return GenerationOutput(
            images=[GeneratedImage(to_pixels(image), plan.request.seed or 0, UPSCALED_LABEL)],
            params=params, tiling=plan.axes.name, model=name)

    def _tile_controls(self, plan: UpscalePlan, model: LoadedModel) -> tuple[TileControl, ...]:
        """The plan's controls as ControlNets that read their images tile by tile.
        T2I-Adapters, SD2-depth models and depth estimated from a picture are not
        available in the tiled refine (unsupported, naming the control's field)."""
        out = []
        for control in plan.controls:
            if control.estimate:
                raise ProtocolError(ErrorCode.UNSUPPORTED,
                                    "an upscale's refine cannot estimate depth yet; send the "
                                    "depth map as the control's image", f"{control.field}.preprocess")
            if model.family == SD2_DEPTH:
                raise ProtocolError(ErrorCode.UNSUPPORTED, "an SD2-depth model takes no "
                                    "ControlNets in an upscale's refine", control.field)
            where = f"{control.field}.model"
            name = _refielded(where, lambda: control.model or self._store.default_control(control.kind))
            if _refielded(where, lambda: self._store.conditioner_family(name)) == T2I_ADAPTER:
                raise ProtocolError(ErrorCode.UNSUPPORTED,
                                    f"{name} is a T2I-Adapter; an upscale's refine works tile by "
                                    f"tile with ControlNets only", where)
            controlnet = _refielded(where, lambda: self._store.controlnet(name))
            assert control.image is not None
            image = np.clip(np.rint(control.image * 255.0), 0, 255).astype(np.uint8)
            out.append(TileControl(controlnet, image, control.scale, control.start, control.end,
                                   lambda tile, c=control: control_tensor(c, tile)))
        return tuple(out)

    def _roots(self) -> ModelRoots:
        store = self._store
        return ModelRoots.of(store.home, store.search_dirs, store.hf_cache, store.allowed_paths)

    def _load_upscaler(self, name: str) -> LoadedUpscaler:
        path = resolve_upscaler(name, self._roots())
        if self._upscaler is None or self._upscaler[0] != path:
            self._upscaler = None     # the old one's memory goes before the new one loads
            self._upscaler = (path, load_upscaler(path, self._store.device))
        return self._upscaler[1]

    # ------------------------------------------------------------------ texture set
    def _texture_set(self, plan: TexturePlan, progress: ProgressSink,
                     cancelled: Callable[[], bool]) -> GenerationOutput:
        settings = plan.request.texture
        assert settings is not None
        rgb = np.ascontiguousarray(plan.init[..., :3])
        from_marigold = [m for m in plan.maps if self._marigold_for(m, settings.source)]
        from_image = [m for m in plan.maps if m not in from_marigold]
        maps: dict[str, np.ndarray] = {}
        if from_image:
            maps.update(maps_from_colour(rgb, from_image, settings.normal_strength, plan.axes))
        if from_marigold:
            pipes = self._marigold_pipes({MARIGOLD_FOR_MAP[m] for m in from_marigold})
            modules = [module for pipe in pipes.values() for module in (pipe.unet, pipe.vae)]
            with wrapped_convolutions(modules, plan.axes):
                maps.update(marigold_maps(pipes, rgb, from_marigold, plan.request.seed or 0,
                                          plan.axes))
        if cancelled():
            raise JobCancelled()
        images = []
        for index, name in enumerate(plan.maps, 1):
            images.append(GeneratedImage(to_pixels(maps[name]), plan.request.seed or 0, name))
            progress(index, len(plan.maps), None)
        used = sorted({MARIGOLD_FOR_MAP[m] for m in from_marigold})
        model = ", ".join(used + (["image"] if from_image else []))
        return GenerationOutput(images=images, params=plan.request, tiling=plan.axes.name,
                                model=model)

    def _marigold_for(self, map_name: str, source: str) -> bool:
        """Whether ``map_name`` comes from Marigold: always for source "marigold" (missing
        weights are an error there), where its weights are cached for "auto"."""
        if source == "image":
            return False
        repo_id = MARIGOLD_FOR_MAP[map_name]
        if source == "marigold":
            require_marigold(repo_id, self._store.hf_cache, map_name)
            return True
        return find_marigold(repo_id, self._store.hf_cache) is not None

    def _marigold_pipes(self, repo_ids: set[str]) -> dict[str, Any]:
        import diffusers

        classes = {MARIGOLD_NORMALS: diffusers.MarigoldNormalsPipeline,
                   MARIGOLD_DEPTH: diffusers.MarigoldDepthPipeline,
                   MARIGOLD_APPEARANCE: diffusers.MarigoldIntrinsicsPipeline}
        kept = {r: p for r, p in self._marigold.items() if r in repo_ids}
        self._marigold = kept
        for repo_id in sorted(repo_ids - set(kept)):
            folder = require_marigold(repo_id, self._store.hf_cache, repo_id)
            pipe = classes[repo_id].from_pretrained(str(folder), torch_dtype=self._store.dtype,
                                                    use_safetensors=True)
            pipe.set_progress_bar_config(disable=True)
            self._marigold[repo_id] = pipe.to(self._store.device)
        return self._marigold


def _refielded(where: str, step: Callable[[], Any]) -> Any:
    """``step()``, its ProtocolError reported on the control's model field."""
    try:
        return step()
    except ProtocolError as exc:
        raise ProtocolError(exc.code, exc.message, where) from exc


def _passes(width: int, height: int, out_width: int, out_height: int,
            upscaler: Optional[LoadedUpscaler]) -> list[tuple[int, int]]:
    """The input sizes of the model passes: while the image is smaller than the output,
    at most ``MAX_MODEL_PASSES``."""
    passes: list[tuple[int, int]] = []
    if upscaler is None:
        return passes
    while (width < out_width or height < out_height) and len(passes) < MAX_MODEL_PASSES:
        passes.append((width, height))
        width, height = width * upscaler.scale, height * upscaler.scale
    return passes or [(width, height)]


def _model_tiles(width: int, height: int, plan: UpscalePlan) -> int:
    return len(model_grid(width, height, plan.axes)[0])
