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
from typing import Any, Iterator, Optional

import bpy

from . import host, pixels, settings
from .protocol import GenerateRequest, ImageFrame, PixelFormat
from .protocol.client import make_upload

DEPTH_SLOT = "atelier_depth_"
COLOR_SLOT = "atelier_color_"


@dataclass(frozen=True)
class Capture:
    """A render from the scene camera: RGBA8 colour and FLOAT32 Z depth, top row first."""
    width: int
    height: int
    color: Optional[bytes]
    depth: Optional[bytes]


def img2img_job(shot: Capture, panel: "settings.PanelSettings"
                ) -> tuple[GenerateRequest, list[ImageFrame]]:
    """The img2img request of ``panel`` on a camera render, with its uploads: the colour as
    the init image and, when rendered, the Z pass as the job's depth."""
    init = make_upload(PixelFormat.RGBA8, shot.width, shot.height, shot.color)
    uploads = [init]
    depth_id = None
    if shot.depth is not None:
        depth = make_upload(PixelFormat.FLOAT32, shot.width, shot.height, shot.depth)
        uploads.append(depth)
        depth_id = depth.id
    request = settings.build_request(panel, kind="img2img", init_image=init.id,
                                     depth_upload=depth_id)
    return request, uploads


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
                  as_viewport: bool = False, samples: Optional[int] = None) -> Capture:
    """Render the scene camera at ``width`` x ``height``; the scene is left as it was.

    ``as_viewport``: render the objects the viewport shows, and only those (also those
    hidden from renders), so the depth holds whatever can hide a surface from the camera
    in the add-on's ray casts. Colour goes through the scene's view transform (what the
    artist sees); depth is the Z pass (depth along the camera's axis, 1e10 where nothing
    was hit). ``samples``: render at most this many samples (Cycles, EEVEE), for a quick
    look.
    """
    host.require_camera(scene)
    shown = {o: o.visible_get(view_layer=view_layer) for o in scene.objects} \
        if as_viewport else {}
    with tempfile.TemporaryDirectory(prefix="atelier_render_") as folder, \
            contextlib.ExitStack() as stack:
        render = scene.render
        stack.enter_context(_restored(render, resolution_x=width, resolution_y=height,
                                      resolution_percentage=100, use_border=False,
                                      use_compositing=True))
        if depth:
            stack.enter_context(_restored(view_layer, use_pass_z=True))
        if samples is not None:
            stack.enter_context(_fewer_samples(scene, samples))
        if not color and render.engine == "CYCLES":
            # Depth alone needs one sample, and no denoiser (Debian's build has none).
            stack.enter_context(_restored(scene.cycles, samples=1, use_denoising=False))
        for obj, visible in shown.items():
            if obj.hide_render == visible:
                stack.enter_context(_restored(obj, hide_render=not visible))
        stack.enter_context(_output_nodes(scene, view_layer, folder, color=color, depth=depth))
        bpy.ops.render.render(write_still=False, scene=scene.name, layer=view_layer.name)
        color_bytes = depth_bytes = None
        if color:
            color_bytes = read_rgba8_file(_written(folder, COLOR_SLOT))
        if depth:
            depth_bytes = _read_depth_file(_written(folder, DEPTH_SLOT), width, height)
    return Capture(width, height, color_bytes, depth_bytes)


def _fewer_samples(scene: bpy.types.Scene, samples: int) -> contextlib.AbstractContextManager:
    """At most ``samples`` render samples for the block (Cycles; EEVEE's render samples)."""
    if scene.render.engine == "CYCLES":
        return _restored(scene.cycles, samples=min(samples, scene.cycles.samples))
    eevee = getattr(scene, "eevee", None)
    if scene.render.engine.startswith("BLENDER_EEVEE") and eevee is not None:
        return _restored(eevee, taa_render_samples=min(samples, eevee.taa_render_samples))
    return contextlib.nullcontext()


@contextlib.contextmanager
def _output_nodes(scene: bpy.types.Scene, view_layer: bpy.types.ViewLayer, folder: str, *,
                  color: bool, depth: bool) -> Iterator[None]:
    """Compositor File Output nodes writing colour (PNG) and depth (32-bit EXR) to ``folder``.

    Render Result pixels are empty in background mode, so files are the one
    way to read a render that works with and without a window.
    """
    with _compositor(scene) as tree:
        layers = tree.nodes.new("CompositorNodeRLayers")
        layers.scene = scene
        layers.layer = view_layer.name
        if color:
            out, socket = _file_output(tree, folder, COLOR_SLOT, "RGBA")
            out.format.file_format = "PNG"
            out.format.color_mode = "RGBA"
            out.format.color_depth = "8"
            tree.links.new(layers.outputs["Image"], socket)
        if depth:
            out, socket = _file_output(tree, folder, DEPTH_SLOT, "FLOAT")
            out.format.file_format = "OPEN_EXR"
            out.format.color_depth = "32"
            tree.links.new(layers.outputs["Depth"], socket)
        yield


@contextlib.contextmanager
def _compositor(scene: bpy.types.Scene) -> Iterator[bpy.types.NodeTree]:
    """The scene's compositor node tree, in use for the block; every node added to it
    meanwhile (also the defaults Blender adds to a new tree) is removed afterwards.

    Up to 4.5 it is ``scene.node_tree``, used while ``scene.use_nodes`` is on. Blender 5.0
    made it a node group (``scene.compositing_node_group``, None when the scene has no
    compositor): then a temporary group serves and is removed afterwards.
    """
    if hasattr(scene, "node_tree"):
        before = {n.name for n in scene.node_tree.nodes} if scene.node_tree else set()
        with _restored(scene, use_nodes=True), _removing_new_nodes(scene.node_tree, before):
            yield scene.node_tree
        return
    if scene.compositing_node_group is not None:
        tree = scene.compositing_node_group
        with _removing_new_nodes(tree, {n.name for n in tree.nodes}):
            yield tree
        return
    group = bpy.data.node_groups.new("Atelier Capture", "CompositorNodeTree")
    try:
        scene.compositing_node_group = group
        yield group
    finally:
        scene.compositing_node_group = None
        bpy.data.node_groups.remove(group)


@contextlib.contextmanager
def _removing_new_nodes(tree: bpy.types.NodeTree, keep: set[str]) -> Iterator[None]:
    try:
        yield
    finally:
        for node in [n for n in tree.nodes if n.name not in keep]:
            tree.nodes.remove(node)


def _file_output(tree: bpy.types.NodeTree, folder: str, prefix: str,
                 socket_type: str) -> tuple[bpy.types.Node, bpy.types.NodeSocket]:
    """A File Output node writing one image file named ``prefix``... into ``folder``, and its
    input socket; ``socket_type`` (RGBA, FLOAT) is what that input takes in Blender 5.0."""
    out = tree.nodes.new("CompositorNodeOutputFile")
    if hasattr(out, "file_slots"):     # up to 4.5: a base path and one slot per input
        out.base_path = folder
        out.file_slots[0].path = prefix
        return out, out.inputs[0]
    out.directory = folder             # 5.0: directory, file name, and items for inputs
    out.file_name = prefix
    out.format.media_type = "IMAGE"    # the default is a multilayer EXR
    item = out.file_output_items.new(socket_type, "pass")
    return out, out.inputs[item.name]


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
