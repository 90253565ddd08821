"""Rendering the scene camera for the add-on: colour for img2img, the Z pass for depth.

Render Result pixels are empty in background mode, so the passes go through
compositor File Output nodes into a temporary folder and are read back; every
setting touched for this render is put back afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import bpy

from . import host, pixels

DEPTH_SLOT = "atelier_depth_"
COLOR_SLOT = "atelier_color_"


@dataclass(frozen=True)
class Capture:
    """A render from the scene camera: RGBA8 colour and FLOAT32 distances, top row first."""
    width: int
    height: int
    color: Optional[bytes]
    depth: Optional[bytes]


@contextlib.contextmanager
def _restored(target: Any, **values: Any) -> Iterator[None]:
    """Set attributes for the duration of the block and put the old values back."""
    old = {name: getattr(target, name) for name in values}
    try:
        for name, value in values.items():
            setattr(target, name, value)
        yield
    finally:
        for name, value in old.items():
            setattr(target, name, value)


def render_camera(scene: bpy.types.Scene, view_layer: bpy.types.ViewLayer, width: int,
                  height: int, *, color: bool, depth: bool,
                  only: Optional[Sequence[bpy.types.Object]] = None) -> Capture:
    """Render the scene camera at ``width`` x ``height``; the scene is left as it was.

    ``only``: objects to keep; every other object is hidden from this render
    (depth of the selected objects). Colour goes through the scene's view
    transform (what the artist sees); depth is the Z pass (distance from the
    camera, 1e10 where nothing was hit).
    """
    host.require_camera(scene)
    hidden = [] if only is None else [o for o in scene.objects
                                      if o not in only and not o.hide_render
                                      and o.type not in {"CAMERA", "LIGHT"}]
    with tempfile.TemporaryDirectory(prefix="atelier_render_") as folder, \
            contextlib.ExitStack() as stack:
        render = scene.render
        stack.enter_context(_restored(render, resolution_x=width, resolution_y=height,
                                      resolution_percentage=100, use_border=False,
                                      use_compositing=True))
        if depth:
            stack.enter_context(_restored(view_layer, use_pass_z=True))
        if not color and render.engine == "CYCLES":
            # Depth alone needs one sample, and no denoiser (Debian's build has none).
            stack.enter_context(_restored(scene.cycles, samples=1, use_denoising=False))
        for obj in hidden:
            stack.enter_context(_restored(obj, hide_render=True))
        stack.enter_context(_restored(scene, use_nodes=True))
        stack.enter_context(_output_nodes(scene, view_layer, folder, color=color, depth=depth))
        bpy.ops.render.render(write_still=False, scene=scene.name, layer=view_layer.name)
        color_bytes = depth_bytes = None
        if color:
            color_bytes = read_rgba8_file(_written(folder, COLOR_SLOT))
        if depth:
            depth_bytes = _read_depth_file(_written(folder, DEPTH_SLOT), width, height)
    return Capture(width, height, color_bytes, depth_bytes)


@contextlib.contextmanager
def _output_nodes(scene: bpy.types.Scene, view_layer: bpy.types.ViewLayer, folder: str, *,
                  color: bool, depth: bool) -> Iterator[None]:
    """Compositor File Output nodes writing colour (PNG) and depth (32-bit EXR) to ``folder``.

    Render Result pixels are empty in background mode, so files are the one
    way to read a render that works with and without a window. Every node
    added (including the defaults Blender creates with the tree) is removed.
    """
    tree = scene.node_tree
    before = {node.name for node in tree.nodes}
    layers = tree.nodes.new("CompositorNodeRLayers")
    layers.scene = scene
    layers.layer = view_layer.name
    try:
        if color:
            out = tree.nodes.new("CompositorNodeOutputFile")
            out.base_path = folder
            out.format.file_format = "PNG"
            out.format.color_mode = "RGBA"
            out.format.color_depth = "8"
            out.file_slots[0].path = COLOR_SLOT
            tree.links.new(layers.outputs["Image"], out.inputs[0])
        if depth:
            out = tree.nodes.new("CompositorNodeOutputFile")
            out.base_path = folder
            out.format.file_format = "OPEN_EXR"
            out.format.color_depth = "32"
            out.file_slots[0].path = DEPTH_SLOT
            tree.links.new(layers.outputs["Depth"], out.inputs[0])
        yield
    finally:
        for node in [n for n in tree.nodes if n.name not in before]:
            tree.nodes.remove(node)


def _written(folder: str, slot: str) -> str:
    found = sorted(glob.glob(os.path.join(folder, slot + "*")))
    if not found:
        raise host.HostError(f"the render wrote no '{slot}' file (was the render cancelled?)")
    return found[0]


@contextlib.contextmanager
def _loaded(path: str) -> Iterator[bpy.types.Image]:
    image = bpy.data.images.load(path, check_existing=False)
    try:
        yield image
    finally:
        bpy.data.images.remove(image)


def read_rgba8_file(path: str) -> bytes:
    with _loaded(path) as image:
        return host.read_rgba8(image)


def _read_depth_file(path: str, width: int, height: int) -> bytes:
    with _loaded(path) as image:
        image.colorspace_settings.name = "Non-Color"
        if tuple(image.size) != (width, height):
            raise host.HostError(f"depth render is {tuple(image.size)}, "
                                 f"expected {(width, height)}")
        return pixels.blender_channel_to_float32(host.float_pixels(image), width, height)
