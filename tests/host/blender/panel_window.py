"""The Atelier sidebar drawn by Blender with a window (under xvfb-run): checks and screenshots.

    xvfb-run -a -s "-screen 0 1280x1200x24" blender --factory-startup --enable-event-simulate \\
        --window-geometry 0 0 1280 1200 --python panel_window.py -- --zip Z --mode check|shots \\
        [--out DIR]

The add-on is installed from its zip and given a session that looks connected (models,
limits, a running job with a preview image, history entries with images); no daemon is
needed. Both sidebars (3D Viewport and Image Editor) are opened on the Atelier tab.

``check``: every sub-panel is opened, and every panel must be drawn by Blender in both
editors without an exception. ``shots``: the sub-panels as an artist first sees them
(Advanced and History closed) in the 3D Viewport, and Size, Advanced and History open in
the Image Editor with the size warnings showing; each area is saved as DIR/NAME.png with
the sidebar's box in DIR/NAME.json (scripts/blender-screenshots.sh crops and shrinks them).

Blender 3.4 has no Python API for the sidebar's active tab: Ctrl+wheel over the sidebar
(simulated events, --enable-event-simulate) turns the tabs until the Atelier panel draws.
Exits with os._exit: 0 when everything passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bpy  # noqa: E402

import harness  # noqa: E402

TIMEOUT = 60.0
PROMPT = "weathered red bricks, moss in the joints"


def _args() -> argparse.Namespace:
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    parser = argparse.ArgumentParser()
    parser.add_argument("--zip", required=True)
    parser.add_argument("--mode", choices=("check", "shots", "views"), required=True)
    parser.add_argument("--out", default=".")
    return parser.parse_args(argv)


class Drawn:
    """Which panel contents Blender drew, per editor, and what raised while drawing."""

    def __init__(self, panels) -> None:
        self.calls: set[tuple[str, bool]] = set()
        self.errors: list[str] = []
        for key, draw in list(panels.DRAW.items()):
            panels.DRAW[key] = self._wrap(key, draw)

    def _wrap(self, key, draw):
        def recorded(layout, props, image_editor):
            self.calls.add((key, image_editor))
            try:
                draw(layout, props, image_editor)
            except BaseException:
                self.errors.append(traceback.format_exc())
                raise
        return recorded


def _gradient(name: str, size: int, tint: tuple[float, float, float]) -> bpy.types.Image:
    import numpy as np
    image = bpy.data.images.new(name, size, size, alpha=True)
    ramp = np.linspace(0.15, 1.0, size, dtype=np.float32)
    rgba = np.ones((size, size, 4), dtype=np.float32)
    for channel in range(3):
        rgba[..., channel] = tint[channel] * (0.5 * ramp[None, :] + 0.5 * ramp[:, None])
    rgba[(np.arange(size)[:, None] // 8 + np.arange(size)[None, :] // 16) % 2 == 0, :3] *= 0.7
    image.pixels.foreach_set(rgba.ravel())
    image.update()
    return image


def _stage(module) -> object:
    """A session and scene as after a few jobs: connected, one running at step 12 of 20."""
    from importlib import import_module
    settings = import_module(module.__name__ + ".settings")
    runtime = import_module(module.__name__ + ".runtime")
    messages = import_module(module.__name__ + ".protocol.messages")
    session = harness.session(module)
    session.connection_ok = True
    session.connection_text = ("connected to ws://127.0.0.1:7860/: atelier 0.1 on cuda, "
                               "model sd15-base")
    session.models = ["sd15-base", "dreamshaper-8", "depth-adapter", "depth-controlnet"]
    session.conditioners = [("depth-adapter", "t2i_adapter"), ("depth-controlnet", "controlnet")]
    session.pass_conditioners = {"normal": [("normal-controlnet", "controlnet")],
                                 "lineart": [("lineart-adapter", "t2i_adapter")]}
    session.models_listed = True
    session.limits = messages.Limits(max_message_bytes=64 << 20, max_pixels=2048 * 2048,
                                     max_side=2048, max_batch=8, max_steps=150, max_queue=32,
                                     max_uploads=8, max_upscale_side=8192,
                                     max_upscale_pixels=8192 * 8192)
    session.upscalers = ["4x-UltraSharp", "2x-tiny"]
    scene = bpy.context.scene
    props = harness.settings(scene, prompt=PROMPT, negative_prompt="blurry, text, watermark",
                             steps=20)
    tints = ((0.8, 0.35, 0.25), (0.45, 0.6, 0.3), (0.35, 0.45, 0.8))
    for number, tint in enumerate(tints):
        seed = 1234 + number
        image = _gradient(settings.image_name(PROMPT, seed), 64, tint)
        item = props.history.add()
        item.prompt, item.seed, item.width, item.height = PROMPT, seed, 512, 512
        item.image_name = image.name
    props.history_index = len(props.history) - 1
    preview = _gradient(settings.preview_name(PROMPT), 64, (0.7, 0.5, 0.3))
    request = settings.build_request(settings.settings_from(props))
    job = runtime.Job("Generate", request, (), scene.name, job_id="j1",
                      state=runtime.JobState.RUNNING, step=8, total=20,
                      image_names=[preview.name])
    session.jobs.append(job)
    # Live on, up to date after a few updates (its state as the panel reads it; no timer runs)
    live = session.live
    live.on, live.jobs_sent, live.results_shown = True, 4, 3
    _gradient("Atelier Live", 64, (0.5, 0.5, 0.6))
    return job


def _open_subpanels(panels, which: dict[str, set[str]]) -> None:
    """Re-register the sub-panels so that those named in ``which[space]`` start open and the
    others closed (Blender keeps no Python switch for a panel's open state; a region that
    has not drawn yet takes each panel's default)."""
    for cls in panels.PANELS:
        parent = getattr(cls, "bl_parent_id", "")
        if not parent:
            continue
        suffix = cls.__name__[len(parent) + 1:]
        bpy.utils.unregister_class(cls)
        cls.bl_options = set() if suffix in which[cls.bl_space_type] else {"DEFAULT_CLOSED"}
        bpy.utils.register_class(cls)


def _fresh_subpanels(panels, space: str, opened: set[str], tag: str = "shot") -> None:
    """In a sidebar that has drawn already (and keeps each panel's open state by the panel's
    name), show the ``space`` sub-panels anew: each under a new name (ending in ``tag``),
    open if in ``opened``."""
    for cls in panels.PANELS:
        parent = getattr(cls, "bl_parent_id", "")
        if not parent or cls.bl_space_type != space:
            continue
        suffix = cls.__name__[len(parent) + 1:]
        for shown in (cls, *cls.__subclasses__()):   # the panel, or its last fresh copy
            if "bl_rna" in shown.__dict__:
                bpy.utils.unregister_class(shown)
        name = f"{cls.__name__}_{tag}"
        bpy.utils.register_class(type(name, (cls,), {
            "bl_idname": name,
            "bl_options": set() if suffix in opened else {"DEFAULT_CLOSED"}}))


def _area(kind: str):
    window = bpy.context.window_manager.windows[0]
    return window, next(a for a in window.screen.areas if a.type == kind)


def _laid_out(area) -> Iterator[float]:
    """Wait until the area's sidebar (if shown) has its width."""
    for _ in range(50):
        area.tag_redraw()
        yield 0.1
        sidebar = next((r for r in area.regions if r.type == "UI"), None)
        if sidebar is None or not area.spaces.active.show_region_ui or sidebar.width > 50:
            return


def _show_tab(kind: str, drawn: Drawn, image_editor: bool) -> Iterator[float]:
    """Open the sidebar of the ``kind`` area on the Atelier tab."""
    window, area = _area(kind)
    yield from _laid_out(area)
    if not hasattr(area.regions[0], "active_panel_category"):
        window.event_simulate("ESC", "PRESS")   # the splash screen takes the events
        window.event_simulate("ESC", "RELEASE")
    area.spaces.active.show_region_ui = True
    yield from _laid_out(area)
    sidebar = next(r for r in area.regions if r.type == "UI")
    if hasattr(sidebar, "active_panel_category"):   # Blender 4.2+
        sidebar.active_panel_category = "Atelier"
        area.tag_redraw()
    # The tabs run down the sidebar's right edge: click down the strip until it is ours.
    x = sidebar.x + sidebar.width - 12
    offset = 20
    deadline = time.monotonic() + TIMEOUT
    while ("main", image_editor) not in drawn.calls:
        if time.monotonic() > deadline or offset > sidebar.height:
            _shoot(kind, "timeout", os.environ.get("TMPDIR", "/tmp"))
            raise TimeoutError(f"the Atelier tab of the {kind} sidebar never drew")
        if not hasattr(sidebar, "active_panel_category"):
            y = sidebar.y + sidebar.height - offset
            window.event_simulate("MOUSEMOVE", "NOTHING", x=x, y=y)
            window.event_simulate("LEFTMOUSE", "PRESS", x=x, y=y)
            window.event_simulate("LEFTMOUSE", "RELEASE", x=x, y=y)
            offset += 12
        area.tag_redraw()
        yield 0.15


def _shoot(kind: str, name: str, out: str) -> None:
    window, area = _area(kind)
    sidebar = next(r for r in area.regions if r.type == "UI")
    path = os.path.join(out, f"{name}.png")
    with bpy.context.temp_override(window=window, area=area):
        bpy.ops.screen.screenshot_area(filepath=path)
    # The sidebar inside the area's picture, top-left origin.
    box = {"left": sidebar.x - area.x, "top": area.height - (sidebar.y - area.y) - sidebar.height,
           "width": sidebar.width, "height": sidebar.height, "blender": bpy.app.version_string}
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(box, f)
    print("wrote", path, box)


def views_shot(args: argparse.Namespace, module, drawn: Drawn, job) -> Iterator[float]:
    """Texture from Views open in the 3D Viewport's sidebar (the others closed), after a
    run of 6 views (its views list, each with Re-run), one view being re-run."""
    from types import SimpleNamespace
    panels = sys.modules[module.__name__ + ".panels"]
    views = sys.modules[module.__name__ + ".multiview_ops"]
    _open_subpanels(panels, {"VIEW_3D": set(), "IMAGE_EDITOR": set()})
    cls = views.VIEW3D_PT_atelier_views
    bpy.utils.unregister_class(cls)
    cls.bl_options = set()
    bpy.utils.register_class(cls)
    scene = bpy.context.scene
    props = scene.atelier_views
    props.texture_size, props.bottom = 2048, True
    names = ("Orbit 1", "Orbit 2", "Orbit 4", "Top", "Bottom", "Orbit 3")
    harness.session(module).kept_runs[scene.name] = SimpleNamespace(
        views=[SimpleNamespace(name=name) for name in names], busy=lambda: False)
    job.label, job.step, job.total = "Texture from Views: Orbit 2 again", 3, 4
    yield from _show_tab("VIEW_3D", drawn, False)
    for _ in range(4):
        _area("VIEW_3D")[1].tag_redraw()
        yield 0.3
    _shoot("VIEW_3D", "panel-texture-from-views", args.out)
    assert not drawn.errors, "\n".join(drawn.errors)
    print(f"PANEL WINDOW {args.mode} PASSED on Blender", bpy.app.version_string)


def steps(args: argparse.Namespace, module, drawn: Drawn) -> Iterator[float]:
    panels = sys.modules[module.__name__ + ".panels"]
    ids = {suffix for suffix, _, _ in panels.SUBPANELS}
    job = _stage(module)
    if args.mode == "views":
        yield from views_shot(args, module, drawn, job)
        return
    if args.mode == "check":
        _open_subpanels(panels, {"VIEW_3D": ids, "IMAGE_EDITOR": ids})
        props = bpy.context.scene.atelier
        props.width, props.height = 1030, 3000   # the size warnings draw too
    else:
        _open_subpanels(panels, {"VIEW_3D": {"prompt", "size", "texture"},
                                 "IMAGE_EDITOR": {"size", "advanced", "history"}})
    yield from _show_tab("VIEW_3D", drawn, False)
    job.step = 12   # a step later: the panel can tell the time left
    _area("VIEW_3D")[1].tag_redraw()
    yield 1.0
    if args.mode == "shots":
        _shoot("VIEW_3D", "panel-3d-viewport", args.out)
        props = bpy.context.scene.atelier
        props.width, props.height = 1000, 3000
        job.state = job.state.__class__.DONE
        job.message = "done in 6.2 s"
    area = _area("VIEW_3D")[1]
    area.type = "IMAGE_EDITOR"   # the same big area, now an Image Editor
    area.spaces.active.image = bpy.data.images[bpy.context.scene.atelier.history[-1].image_name]
    yield from _show_tab("IMAGE_EDITOR", drawn, True)
    for _ in range(4):
        _area("IMAGE_EDITOR")[1].tag_redraw()
        yield 0.3
    if args.mode == "shots":
        _shoot("IMAGE_EDITOR", "panel-image-editor", args.out)
        # Game Assets: an Upscale of the shown image running, its sub-panel open
        props = bpy.context.scene.atelier
        props.upscaler, props.refine_strength = "4x-UltraSharp", 0.3
        job.label, job.state = "Upscale 'bricks 1236'", job.state.__class__.RUNNING
        job.step, job.total, job.message = 40, 96, ""
        _fresh_subpanels(panels, "IMAGE_EDITOR", {"assets"})
        for _ in range(4):
            _area("IMAGE_EDITOR")[1].tag_redraw()
            yield 0.3
        _shoot("IMAGE_EDITOR", "panel-game-assets", args.out)
        # Controls & Reference: Depth and Normal ticked, a normal model and a reference chosen
        props.use_depth, props.use_normal, props.normal_model = True, True, "normal-controlnet"
        props.normal_end, props.use_reference, props.reference_weight = 0.7, True, 0.8
        props.reference_image = bpy.data.images[props.history[0].image_name]
        _fresh_subpanels(panels, "IMAGE_EDITOR", {"controls"}, tag="controls")
        for _ in range(4):
            _area("IMAGE_EDITOR")[1].tag_redraw()
            yield 0.3
        _shoot("IMAGE_EDITOR", "panel-controls", args.out)
    else:
        expected = {(key, image_editor) for key in ("main", *ids)
                    for image_editor in (False, True)}
        assert expected <= drawn.calls, sorted(expected - drawn.calls)
    assert not drawn.errors, "\n".join(drawn.errors)
    print(f"PANEL WINDOW {args.mode} PASSED on Blender", bpy.app.version_string)


def main() -> Iterator[float | None]:
    args = _args()
    module = harness.install_and_enable(args.zip, "ws://127.0.0.1:9/")   # never contacted
    drawn = Drawn(sys.modules[module.__name__ + ".panels"])
    return steps(args, module, drawn)


harness.run_windowed(main)
