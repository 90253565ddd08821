"""Blender with a window (under xvfb-run): the add-on as an artist drives it.

Nothing here pumps the add-on: results must arrive through its own
``bpy.app.timers`` callback while Blender's event loop runs, and the
buttons' modal watchers must turn the daemon's answer into reports.

    xvfb-run -a blender --factory-startup --python window.py -- --zip Z --url U --scenario S

``window``: reports and timers; ``view``: Project Texture and Render to Image from the
3D Viewport's view; ``redraws``: what progress redraws, and the main thread's time per step;
``live``: Live from the 3D Viewport's view on Blender's own timers and depsgraph.

Blender's exit code does not follow a script that runs inside the event loop,
so this exits with ``os._exit``: 0 when every step passed, 1 otherwise.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bpy  # noqa: E402
import mathutils  # noqa: E402
import numpy as np  # noqa: E402

import harness  # noqa: E402

STEP_TIMEOUT = 120.0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ui_context() -> dict:
    window = bpy.context.window_manager.windows[0]
    area = next(a for a in window.screen.areas if a.type == "VIEW_3D")
    region = next(r for r in area.regions if r.type == "WINDOW")
    return {"window": window, "area": area, "region": region}


def _click(operator, **properties) -> set:
    """Run an operator the way a button does (INVOKE_DEFAULT, with a window)."""
    with bpy.context.temp_override(**_ui_context()):
        return operator("INVOKE_DEFAULT", **properties)


def _reports() -> str:
    """Every report so far, as the Info editor lists them (copied through the clipboard)."""
    context = _ui_context()
    info = next(a for a in context["window"].screen.areas if a.type in {"INFO", "TIMELINE"}
                or a.ui_type == "TIMELINE")
    info.type = "INFO"
    region = next(r for r in info.regions if r.type == "WINDOW")
    with bpy.context.temp_override(window=context["window"], area=info, region=region):
        bpy.ops.info.select_all(action="SELECT")
        bpy.ops.info.report_copy()
    return bpy.context.window_manager.clipboard


def _wait(condition, what: str) -> Iterator[float]:
    deadline = time.monotonic() + STEP_TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        yield 0.1


def steps(module, url: str) -> Iterator[float]:
    session = harness.session(module)
    prefs = harness.preferences(module)
    scene = harness.empty_scene()
    harness.settings(scene, prompt="window test", steps=2, width=64, height=64,
                     random_seed=False, seed=11)

    # 1. No daemon: the button's report carries the reason and the command to start one.
    daemon_port, prefs.port = prefs.port, _closed_port()
    assert _click(bpy.ops.atelier.generate) == {"RUNNING_MODAL"}
    job = session.jobs[-1]
    yield from _wait(lambda: job.state.finished, "the failing job")
    yield from _wait(lambda: "atelier serve" in _reports(), "the error report")
    reports = _reports()
    error_lines = [line for line in reports.splitlines() if "atelier serve" in line]
    assert error_lines and str(prefs.port) in error_lines[-1], reports
    assert job.state.name == "FAILED"

    # 2. The daemon: the image arrives through the add-on's own timer, is shown in the
    # Image Editor, and is reported on the way out.
    window = bpy.context.window_manager.windows[0]
    editor = next(a for a in window.screen.areas if a.type == "PROPERTIES")
    editor.type = "IMAGE_EDITOR"
    prefs.port = daemon_port
    assert _click(bpy.ops.atelier.generate) == {"RUNNING_MODAL"}
    job = session.jobs[-1]
    yield from _wait(lambda: job.state.finished, "the generation")
    assert job.state.name == "DONE", job.progress_text
    assert bpy.data.images["window test 11"].size[:] == (64, 64)
    assert editor.spaces.active.image == bpy.data.images["window test 11"]
    yield from _wait(lambda: "Generate: done" in _reports(), "the done report")

    # 3. The Depth Model dropdown opened as a menu: Blender draws every item's label from
    # the item list the add-on keeps alive, now holding the daemon's conditioners (listed
    # on connecting, without asking).
    yield from _wait(lambda: session.conditioners, "the daemon's depth models")
    menu = module.properties.DEPTH_MODEL_MENU
    built, real_build = [], menu.build
    menu.build = lambda *args, **kw: built.append(args) or real_build(*args, **kw)
    try:
        with bpy.context.temp_override(**_ui_context()):
            result = bpy.ops.wm.context_menu_enum(data_path="scene.atelier.depth_model")
        assert result == {"FINISHED"}, result
        for wait in _wait(lambda: built, "the menu to draw"):
            _ui_context()["area"].tag_redraw()
            yield wait
    finally:
        menu.build = real_build
    assert built and {"tiny-adapter", "tiny-controlnet"} <= {i[0] for i in menu.items}, built
    print("SCENARIO window PASSED on Blender", bpy.app.version_string)


def _cameras() -> tuple[set, set]:
    return ({c.name for c in bpy.data.cameras},
            {o.name for o in bpy.data.objects if o.type == "CAMERA"})


def _viewport_uv(points: np.ndarray, region, rv3d, image: tuple[int, int]) -> np.ndarray:
    """Where the viewport itself draws ``points`` (its own perspective matrix), as UVs of an
    image of size ``image`` that shares the region's centre and covers all of it."""
    persp = np.array(rv3d.perspective_matrix, dtype=np.float64)
    clip = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ persp.T
    region_uv = (clip[:, :2] / clip[:, 3:4] + 1.0) / 2.0
    region_aspect, image_aspect = region.width / region.height, image[0] / image[1]
    scale = np.array([min(1.0, region_aspect / image_aspect),
                      min(1.0, image_aspect / region_aspect)])
    return 0.5 + (region_uv - 0.5) * scale


def _init_pixels(job) -> np.ndarray:
    frame = next(f for f in job.uploads if f.id == job.request.init_image)
    return np.frombuffer(frame.data, dtype=np.uint8).astype(int)


def view_steps(module, url: str) -> Iterator[float]:
    """Project Texture and Render to Image from the 3D Viewport's view, not the camera."""
    session = harness.session(module)
    scene = harness.empty_scene()
    size = 64
    harness.settings(scene, prompt="view test", steps=2, width=size, height=size,
                     random_seed=False, seed=5, capture_source="VIEW")
    cam = harness.add_camera(scene, (0.0, -10.0, 0.0))
    cube = harness.add_cube(scene, "Front", (0.0, 0.0, 0.0))
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    sun.data.energy = 5.0
    # From behind the viewer's left shoulder: every face the camera or the view sees is lit.
    sun.rotation_euler = mathutils.Vector((-0.3, 1.0, -0.5)).to_track_quat("-Z", "Y").to_euler()
    scene.collection.objects.link(sun)   # lit, so the cube stands out from the world
    harness.select_only([cube])
    context = _ui_context()
    region = context["region"]
    space = context["area"].spaces.active
    rv3d = space.region_3d
    # A view from the upper right, unlike the camera: a 35 mm lens at (6, -6, 4) aimed at
    # the cube.
    rv3d.view_perspective = "PERSP"
    space.lens = 35.0
    eye = mathutils.Vector((6.0, -6.0, 4.0))
    turn = (-eye).to_track_quat("-Z", "Y").to_matrix().to_4x4()
    view = (mathutils.Matrix.Translation(eye) @ turn).inverted()
    rv3d.view_matrix = view
    context["area"].tag_redraw()
    for _ in range(5):   # let the viewport draw, so its perspective matrix is this view's
        yield 0.1
    assert np.allclose(np.array(rv3d.view_matrix), np.array(view), atol=1e-5)
    cameras_before = _cameras()

    assert _click(bpy.ops.atelier.project_texture, source="VIEW") == {"RUNNING_MODAL"}
    job = session.jobs[-1]
    assert _cameras() == cameras_before, "the temporary camera is still there"
    assert scene.camera == cam
    yield from _wait(lambda: job.state.finished, "the projection")
    assert job.state.name == "DONE", job.progress_text
    uv_layer = cube.data.uv_layers["Atelier Projection"]
    world = np.array([list(cube.matrix_world @ cube.data.vertices[loop.vertex_index].co)
                      for loop in cube.data.loops])
    got = np.array([list(uv_layer.data[loop.index].uv) for loop in cube.data.loops])
    expected = _viewport_uv(world, region, rv3d, (size, size))
    assert np.abs(got - expected).max() < 1e-4, (got, expected, region.width, region.height)
    # From the scene camera (straight on) the cube's UVs would be another picture.
    from bpy_extras.object_utils import world_to_camera_view
    from_camera = np.array([list(world_to_camera_view(scene, cam, mathutils.Vector(p)))[:2]
                            for p in world])
    assert np.abs(from_camera - expected).max() > 0.05
    # Three faces of the cube look at the viewer up and to the right; those get the material.
    slots = np.array([p.material_index for p in cube.data.polygons])
    assert int(np.count_nonzero(slots == len(cube.material_slots) - 1)) == 3, slots
    yield from _wait(lambda: "Project Texture: done" in _reports(), "the done report")

    # The same view, orthographic: the camera's scale must match what the viewport shows.
    rv3d.view_perspective = "ORTHO"
    context["area"].tag_redraw()
    for _ in range(5):
        yield 0.1
    assert _click(bpy.ops.atelier.project_texture, source="VIEW") == {"RUNNING_MODAL"}
    job = session.jobs[-1]
    assert _cameras() == cameras_before and scene.camera == cam
    yield from _wait(lambda: job.state.finished, "the orthographic projection")
    assert job.state.name == "DONE", job.progress_text
    uv_layer = cube.data.uv_layers[-1]
    assert uv_layer.name != "Atelier Projection", uv_layer.name   # a second map
    got = np.array([list(uv_layer.data[loop.index].uv) for loop in cube.data.loops])
    ortho_expected = _viewport_uv(world, region, rv3d, (size, size))
    assert np.abs(got - ortho_expected).max() < 1e-4, (got, ortho_expected)
    assert np.abs(ortho_expected - expected).max() > 0.01   # it is another picture
    slots = np.array([p.material_index for p in cube.data.polygons])
    assert int(np.count_nonzero(slots == len(cube.material_slots) - 1)) == 3, slots

    # No source given, as from the panel's button: the panel's "From: View" applies.
    assert _click(bpy.ops.atelier.render_to_image) == {"RUNNING_MODAL"}
    job = session.jobs[-1]
    seen = [_init_pixels(job)]   # the job lets go of its uploads once sent
    assert _cameras() == cameras_before and scene.camera == cam
    yield from _wait(lambda: job.state.finished, "the render to image")
    assert job.state.name == "DONE", job.progress_text
    # Given explicitly, the source wins over the panel: the camera's render is another picture.
    assert _click(bpy.ops.atelier.render_to_image, source="CAMERA") == {"RUNNING_MODAL"}
    from_cam = session.jobs[-1]
    seen.append(_init_pixels(from_cam))
    yield from _wait(lambda: from_cam.state.finished, "the render from the camera")
    # Where the lit cube covers the image: a square straight on, a hexagon from the view.
    covers = [np.abs(p.reshape(size, size, 4)[..., :3] - p[:3]).max(axis=2) > 40 for p in seen]
    differ = int(np.count_nonzero(covers[0] ^ covers[1]))
    print("cube pixels from view / camera / differing:", covers[0].sum(), covers[1].sum(), differ)
    assert differ > size * size // 20, differ

    # A failure while the temporary camera exists still removes it.
    with bpy.context.temp_override(**_ui_context()):
        settings = module.host.viewport_camera(bpy.context, size, size)
    # From the sidebar (where the panel's buttons are) it is the same view.
    sidebar = next(r for r in context["area"].regions if r.type == "UI")
    with bpy.context.temp_override(window=context["window"], area=context["area"],
                                   region=sidebar):
        assert module.host.viewport_camera(bpy.context, size, size) == settings
    try:
        with module.host.temporary_camera(scene, bpy.context.view_layer, settings):
            assert scene.camera != cam and len(_cameras()[0]) == len(cameras_before[0]) + 1
            raise RuntimeError("failing inside the block")
    except RuntimeError:
        pass
    assert _cameras() == cameras_before and scene.camera == cam
    print("SCENARIO view PASSED on Blender", bpy.app.version_string)


HEARTBEAT = 0.01   # seconds between the main thread's heartbeats while measuring
# The redraws scenario's jobs: steps and image side (a bigger side makes slower steps).
STEPS = int(os.environ.get("ATELIER_REDRAW_STEPS", "40"))
SIDE = int(os.environ.get("ATELIER_REDRAW_SIDE", "128"))


class MainThreadMeter:
    """Blender's main thread from ``start()`` to ``stop()``: its CPU time (drawing included
    when Mesa's llvmpipe draws on it, LP_NUM_THREADS=0), how late its heartbeats were, and
    how often regions were drawn."""

    def __init__(self) -> None:
        self.beats: list[float] = []
        self.draws = {"VIEW_3D WINDOW": 0, "VIEW_3D UI": 0, "IMAGE_EDITOR WINDOW": 0}
        self._handlers: list = []
        self._running = False

    def start(self) -> None:
        for key in self.draws:
            space, region = key.split()
            space_type = {"VIEW_3D": bpy.types.SpaceView3D,
                          "IMAGE_EDITOR": bpy.types.SpaceImageEditor}[space]
            handler = space_type.draw_handler_add(self._count, (key,), region, "POST_PIXEL")
            self._handlers.append((space_type, handler, region))
        self._running = True
        self._cpu = time.thread_time()
        bpy.app.timers.register(self._beat, first_interval=HEARTBEAT)

    def _count(self, key: str) -> None:
        if self._running:
            self.draws[key] += 1

    def _beat(self) -> float | None:
        if not self._running:
            return None
        self.beats.append(time.perf_counter())
        return HEARTBEAT

    def stop(self) -> tuple[float, float]:
        """Stops; returns the main thread's CPU seconds and the seconds its heartbeats
        were late (the main thread busy, or the process not given a CPU)."""
        self._running = False
        cpu = time.thread_time() - self._cpu
        for space_type, handler, region in self._handlers:
            space_type.draw_handler_remove(handler, region)
        gaps = np.diff(np.array(self.beats))
        return cpu, float(np.clip(gaps - HEARTBEAT, 0.0, None).sum())


def redraw_steps(module, url: str) -> Iterator[float]:
    """Jobs with and without previews while the 3D Viewport is open: the add-on's progress
    redraws the sidebar and the Image Editor, not the 3D Viewport's main region, and writes
    previews at most a few times a second. Prints the main thread's time per step."""
    session = harness.session(module)
    scene = harness.empty_scene()
    bpy.ops.mesh.primitive_uv_sphere_add(segments=64, ring_count=32)   # something to draw
    window = bpy.context.window_manager.windows[0]
    editor = next(a for a in window.screen.areas if a.type == "PROPERTIES")
    editor.type = "IMAGE_EDITOR"   # where previews show
    area = _ui_context()["area"]
    area.spaces.active.show_region_ui = True   # the sidebar, where the Atelier tab lives
    for _ in range(10):
        yield 0.1                  # the first draws of the new layout
    region = next(r for r in area.regions if r.type == "WINDOW")
    with bpy.context.temp_override(window=window, area=area, region=region):
        wall, cpu = time.perf_counter(), time.thread_time()
        bpy.ops.wm.redraw_timer(type="DRAW", iterations=5)   # (the UI region's crashes 3.4)
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    print(f"REDRAW one draw of the 3D Viewport's main region: {wall / 5 * 1000:.0f} ms "
          f"({cpu / 5 * 1000:.0f} ms CPU on the main thread)")
    meter = MainThreadMeter()
    meter.start()
    for _ in range(10):
        yield 0.1                  # idle, for the baseline
    idle_cpu, _ = meter.stop()
    idle_rate = idle_cpu / 1.0
    print(f"REDRAW idle main thread: {idle_rate * 1000:.0f} ms CPU a second")
    results = {}
    for every in (0, 1):
        harness.settings(scene, prompt=f"redraw {every}", steps=STEPS, width=SIDE, height=SIDE,
                         preview_every=every, random_seed=False, seed=1)
        meter = MainThreadMeter()
        meter.start()
        started = time.perf_counter()
        assert _click(bpy.ops.atelier.generate) == {"RUNNING_MODAL"}
        job = session.jobs[-1]
        yield from _wait(lambda: job.state.finished, "the job")
        seconds = time.perf_counter() - started
        cpu, late = meter.stop()
        assert job.state.name == "DONE", job.progress_text
        results[every] = (seconds, meter.draws)
        work = cpu - idle_rate * seconds
        print(f"REDRAW preview_every={every} steps={job.total} seconds={seconds:.2f} "
              f"main_thread_cpu={cpu:.2f} s, above idle {work:.2f} s = "
              f"{work / job.total * 1000:.0f} ms a step; heartbeats_late={late:.2f} s "
              f"draws={meter.draws}")
        for _ in range(5):
            yield 0.1              # let the last redraws happen outside the measurement
    seconds, draws = results[0]
    # Progress alone: the 3D Viewport's main region is not redrawn (the result's new image
    # may redraw it once or twice), while the sidebar is.
    assert draws["VIEW_3D WINDOW"] <= 2, draws
    seconds, draws = results[1]
    # Previews: written (and so redrawn by Blender) at most about four times a second.
    allowed = seconds / module.runtime.REDRAW_INTERVAL + 3
    assert draws["VIEW_3D WINDOW"] <= allowed, (draws, seconds)
    print("SCENARIO redraws PASSED on Blender", bpy.app.version_string)


def _look_from(rv3d, eye: tuple[float, float, float]) -> None:
    """Point the 3D Viewport's view from ``eye`` at the origin."""
    eye_v = mathutils.Vector(eye)
    turn = (-eye_v).to_track_quat("-Z", "Y").to_matrix().to_4x4()
    rv3d.view_matrix = (mathutils.Matrix.Translation(eye_v) @ turn).inverted()


def live_steps(module, url: str) -> Iterator[float]:
    """Live from the 3D Viewport's view, driven by Blender's own timers and depsgraph: the
    first result lands in "Atelier Live" and shows in the open Image Editor; the event loop's
    own redraws and depsgraph updates send nothing more; turning the view and moving an
    object each send one new view; Live off removes the timer. Prints how long a view change
    took to show."""
    session = harness.session(module)
    live = session.live
    scene = harness.empty_scene()
    harness.settings(scene, prompt="live view", steps=2, width=64, height=64,
                     random_seed=False, seed=9, capture_source="VIEW", live_strength=0.7)
    harness.add_camera(scene, (0.0, -10.0, 0.0))
    cube = harness.add_cube(scene, "Cube", (0.0, 0.0, 0.0))
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    sun.rotation_euler = mathutils.Vector((-0.3, 1.0, -0.5)).to_track_quat("-Z", "Y").to_euler()
    scene.collection.objects.link(sun)
    window = bpy.context.window_manager.windows[0]
    editor = next(a for a in window.screen.areas if a.type == "PROPERTIES")
    editor.type = "IMAGE_EDITOR"
    context = _ui_context()
    space = context["area"].spaces.active
    rv3d = space.region_3d
    rv3d.view_perspective = "PERSP"
    _look_from(rv3d, (6.0, -6.0, 4.0))
    for _ in range(5):
        yield 0.1

    assert _click(bpy.ops.atelier.live, action="ON") == {"FINISHED"}
    assert bpy.app.timers.is_registered(module.live.timer)
    yield from _wait(lambda: live.results_shown == 1, "the first live result")
    assert editor.spaces.active.image == bpy.data.images["Atelier Live"]
    first = _live_init(live)
    for _ in range(20):      # 2 s of Blender's own redraws and depsgraph evaluations
        yield 0.1
    assert live.jobs_sent == 1, f"sent {live.jobs_sent} jobs while nothing changed"

    moved = time.monotonic()
    _look_from(rv3d, (-6.0, -6.0, 3.0))      # the artist turns the view
    context["area"].tag_redraw()
    yield from _wait(lambda: live.results_shown == 2 and live.idle, "the turned view's result")
    shown = time.monotonic()
    print(f"LIVE view turned -> result shown: {shown - moved:.2f} s (debounce "
          f"{module.protocol.live.LIVE_DELAY_S} s; sent after {live.sent_at - moved:.2f} s, "
          f"capture {live.capture_seconds:.2f} s; daemon and back {shown - live.sent_at:.2f} s "
          f"for a 64x64 2-step job)")
    assert live.jobs_sent == 2 and np.abs(_live_init(live) - first).max() > 30

    cube.location.z += 1.0                    # an edit of the scene (no view change)
    yield from _wait(lambda: live.results_shown == 3 and live.idle, "the edit's result")
    assert live.jobs_sent == 3

    assert _click(bpy.ops.atelier.live, action="OFF") == {"FINISHED"}
    assert not bpy.app.timers.is_registered(module.live.timer)
    cube.location.z -= 1.0
    for _ in range(10):
        yield 0.1
    assert live.jobs_sent == 3 and not live.on
    print("SCENARIO live PASSED on Blender", bpy.app.version_string)


class _CpuBeats(MainThreadMeter):
    """Heartbeats with the main thread's CPU time: a gap with little of it is the process
    kept off a CPU (or waiting), not the main thread working."""

    def _beat(self) -> float | None:
        if not self._running:
            return None
        self.beats.append((time.perf_counter(), time.thread_time()))
        return HEARTBEAT

    def _count(self, key: str) -> None:
        if self._running:
            self.draws[key] += 1
            if key == "VIEW_3D WINDOW":
                self.drawn_at.append(time.perf_counter())

    def start(self) -> None:
        self.drawn_at: list[float] = []
        super().start()

    def stop(self) -> None:
        self._running = False
        for space_type, handler, region in self._handlers:
            space_type.draw_handler_remove(handler, region)


def views_steps(module, url: str) -> Iterator[float]:
    """Texture from Views clicked in a window, a smooth UV sphere from 6 views of
    ATELIER_VIEWS_SIZE px (256) into an ATELIER_VIEWS_TEXTURE (2048) texture, everything on
    the add-on's own timer: the heartbeats say how long Blender's main thread was held at a
    time (its drawing included), the run's steps how long the add-on held it."""
    session = harness.session(module)
    scene = harness.empty_scene()
    bpy.ops.mesh.primitive_uv_sphere_add(segments=32, ring_count=16)
    ball = bpy.context.active_object
    bpy.ops.object.shade_smooth()
    harness.select_only([ball])
    side = int(os.environ.get("ATELIER_VIEWS_SIZE", "256"))
    texture = int(os.environ.get("ATELIER_VIEWS_TEXTURE", "2048"))
    harness.settings(scene, prompt="marble ball", steps=4, width=side, height=side,
                     random_seed=False, seed=4)
    props = scene.atelier_views
    props.orbit_count, props.elevation, props.top, props.bottom = 4, 15.0, True, True
    props.texture_size = texture
    for _ in range(10):
        yield 0.1                  # the first draws
    meter = MainThreadMeter()
    meter.start()
    for _ in range(10):
        yield 0.1                  # idle, for the baseline
    idle = np.diff(np.array(meter.beats))
    meter.stop()
    meter = _CpuBeats()
    meter.start()
    started = time.perf_counter()
    assert _click(bpy.ops.atelier.texture_from_views) == {"FINISHED"}
    run = session.jobs[-1].finish.__self__
    yield from _wait(lambda: len(run.jobs) == 6 and run.jobs[-1].state.finished,
                     "the six views")
    seconds = time.perf_counter() - started
    meter.stop()
    assert [job.state.name for job in run.jobs] == ["DONE"] * 6, \
        [job.progress_text for job in run.jobs]
    beats = np.array(meter.beats)
    gaps = np.diff(beats[:, 0]) - HEARTBEAT
    cpu = np.diff(beats[:, 1])
    steps = sorted((step.seconds, step.where) for step in run.steps)
    step_cpu = sorted(step.cpu for step in run.steps)
    for gap in np.argsort(gaps)[-6:]:
        ours = [(step.seconds, step.where) for step in run.steps
                if beats[gap, 0] <= step.began < beats[gap + 1, 0]]
        print(f"VIEWS WINDOW gap {gaps[gap] * 1000:.0f} ms: main thread CPU "
              f"{cpu[gap] * 1000:.0f} ms, the add-on's steps in it "
              f"{sum(s for s, _ in ours) * 1000:.0f} ms {[w for _, w in ours][:3]}")
    print(f"VIEWS WINDOW {len(run.views)} views of {side}px into {texture}px in "
          f"{seconds:.2f} s on the add-on's timer: heartbeat gaps (main thread held) longest "
          f"{', '.join(f'{g * 1000:.0f}' for g in sorted(gaps)[-6:])} ms, over 100 ms "
          f"{int((gaps > 0.1).sum())} of {len(gaps)} (idle longest "
          f"{(idle.max() - HEARTBEAT) * 1000:.0f} ms); the add-on's steps longest "
          f"{', '.join(f'{p * 1000:.0f} ({w})' for p, w in steps[-4:])} ms of "
          f"{len(steps)} (CPU longest {', '.join(f'{c * 1000:.0f}' for c in step_cpu[-4:])} "
          f"ms); regions drawn {meter.draws}")
    # What the add-on did last before each draw of the 3D Viewport's main region
    after: dict = {}
    for drawn in meter.drawn_at:
        before = [step for step in run.steps if step.began <= drawn]
        where = max(before, key=lambda step: step.began).where if before else "before"
        after[where] = after.get(where, 0) + 1
    print(f"VIEWS WINDOW 3D Viewport draws after: {after}")
    for t in run.timings:
        print(f"VIEWS WINDOW {t['view']}: daemon {t['daemon_s']:.2f} s, Blender "
              f"{t['blender_s']:.3f} s")
    print("SCENARIO views PASSED on Blender", bpy.app.version_string)


def _live_init(live) -> np.ndarray:
    _, request, uploads = live.last_sent
    frame = next(f for f in uploads if f.id == request.init_image)
    return np.frombuffer(frame.data, dtype=np.uint8).reshape(frame.height, frame.width,
                                                             4).astype(int)


def main() -> Iterator[float | None]:
    args = harness.parse_args()
    module = harness.install_and_enable(args.zip, args.url)
    return {"window": steps, "view": view_steps,
            "redraws": redraw_steps, "live": live_steps,
            "views": views_steps}[args.scenario](module, args.url)


harness.run_windowed(main)
