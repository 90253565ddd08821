"""Helpers for scenario scripts that run inside real Blender (binary or ``bpy`` module).

Run by tests/test_blender_host.py as
    blender -b --factory-startup --python-exit-code 1 --python scenarios.py -- ARGS
    python scenarios.py -- ARGS          (the bpy wheel)
Any exception fails the process; scenarios assert on Blender datablocks.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import traceback
from types import ModuleType
from typing import Any, Callable, Iterator, Optional

import addon_utils
import bpy
import mathutils

ADDON = "atelier_blender"
EXTENSION = "bl_ext.user_default.atelier_blender"   # the same, installed as an extension


def parse_args() -> argparse.Namespace:
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    parser = argparse.ArgumentParser()
    parser.add_argument("--zip", required=True)
    parser.add_argument("--url", required=True, help="ws://127.0.0.1:PORT/")
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--install", choices=("legacy", "extension"), default="legacy",
                        help="Preferences > Add-ons > Install, or as a 4.2+ extension")
    return parser.parse_args(argv)


def _reraise(exc: BaseException) -> None:
    raise exc


def install_and_enable(zip_path: str, url: str, how: str = "legacy") -> ModuleType:
    """Install the built zip the way a user does, enable it, point it at ``url``.

    ``legacy``: Preferences > Add-ons > Install (every Blender); ``extension``:
    Install from Disk into the user extensions repository (Blender 4.2+), which
    reads ``blender_manifest.toml``.
    """
    if how == "legacy":
        result = bpy.ops.preferences.addon_install(filepath=zip_path, overwrite=True)
        assert result == {"FINISHED"}, f"addon_install returned {result}"
        module = addon_utils.enable(ADDON, default_set=True, handle_error=_reraise)
        assert module is not None, "addon_utils.enable returned None"
    else:
        assert bpy.app.version >= (4, 2, 0), bpy.app.version_string
        result = bpy.ops.extensions.package_install_files(
            filepath=zip_path, repo="user_default", enable_on_install=True)
        assert result == {"FINISHED"}, f"package_install_files returned {result}"
        assert EXTENSION in bpy.context.preferences.addons.keys(), "extension not enabled"
        module = sys.modules[EXTENSION]
    root = os.environ["BLENDER_USER_SCRIPTS" if how == "legacy" else "BLENDER_USER_EXTENSIONS"]
    assert module.__file__ is not None and module.__file__.startswith(root), module.__file__
    # The add-on must use its own vendored websockets, not one from the host's Python.
    name = module.__name__
    assert f"{name}.protocol._vendor.websockets" in sys.modules, "vendored websockets not used"
    hostport = url.split("//", 1)[1].rstrip("/")
    host, port = hostport.rsplit(":", 1)
    prefs = preferences(module)
    prefs.host, prefs.port = host, int(port)
    return module


def preferences(module: ModuleType) -> Any:
    return bpy.context.preferences.addons[module.__name__].preferences


def disable(module: ModuleType) -> None:
    addon_utils.disable(module.__name__, default_set=True, handle_error=_reraise)


def session(module: ModuleType) -> Any:
    found = module.addon.current_session()
    assert found is not None, "add-on enabled but it holds no session"
    return found


def empty_scene() -> bpy.types.Scene:
    """Factory scene without its objects; Cycles on the CPU, quick settings."""
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 4
    scene.cycles.use_denoising = False
    return scene


def add_camera(scene: bpy.types.Scene, location: tuple[float, float, float]) -> bpy.types.Object:
    """A perspective camera (50 mm lens, 36 mm sensor) at ``location`` looking along +Y."""
    data = bpy.data.cameras.new("Cam")
    cam = bpy.data.objects.new("Cam", data)
    scene.collection.objects.link(cam)
    cam.location = location
    cam.rotation_euler = (math.pi / 2, 0.0, 0.0)
    scene.camera = cam
    return cam


def add_cube(scene: bpy.types.Scene, name: str, location: tuple[float, float, float],
             size: float = 2.0) -> bpy.types.Object:
    import bmesh
    mesh = bpy.data.meshes.new(name)
    bm = bmesh.new()
    bm.loops.layers.uv.new("UVMap")
    bmesh.ops.create_cube(bm, size=size, calc_uvs=True)
    return _link_object(scene, name, mesh, bm, location)


def add_grid(scene: bpy.types.Scene, name: str, location: tuple[float, float, float],
             size: float, cuts: int) -> bpy.types.Object:
    """A square grid of ``cuts`` x ``cuts`` faces in the XZ plane facing -Y (the camera)."""
    import bmesh
    mesh = bpy.data.meshes.new(name)
    bm = bmesh.new()
    bm.loops.layers.uv.new("UVMap")
    bmesh.ops.create_grid(bm, x_segments=cuts, y_segments=cuts, size=size / 2, calc_uvs=True)
    bmesh.ops.rotate(bm, verts=bm.verts, cent=(0, 0, 0),
                     matrix=mathutils.Matrix.Rotation(math.pi / 2, 3, "X"))
    return _link_object(scene, name, mesh, bm, location)


def _link_object(scene: bpy.types.Scene, name: str, mesh: bpy.types.Mesh, bm,
                 location: tuple[float, float, float]) -> bpy.types.Object:
    """Write ``bm`` into ``mesh`` and place it in ``scene`` as a new object."""
    bm.to_mesh(mesh)
    bm.free()
    obj = bpy.data.objects.new(name, mesh)
    scene.collection.objects.link(obj)
    obj.location = location
    return obj


def compositor(scene: bpy.types.Scene) -> tuple[Any, list[str]]:
    """What the scene's compositor is: (whether it is on up to 4.5 / its node group in 5.0,
    the types of its nodes)."""
    if hasattr(scene, "node_tree"):
        tree, state = scene.node_tree, scene.use_nodes
    else:
        tree = state = scene.compositing_node_group
    return state, sorted(node.type for node in tree.nodes) if tree is not None else []


def select_only(objects: list[bpy.types.Object]) -> None:
    for obj in bpy.context.scene.objects:
        obj.select_set(obj in objects)
    bpy.context.view_layer.objects.active = objects[0] if objects else None


def settings(scene: bpy.types.Scene, **values: Any) -> Any:
    props = scene.atelier
    for key, value in values.items():
        setattr(props, key, value)
    return props


# ------------------------------------------------------------------ windowed scripts
def finish(code: int) -> None:
    """End a windowed Blender at once with ``code`` (its window would otherwise stay)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_windowed(start: Callable[[], Iterator[Optional[float]]]) -> None:
    """Run a windowed scenario: ``start()`` gives the steps, each yielding the seconds
    until the next one; they run on Blender's timer so the window draws between them.
    Exits 0 when they end, 1 (with the traceback) when anything raises."""

    def tick() -> Optional[float]:
        try:
            return next(running)
        except StopIteration:
            finish(0)
        except BaseException:  # noqa: BLE001  the test's verdict: print it and fail
            traceback.print_exc()
            finish(1)
        return None

    try:
        running = start()
        bpy.app.timers.register(tick, first_interval=0.5)
    except BaseException:  # noqa: BLE001  without this Blender would keep its window open
        traceback.print_exc()
        finish(1)
