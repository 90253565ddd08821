"""Texture from Views: texture the selected meshes from many cameras into their own UVs.

Per view, Blender renders depth and camera-space normals (passes.py) and sends one job
with both as controls: the first view generates freely, each later one inpaints what the
views before it did not see well, its init image the texture so far as seen from there.
Each result is blended into every object's UV layout (multiview.py weights it, at the
texels multiview_texels.py finds). All of it runs in short steps of the session's pump.
The scene gets its images, materials and (when an object had none) Smart UV maps only when
the last view is in; Cancel or a failure leaves it as it was. A finished run is kept, so
that one of its views can be generated again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterator, Optional

import bpy
import mathutils
import numpy as np
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty

from . import host, multiview, multiview_texels, passes, projection, settings
from .multiview_texels import TEXEL_CHUNK
from .addon import ensure_timer
from .panels import CATEGORY
from .properties import ADDON_ID
from .protocol import PixelFormat, ProtocolError, validate
from .protocol.client import ClientError, make_upload
from .runtime import Job, Session

LABEL = "Texture from Views"
SMART_UV_NAME = "Atelier Views UV"
WEIGHTS_PREFIX = "Atelier Weights"
LENS, SENSOR = 50.0, 36.0           # the placed cameras' (mm)
INIT_BACKGROUND = 0.5               # grey where the init image knows no colour
EXACT_NORMALS = "float32x3"         # the daemon's capability: normals sent as floats
WELCOME_WAIT = 10.0                 # seconds a view waits for the daemon's welcome
COVERAGE_SAMPLES = 20000            # texels a view's coverage is estimated on, for the order
VIEW_SOURCES = (("AUTO", "Around the Objects", "Cameras placed on an orbit around the "
                 "selected meshes (plus top and bottom as ticked)"),
                ("CAMERAS", "Selected Cameras", "The selected camera objects (Order: As Listed "
                 "takes them in name order)"))


PASS_SCALES = (("1", "Full", "Depth and normals rendered at the views' size"),
               ("2", "Half", "Depth and normals rendered at half the views' size: a render "
                "takes about a quarter of the time Blender is held for it; the daemon scales "
                "the controls up"),
               ("4", "Quarter", "Depth and normals rendered at a quarter of the views' size"))
VIEW_ORDER_ITEMS = (
    ("FRONT", "Front First", "The view facing the objects' front (from -Y, as Blender's Front "
     "view) first, then the others by their angle from it: the back last"),
    ("COVERAGE", "Most Coverage First", "Each next view the one that sees most of what the "
     "views before it did not see well"),
    ("LISTED", "As Listed", "The orbit's order (front, then round, top, bottom), or the "
     "selected cameras' names"))
assert {item[0] for item in VIEW_ORDER_ITEMS} == set(multiview.VIEW_ORDERS)


class AtelierViewsSettings(bpy.types.PropertyGroup):
    views_from: EnumProperty(name="Views", items=VIEW_SOURCES, default="AUTO",
                             description="Where the views are seen from")
    orbit_count: IntProperty(name="Orbit Views", default=4, min=0, max=16,
                             description="Cameras evenly around the objects")
    elevation: FloatProperty(name="Elevation", default=15.0, min=-80.0, max=80.0,
                             description="Degrees above the objects' centre the orbit looks "
                                         "from")
    top: BoolProperty(name="Top", default=True, description="Add a view from straight above")
    bottom: BoolProperty(name="Bottom", default=False,
                         description="Add a view from straight below")
    distance: FloatProperty(name="Distance", default=0.0, min=0.0, unit="LENGTH",
                            description="Camera distance from the objects' centre; 0 frames "
                                        "their bounding sphere")
    texture_size: IntProperty(name="Texture Size", default=1024, min=64, max=8192,
                              description="Side of each object's texture in pixels "
                                          "(1024, 2048, 4096 ...)")
    view_order: EnumProperty(
        name="Order", items=VIEW_ORDER_ITEMS, default="FRONT",
        description="Which view generates freely first; each later one inpaints what the "
                    "views before it did not see well")
    max_angle: FloatProperty(name="Max Angle", default=multiview.MAX_ANGLE, min=10.0,
                             max=90.0, precision=0, step=100,
                             description="A view gives no colour to a surface it sees more "
                                         "than this many degrees off its normal")
    seen_weight: FloatProperty(name="Seen Well", default=multiview.SEEN_WEIGHT, min=0.01,
                               max=2.0, description="Texels with less summed view weight are "
                                                    "repainted by the next view")
    pass_scale: EnumProperty(name="Pass Size", items=PASS_SCALES, default="1",
                             description="The size each view's depth and normals are rendered "
                                         "at (the render holds Blender while it runs: "
                                         "about 0.1 s at 256 px, 0.3 s at 512)")
    padding: IntProperty(name="Padding", default=4, min=0, max=64,
                         description="Texels the UV islands are grown by")
    keep_weights: BoolProperty(name="Keep Weight Maps", default=False,
                               description="Also keep each view's weight per texel as an "
                                           "image (for checking which view painted what)")


@dataclass
class _View:
    name: str
    capture: Any                     # capture.Capture: the passes as rendered
    width: int
    height: int
    surface_object: np.ndarray       # (H, W) int: target index, -1 none; bottom row first
    surface_texel: np.ndarray        # (H, W) int: index into the target's inside texels
    geometry: multiview.ViewGeometry
    uploads: Optional[passes.PassUploads] = None   # made once the daemon's welcome is in


@dataclass(frozen=True)
class _Shot:
    """A view to render: its name, where its camera stands (4x4 world matrix), and what
    makes its camera the scene's for a block (called with the scene and view layer)."""
    name: str
    matrix_world: tuple
    seen_from: Callable[[Any, Any], contextlib.AbstractContextManager]


@dataclass(frozen=True)
class StepTime:
    """One step of a run on Blender's main thread: its wall and CPU seconds (the CPU's
    are the step's own work; the wall's also any time the machine gave the thread none),
    where it paused ('function:line'), for which view, and when it began (perf_counter)."""
    seconds: float
    cpu: float
    where: str
    view: Any
    began: float


@dataclass
class ViewsRun:
    """One Texture from Views: the views, the objects, what was blended so far.

    All of Blender's share runs on its main thread in steps of the session's pump (each
    job's ``preparing`` renders its view and works out its uploads; its ``finishing``
    blends its picture in and, after the last view, makes the images), so no step holds
    Blender for long: ``longest_step`` records the longest."""
    scene_name: str
    view_layer_name: str
    panel: settings.PanelSettings
    size: int
    padding: int
    seen_weight: float
    max_angle: float
    order: str
    pass_scale: int
    keep_weights: bool
    as_files: bool
    session: Session
    meshes: list[multiview_texels.Mesh]
    uv_added: list[tuple[str, str]]         # (object, UV map) the run made
    shots: list[_Shot]
    center: np.ndarray
    targets: list[multiview_texels.Target] = field(default_factory=list)
    views: list[_View] = field(default_factory=list)      # rendered so far, in order
    jobs: list[Job] = field(default_factory=list)
    timings: list[dict] = field(default_factory=list)    # per view: seconds spent where
    made: list[str] = field(default_factory=list)        # images the run kept
    steps: list["StepTime"] = field(default_factory=list)
    _sent_at: float = 0.0
    _reruns: dict = field(default_factory=dict)            # id(job) -> the view it re-runs
    _undo: dict = field(default_factory=dict)    # id(job) -> the shares a re-run replaced

    # ------------------------------------------------------------ jobs
    def start(self) -> Job:
        return self._send(0)

    def _job(self, label: str, finish: Callable, ended: Optional[Callable]) -> Job:
        request = settings.build_request(self.panel, kind="txt2img", width=self.panel.width,
                                         height=self.panel.height)   # until it is made
        return Job(label, request, (), self.scene_name, finish,
                   images_as_files=self.as_files, ended=ended)

    def _label(self, index: int) -> str:
        return f"{LABEL}: view {index + 1}/{len(self.shots)} ({self.shots[index].name})"

    def _send(self, index: int) -> Job:
        job = self._job(self._label(index), self._view_done, self._abandon)
        job.preparing = self._timed(self._making(job, index), index)
        self.jobs.append(job)
        self.session.submit(job)
        ensure_timer()
        return job

    def _timed(self, steps: Iterator[None], view: Any) -> Iterator[None]:
        """``steps``, each timed into ``steps`` (for ``view``)."""
        while True:
            began, cpu = time.perf_counter(), time.thread_time()
            try:
                next(steps)
                where = _paused_at(steps)
            except StopIteration:
                where = f"{steps.gi_code.co_name}:end"
            self.steps.append(StepTime(time.perf_counter() - began, time.thread_time() - cpu,
                                       where, view, began))
            if where.endswith(":end"):
                return
            yield

    def _making(self, job: Job, index: int) -> Iterator[None]:
        """Job ``index``'s request and uploads: (first) the objects' texels and the views'
        order, its view's passes and what they show, and (later views) its init image and
        mask."""
        if index == 0:
            for mesh in self.meshes:
                self._scene()
                triangles = multiview_texels.triangles(bpy.data.objects[mesh.name], mesh.uv_map,
                                       bpy.context.evaluated_depsgraph_get())
                yield
                target = yield from multiview_texels.texels_steps(mesh, triangles, self.size)
                self.targets.append(target)
            yield from self._order_shots()
            job.label = self._label(0)
        if index == len(self.views):
            self.views.append((yield from self._render(index)))
        view = self.views[index]
        if view.uploads is None:
            # Exact normals only to a daemon that says it takes them: wait a little for
            # its welcome when the run began before it came
            waited = time.monotonic()
            while not self.session.connection_ok and time.monotonic() - waited < WELCOME_WAIT:
                yield
            exact = EXACT_NORMALS in self.session.capabilities
            view.uploads = passes.pass_uploads(view.capture, exact_normals=exact)
        uploads = list(view.uploads.uploads)
        request = settings.build_request(self.panel, kind="txt2img",
                                         controls=view.uploads.ids, width=view.width,
                                         height=view.height)
        request = dataclasses.replace(request, batch_size=1, preview_every=0)
        if index > 0:
            init, seen = self._seen_from(view)
            yield
            mask = multiview.repaint_mask(seen, view.surface_object >= 0, self.seen_weight)
            uploads += [init, _mask_upload(view, mask)]
            request = dataclasses.replace(request, kind="inpaint", init_image=uploads[-2].id,
                                          mask=uploads[-1].id, strength=1.0)
        validate(request, "job")
        job.request, job.uploads = request, tuple(uploads)
        self._sent_at = time.perf_counter()

    def _order_shots(self) -> Iterator[None]:
        """Put the shots in the run's order (multiview.order_views)."""
        if self.order == "LISTED" or len(self.shots) < 2:
            return
        if self.order == "FRONT":
            origins = np.array([np.array(s.matrix_world)[:3, 3] for s in self.shots])
            order = multiview.order_views("FRONT", origins=origins, center=self.center)
        else:
            weights = []
            for shot in self.shots:
                weights.append(self._sample_weights(shot))
                yield
            order = multiview.order_views("COVERAGE", weights=np.array(weights),
                                          threshold=self.seen_weight)
        self.shots = [self.shots[i] for i in order]

    def _sample_weights(self, shot: _Shot) -> np.ndarray:
        """How much ``shot`` would be trusted at up to COVERAGE_SAMPLES texels spread over
        every object (angle and frame only: nothing is rendered for it yet)."""
        scene, view_layer = self._scene()
        width, height = self.panel.width, self.panel.height
        with shot.seen_from(scene, view_layer):
            view, proj = host.camera_matrices(scene, view_layer.depsgraph, width, height)
            camera = scene.camera
            world = np.array(camera.matrix_world, np.float64)
            ortho = camera.data.type == "ORTHO"
        positions = np.concatenate([t.positions for t in self.targets])
        normals = np.concatenate([t.normals for t in self.targets])
        every = max(1, len(positions) // COVERAGE_SAMPLES)
        nothing = np.full((height, width), 1e10)
        geometry = multiview.ViewGeometry(np.array(view), np.array(proj), width, height,
                                          world[:3, 3], nothing, ortho, -world[:3, 2])
        weights, _ = multiview.texel_weights(positions[::every], normals[::every], geometry,
                                             self.max_angle, feather_map=np.ones_like(nothing))
        return weights

    def _scene(self) -> tuple[Any, Any]:
        scene = bpy.data.scenes.get(self.scene_name)
        view_layer = scene.view_layers.get(self.view_layer_name) if scene is not None else None
        if view_layer is None or any(bpy.data.objects.get(m.name) is None
                                     for m in self.meshes):
            raise host.HostError("the scene or an object being textured was removed; "
                                 "texture from views again")
        return scene, view_layer

    def _render(self, index: int) -> Generator[None, None, _View]:
        """Render view ``index``'s depth and normals (one step: Blender renders them in one
        call) and work out what its pixels show (a step per batch of triangles)."""
        scene, view_layer = self._scene()
        shot, width, height = self.shots[index], self.panel.width, self.panel.height
        scale = self.pass_scale
        pass_width, pass_height = max(8, width // scale), max(8, height // scale)
        with shot.seen_from(scene, view_layer):
            view, proj = host.camera_matrices(scene, view_layer.depsgraph, width, height)
            camera = scene.camera
            rendered = passes.render_passes(scene, view_layer, pass_width, pass_height,
                                            ("depth", "normal"), as_viewport=True)
            world = np.array(camera.matrix_world, np.float64)
            ortho = camera.data.type == "ORTHO"
        yield
        depth = np.frombuffer(rendered.depth, "<f4").reshape(pass_height, pass_width)[::-1]
        depth = multiview.enlarge_nearest(depth.astype(np.float64), height, width)
        geometry = multiview.ViewGeometry(np.array(view), np.array(proj), width, height,
                                          world[:3, 3], depth, ortho, -world[:3, 2],
                                          max(1, width // pass_width))
        surface = yield from multiview_texels.surface_steps(self.targets, geometry)
        surface_object, surface_texel = surface
        return _View(shot.name, rendered, width, height, surface_object, surface_texel,
                     geometry)

    def _seen_from(self, view: _View) -> tuple[Any, np.ndarray]:
        """The texture so far seen from ``view`` (an RGBA8 upload, top row first) and the
        summed weight of the texel each pixel shows (H, W), bottom row first."""
        init = np.full((view.height, view.width, 3), INIT_BACKGROUND, np.float32)
        seen = np.zeros((view.height, view.width))
        for index, target in enumerate(self.targets):
            here = view.surface_object == index
            texels = view.surface_texel[here]
            colors, _ = multiview.blend(target.color_sum[texels], target.weight_sum[texels])
            known = target.weight_sum[texels] > 0
            init[here] = np.where(known[:, None], colors, INIT_BACKGROUND)
            seen[here] = target.weight_sum[texels]
        rgba = np.concatenate([np.clip(init * 255 + 0.5, 0, 255).astype(np.uint8),
                               np.full(init.shape[:2] + (1,), 255, np.uint8)], axis=2)
        return (make_upload(PixelFormat.RGBA8, view.width, view.height,
                            np.ascontiguousarray(rgba[::-1]).tobytes()), seen)

    def _view_done(self, job: Job, images: list[Any]) -> Iterator[None]:
        """The view's picture read and removed (it lives on in the blend only); what is
        left is returned for the session's pump to run a slice at a time."""
        index = self.jobs.index(job)
        daemon = time.perf_counter() - self._sent_at
        pixels = _picture(job, images)
        return self._timed(self._blend_view(job, index, pixels, daemon), index)

    def _contribution(self, target: multiview_texels.Target, geometry: multiview.ViewGeometry,
                      feather: np.ndarray, pixels: np.ndarray) -> Iterator[tuple]:
        """A view's (texels, weights, colours) at ``target``, TEXEL_CHUNK texels a step."""
        for first in range(0, len(target.positions), TEXEL_CHUNK):
            part = slice(first, first + TEXEL_CHUNK)
            weights, uv = multiview.texel_weights(
                target.positions[part], target.normals[part], geometry, self.max_angle,
                feather_map=feather)
            some = np.flatnonzero(weights > 0.0)
            colors = projection.sample_bilinear(pixels, uv[some]).astype(np.float32)
            yield ((some + first).astype(np.int32), weights[some].astype(np.float32), colors)

    def _blend_view(self, job: Job, index: int, pixels: np.ndarray,
                    daemon: float) -> Iterator[None]:
        """Blend view ``index``'s picture into every object's texels, a chunk a step; then
        send the next view, or make the textures."""
        geometry = self.views[index].geometry
        feather = multiview.edge_feather(geometry.depth)
        for target in self.targets:
            parts = []
            for seen, weights, colors in self._contribution(target, geometry, feather, pixels):
                target.color_sum[seen] += weights[:, None] * colors
                target.weight_sum[seen] += weights
                parts.append((seen, weights, colors))
                yield
            target.contributions.append(tuple(np.concatenate(p) for p in zip(*parts))
                                        if parts else _NO_CONTRIBUTION)
            yield
        if index + 1 == len(self.shots):
            yield from self._make_images(job)
        else:
            self._send(index + 1)
        self.timings.append({"view": self.views[index].name, "daemon_s": daemon,
                             "blender_s": sum(step.seconds for step in self.steps
                                              if step.view == index)})

    def _texture(self, target: multiview_texels.Target) -> Generator[None, None, np.ndarray]:
        """The object's blended texture (S, S, RGBA floats) flat, in steps: alpha 1 where
        a view saw it, the islands padded into the space outside the UV layout."""
        count = len(target.positions)
        inside = np.zeros((count, 4), np.float32)
        for first in range(0, count, TEXEL_CHUNK):
            part = slice(first, first + TEXEL_CHUNK)
            colors, covered = multiview.blend(target.color_sum[part], target.weight_sum[part])
            inside[part, :3], inside[part, 3] = colors, covered
            yield
        texture = np.zeros((self.size, self.size, 4), np.float32)
        full = np.zeros((self.size, self.size), bool)
        band = max(1, TEXEL_CHUNK * 2 // self.size)
        for first in range(0, self.size, band):
            numbers = target.texel_index[first:first + band]
            here = numbers >= 0
            texture[first:first + band][here] = inside[numbers[here]]
            full[first:first + band][here] = inside[numbers[here], 3] > 0
            yield
        yield from projection.padding_steps(texture, full.copy(), self.padding, copy=False)
        texture[target.inside & ~full] = 0.0   # padding grows into the empty UV space only
        yield
        return texture.reshape(-1)

    def _make_images(self, job: Job) -> Iterator[None]:
        """Each object's texture as a new image in a new material slot, in steps: an image
        a step (each one the job's at once, so a Cancel removes it), the materials all in
        the last one (a Cancel in between finds nothing made)."""
        record = settings.result_record(job.result, 0, job.request.seed or 0) \
            if job.result is not None else {}
        for target in self.targets:
            pixels = yield from self._texture(target)
            if bpy.data.objects.get(target.name) is None:
                continue
            image = self._new_texture(target, pixels, record)
            job.image_names.append(image.name)
            target.texture = image.name
            yield
            if self.keep_weights:
                for view, (seen, weights, _) in zip(self.views, target.contributions):
                    dense = np.zeros(len(target.positions), np.float32)
                    dense[seen] = weights
                    job.image_names.append(self._weight_image(target, view.name, dense).name)
                    yield
        for target in self.targets:
            obj = bpy.data.objects.get(target.name)
            if obj is None or not target.texture:
                continue
            material = host.new_image_material(target.texture, bpy.data.images[target.texture],
                                               uv_map=target.uv_map)
            host.assign_material(obj, material, replace=False)
            target.material = material.name
        self.made = list(job.image_names)
        self.session.kept_runs[self.scene_name] = self   # for a re-run of one view

    def _new_texture(self, target: multiview_texels.Target, pixels: np.ndarray, record: dict,
                     name: str = "") -> Any:
        image = host.new_image(name or f"{target.name} from {len(self.shots)} views",
                               self.size, self.size)
        image.pixels.foreach_set(pixels)
        image.update()
        image[settings.RECORD_KEY] = {**record, "baked_for": target.name,
                                      "views": len(self.shots)}
        return image

    def _weight_image(self, target: multiview_texels.Target, view: str, weights: np.ndarray) -> Any:
        image = bpy.data.images.new(f"{WEIGHTS_PREFIX} {target.name} {view}", self.size,
                                    self.size, alpha=True, float_buffer=True)
        image.colorspace_settings.name = "Non-Color"
        rows = np.zeros((self.size, self.size, 4), np.float32)
        rows[..., 3] = 1.0
        rows[target.inside, :3] = weights[:, None]
        image.pixels.foreach_set(rows.reshape(-1))
        image.update()
        return image

    def _abandon(self, job: Job) -> None:
        """A view's job failed or was cancelled: take back the UV maps the run added."""
        for name, uv_map in self.uv_added:
            obj = bpy.data.objects.get(name)
            layer = obj.data.uv_layers.get(uv_map) if obj is not None else None
            if layer is not None:
                obj.data.uv_layers.remove(layer)
        self.uv_added = []

    # ------------------------------------------------------------ re-running one view
    def busy(self) -> bool:
        return any(not job.state.finished for job in self.jobs)

    def rerun(self, index: int, panel: settings.PanelSettings) -> Job:
        """Generate view ``index`` again with ``panel``'s prompt and seed, repainting the
        texels it sees best (where no other view has more weight); its picture then
        replaces its contribution, the other views' stay as they are, and each object gets
        a new image in its material (the previous one is kept)."""
        if not 0 <= index < len(self.views):
            raise ValueError(f"view index {index} is not one of the run's "
                             f"{len(self.views)} views")
        if self.busy():
            raise host.HostError(f"{LABEL} is still running; re-run a view when it is done")
        self._scene()
        job = self._job(f"{LABEL}: {self.views[index].name} again", self._rerun_done,
                        self._rerun_ended)
        self._reruns[id(job)] = index
        job.preparing = self._timed(self._remaking(job, index, panel), f"again {index}")
        self.jobs.append(job)
        self.session.submit(job)
        ensure_timer()
        return job

    def _remaking(self, job: Job, index: int, panel: settings.PanelSettings
                  ) -> Iterator[None]:
        view = self.views[index]
        best = []
        for target in self.targets:
            best.append((yield from self._sees_best(target, index)))
        init, _ = self._seen_from(view)
        repaint = np.zeros((view.height, view.width), bool)
        for number, target_best in enumerate(best):
            here = view.surface_object == number
            repaint[here] = target_best[view.surface_texel[here]]
        mask = _mask_upload(view, np.where(repaint, 255, 0).astype(np.uint8))
        request = settings.build_request(panel, kind="txt2img", controls=view.uploads.ids,
                                         width=view.width, height=view.height)
        request = dataclasses.replace(request, kind="inpaint", init_image=init.id,
                                      mask=mask.id, strength=1.0, batch_size=1,
                                      preview_every=0)
        validate(request, "job")
        job.request, job.uploads = request, (*view.uploads.uploads, init, mask)
        self._sent_at = time.perf_counter()

    def _sees_best(self, target: multiview_texels.Target,
                   index: int) -> Generator[None, None, np.ndarray]:
        """Per texel of ``target``: whether view ``index`` has weight there and no other view
        has more."""
        mine = np.zeros(len(target.positions), np.float32)
        others = np.zeros(len(target.positions), np.float32)
        for number, (seen, weights, _) in enumerate(target.contributions):
            if number == index:
                mine[seen] = weights
            else:
                others[seen] = np.maximum(others[seen], weights)   # each texel once
            yield
        return (mine > 0) & (mine >= others)

    def _rerun_done(self, job: Job, images: list[Any]) -> Iterator[None]:
        index = self._reruns.pop(id(job))
        pixels = _picture(job, images)
        return self._timed(self._replace_view(job, index, pixels), f"again {index}")

    def _replace_view(self, job: Job, index: int, pixels: np.ndarray) -> Iterator[None]:
        """View ``index``'s new picture in place of its old one, then the new images."""
        geometry = self.views[index].geometry
        feather = multiview.edge_feather(geometry.depth)
        for target in self.targets:
            old = target.contributions[index]
            old_seen, old_weights, old_colors = old
            parts = []
            for seen, weights, colors in self._contribution(target, geometry, feather, pixels):
                parts.append((seen, weights, colors))
                yield
            new_seen, new_weights, new_colors = (tuple(np.concatenate(p) for p in zip(*parts))
                                                 if parts else _NO_CONTRIBUTION)
            # The same view on the same texels: the same texels and weights as before
            target.color_sum[old_seen] -= old_weights[:, None] * old_colors
            target.color_sum[new_seen] += new_weights[:, None] * new_colors
            target.contributions[index] = (new_seen, new_weights, new_colors)
            self._undo.setdefault(id(job), []).append((target, index, old))
            yield
        record = settings.result_record(job.result, 0, job.request.seed or 0) \
            if job.result is not None else {}
        made = []
        for target in self.targets:
            pixels_of = yield from self._texture(target)
            if bpy.data.objects.get(target.name) is None:
                continue
            image = self._new_texture(target, pixels_of, record,
                                      f"{target.name} from {len(self.shots)} views")
            job.image_names.append(image.name)
            made.append((target, image))
            yield
        for target, image in made:
            material = bpy.data.materials.get(target.material)
            node = next((n for n in material.node_tree.nodes if n.type == "TEX_IMAGE"),
                        None) if material is not None and material.node_tree else None
            if node is not None:
                node.image = image
            else:
                material = host.new_image_material(image.name, image, uv_map=target.uv_map)
                host.assign_material(bpy.data.objects[target.name], material, replace=False)
                target.material = material.name
            target.texture = image.name
        self.made = [image.name for _, image in made]
        self._undo.pop(id(job), None)

    def _rerun_ended(self, job: Job) -> None:
        """A re-run failed or was cancelled: its view's old share comes back."""
        self._reruns.pop(id(job), None)
        for target, index, old in reversed(self._undo.pop(id(job), [])):
            seen, weights, colors = target.contributions[index]
            target.color_sum[seen] -= weights[:, None] * colors
            seen, weights, colors = old
            target.color_sum[seen] += weights[:, None] * colors
            target.contributions[index] = old


def _paused_at(steps: Any) -> str:
    """Where a generator (through its ``yield from``s) is paused: 'function:line'."""
    while getattr(steps, "gi_yieldfrom", None) is not None:
        steps = steps.gi_yieldfrom
    frame = getattr(steps, "gi_frame", None)
    return f"{frame.f_code.co_name}:{frame.f_lineno}" if frame is not None else "?"


_NO_CONTRIBUTION = (np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros((0, 3), np.float32))


def _picture(job: Job, images: list[Any]) -> np.ndarray:
    """A view's picture (H, W, 3) floats, its image removed (it lives on in the blend)."""
    image = images[0]
    width, height = image.size
    pixels = host.float_pixels(image).reshape(height, width, 4)[..., :3].copy()
    host.remove_images(job.image_names)
    job.image_names.clear()
    return pixels


def _mask_upload(view: _View, mask: np.ndarray) -> Any:
    """A view's inpaint mask (H, W) uint8, bottom row first, as a GRAY8 upload."""
    return make_upload(PixelFormat.GRAY8, view.width, view.height,
                       np.ascontiguousarray(mask[::-1]).tobytes())


@contextlib.contextmanager
def _as_scene_camera(scene: bpy.types.Scene, view_layer: Any,
                     camera: bpy.types.Object) -> Iterator[None]:
    previous = scene.camera
    scene.camera = camera
    try:
        view_layer.update()
        yield
    finally:
        scene.camera = previous


def _bounding_sphere(objects: list[bpy.types.Object]) -> tuple[np.ndarray, float]:
    corners = np.concatenate([np.array([obj.matrix_world @ mathutils.Vector(c)
                                        for c in obj.bound_box]) for obj in objects])
    center = (corners.min(axis=0) + corners.max(axis=0)) / 2.0
    return center, max(float(np.linalg.norm(corners - center, axis=1).max()), 1e-3)


def auto_poses(objects: list[bpy.types.Object], props: Any, width: int,
               height: int) -> list[multiview.ViewPose]:
    """Where the placed cameras stand for ``objects`` and the panel's view settings."""
    center, radius = _bounding_sphere(objects)
    distance = props.distance or multiview.fit_distance(radius, LENS, SENSOR, width, height)
    return multiview.orbit_views(center, distance, props.orbit_count, props.elevation,
                                 props.top, props.bottom)


def _pose_camera(pose: multiview.ViewPose, distance: float) -> projection.ViewCamera:
    return projection.ViewCamera(matrix_world=pose.matrix_world, orthographic=False,
                                 lens=LENS, sensor_fit="HORIZONTAL", sensor_size=SENSOR,
                                 ortho_scale=1.0, clip_start=max(distance * 1e-3, 1e-3),
                                 clip_end=distance * 100.0)


def _ensure_uvs(obj: bpy.types.Object, context: bpy.types.Context) -> tuple[str, bool]:
    """The object's own UV map, or a new Smart UV Project map when it has none."""
    own = host.own_uv_map(obj)
    if own is not None:
        return own, False
    if len(obj.data.uv_layers) >= host.MAX_UV_MAPS:
        raise host.HostError(f"'{obj.name}' has no UV map of its own and no room for one")
    layer = obj.data.uv_layers.new(name=SMART_UV_NAME)
    layer.active = True
    name = layer.name   # edit mode rebuilds the mesh's layers: ``layer`` goes stale
    view_layer = context.view_layer
    active = view_layer.objects.active
    selected = [o for o in context.scene.objects if o.select_get()]
    try:
        for other in selected:
            other.select_set(False)
        obj.select_set(True)
        view_layer.objects.active = obj
        bpy.ops.object.mode_set(mode="EDIT")
        bpy.ops.mesh.select_all(action="SELECT")
        bpy.ops.uv.smart_project()
    except RuntimeError as exc:
        bpy.ops.object.mode_set(mode="OBJECT")
        obj.data.uv_layers.remove(obj.data.uv_layers[name])
        raise host.HostError(f"could not make UVs for '{obj.name}' ({exc}): unwrap it "
                             "first") from exc
    finally:
        if bpy.context.object is not None and bpy.context.object.mode == "EDIT":
            bpy.ops.object.mode_set(mode="OBJECT")
        obj.select_set(False)
        for other in selected:
            other.select_set(True)
        view_layer.objects.active = active
    return name, True


# ---------------------------------------------------------------- operators

class ATELIER_OT_texture_from_views(bpy.types.Operator):
    """Texture the selected meshes from many views into their own UVs: depth and normals of
    each view guide the daemon, later views inpaint what earlier ones did not see, the
    results blend into one new image per object in a new material slot"""
    bl_idname = "atelier.texture_from_views"
    bl_label = "Texture from Views"

    def execute(self, context: bpy.types.Context) -> set[str]:
        from .operators import _session
        scene = context.scene
        props = scene.atelier_views
        objects = sorted((o for o in context.selected_objects if o.type == "MESH"),
                         key=lambda o: o.name)
        if not objects:
            self.report({"ERROR"}, "select the mesh objects to texture")
            return {"CANCELLED"}
        panel = settings.settings_from(scene.atelier)
        problem = settings.size_problem(panel.width, panel.height, None)
        if problem is not None:
            self.report({"ERROR"}, problem)
            return {"CANCELLED"}
        try:
            session = _session(context)
            session.retry_now()
            run = _prepare(context, objects, props, panel, session)
            run.start()
        except (ProtocolError, ClientError, host.HostError, ValueError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"{LABEL}: {len(run.shots)} views of {len(objects)} object(s) "
                              "sent to the Atelier daemon")
        return {"FINISHED"}


def _prepare(context: bpy.types.Context, objects: list[bpy.types.Object], props: Any,
             panel: settings.PanelSettings, session: Session) -> ViewsRun:
    """The views and each object's UV map (a Smart UV Project one made now where it has
    none); the rest is made in the pump's steps (ViewsRun._making)."""
    scene, view_layer = context.scene, context.view_layer
    width, height = panel.width, panel.height
    center, _ = _bounding_sphere(objects)
    if props.views_from == "CAMERAS":
        cameras = sorted((o for o in context.selected_objects if o.type == "CAMERA"),
                         key=lambda o: o.name)
        if not cameras:
            raise host.HostError("Views: Selected Cameras, but no camera is selected")
        shots = [_Shot(cam.name, _rows(cam.matrix_world),
                       lambda scene, view_layer, cam=cam: _as_scene_camera(scene, view_layer,
                                                                           cam))
                 for cam in cameras]
    else:
        poses = auto_poses(objects, props, width, height)
        shots = [_Shot(pose.name, pose.matrix_world,
                       lambda scene, view_layer, pose=pose: host.temporary_camera(
                           scene, view_layer, _pose_camera(pose, float(np.linalg.norm(
                               np.array(pose.matrix_world)[:3, 3] - center)))))
                 for pose in poses]
    meshes, added = [], []
    try:
        for obj in objects:
            uv_map, new = _ensure_uvs(obj, context)
            if new:
                added.append((obj.name, uv_map))
            meshes.append(multiview_texels.Mesh(obj.name, uv_map))
    except BaseException:
        for name, uv_map in added:
            obj = bpy.data.objects[name]
            obj.data.uv_layers.remove(obj.data.uv_layers[uv_map])
        raise
    prefs = context.preferences.addons[ADDON_ID].preferences
    return ViewsRun(scene.name, view_layer.name, panel, props.texture_size, props.padding,
                    props.seen_weight, props.max_angle, props.view_order,
                    int(props.pass_scale), props.keep_weights,
                    prefs.image_storage == "FILES", session, meshes, added, shots, center)


def _rows(matrix: Any) -> tuple:
    return tuple(tuple(float(x) for x in row) for row in matrix)


class ATELIER_OT_add_view_cameras(bpy.types.Operator):
    """Add the cameras Texture from Views would place around the selected meshes, to look
    through or adjust before generating (then choose Views: Selected Cameras)"""
    bl_idname = "atelier.add_view_cameras"
    bl_label = "Add View Cameras"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        objects = [o for o in context.selected_objects if o.type == "MESH"]
        if not objects:
            self.report({"ERROR"}, "select the mesh objects to place cameras around")
            return {"CANCELLED"}
        panel = settings.settings_from(context.scene.atelier)
        try:
            poses = auto_poses(objects, context.scene.atelier_views, panel.width, panel.height)
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        for obj in context.selected_objects:
            obj.select_set(False)
        for pose in poses:
            data = bpy.data.cameras.new(f"View {pose.name}")
            data.lens, data.sensor_width, data.sensor_fit = LENS, SENSOR, "HORIZONTAL"
            camera = bpy.data.objects.new(f"View {pose.name}", data)
            camera.matrix_world = mathutils.Matrix(pose.matrix_world)
            context.scene.collection.objects.link(camera)
            camera.select_set(True)
        return {"FINISHED"}


class VIEW3D_PT_atelier_views(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = CATEGORY
    bl_label = "Texture from Views"
    bl_parent_id = "VIEW3D_PT_atelier"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        props = context.scene.atelier_views
        layout.prop(props, "views_from")
        if props.views_from == "AUTO":
            col = layout.column(align=True)
            col.prop(props, "orbit_count")
            col.prop(props, "elevation")
            col.prop(props, "distance")
            row = layout.row(align=True)
            row.prop(props, "top", toggle=True)
            row.prop(props, "bottom", toggle=True)
            layout.operator(ATELIER_OT_add_view_cameras.bl_idname, icon="CAMERA_DATA")
        col = layout.column(align=True)
        col.prop(props, "texture_size")
        col.prop(props, "padding")
        layout.prop(props, "pass_scale")
        col = layout.column(align=True)
        col.prop(props, "view_order")
        col.prop(props, "max_angle")
        col.prop(props, "seen_weight")
        layout.prop(props, "keep_weights")
        layout.operator(ATELIER_OT_texture_from_views.bl_idname, icon="TEXTURE")
        run = kept_run(context)
        if run is None:
            return
        box = layout.box()
        box.label(text=f"Last run: {len(run.views)} views", icon="OUTLINER_OB_CAMERA")
        col = box.column(align=True)
        col.enabled = not run.busy()
        for index, view in enumerate(run.views):
            row = col.row(align=True)
            row.label(text=f"{index + 1}. {view.name}")
            op = row.operator(ATELIER_OT_rerun_view.bl_idname, text="Re-run",
                              icon="FILE_REFRESH")
            op.index = index


def kept_run(context: bpy.types.Context) -> Optional[ViewsRun]:
    """The scene's last finished Texture from Views of this Blender session, if any."""
    from .addon import current_session
    session = current_session()
    return session.kept_runs.get(context.scene.name) if session is not None else None


class ATELIER_OT_rerun_view(bpy.types.Operator):
    """Generate this view again with the panel's prompt and seed: it repaints the texels it
    sees best and its picture replaces its share of the texture; the other views' stay.
    Each object gets a new image in its material (the previous one is kept)"""
    bl_idname = "atelier.rerun_view"
    bl_label = "Re-run View"

    index: IntProperty(name="View", min=0, description="The view's place in the last run")

    def execute(self, context: bpy.types.Context) -> set[str]:
        run = kept_run(context)
        if run is None:
            self.report({"ERROR"}, f"no {LABEL} of this scene to re-run a view of")
            return {"CANCELLED"}
        panel = settings.settings_from(context.scene.atelier)
        try:
            run.session.retry_now()
            job = run.rerun(self.index, panel)
        except (ProtocolError, ClientError, host.HostError, ValueError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"{job.label}: sent to the Atelier daemon")
        return {"FINISHED"}


CLASSES = (AtelierViewsSettings, ATELIER_OT_texture_from_views, ATELIER_OT_add_view_cameras,
           ATELIER_OT_rerun_view, VIEW3D_PT_atelier_views)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.atelier_views = PointerProperty(type=AtelierViewsSettings)


def unregister() -> None:
    del bpy.types.Scene.atelier_views
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
