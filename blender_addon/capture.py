"""Rendering the scene camera for the add-on: colour for img2img, the Z pass for depth, the
Normal pass and a Freestyle line pass for controls (turned into control images by
control_maps; passes.py makes controls of them).

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

from . import control_maps, host, pixels

DEPTH_SLOT = "atelier_depth_"
COLOR_SLOT = "atelier_color_"
NORMAL_SLOT = "atelier_normal_"
LINES_SLOT = "atelier_lines_"
LINESET = "Atelier Lines"   # the line set a line pass adds to a view layer that has none


@dataclass(frozen=True)
class Capture:
    """A render from the scene camera, top row first: RGBA8 colour, FLOAT32 Z depth, and
    the control images of the Normal pass (RGBA8, camera space encoded as PROTOCOL.md 4.4)
    and of a Freestyle line pass (RGBA8, light lines on black). None: not rendered."""
    width: int
    height: int
    color: Optional[bytes]
    depth: Optional[bytes]
    normal: Optional[bytes] = None
    lines: Optional[bytes] = None
    normal_vectors: Optional[bytes] = None   # the same normals exact, as FLOAT32X3


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
                  height: int, *, color: bool, depth: bool, normal: bool = False,
                  lines: bool = False, as_viewport: bool = False,
                  samples: Optional[int] = None) -> Capture:
    """Render the scene camera at ``width`` x ``height``; the scene is left as it was.

    ``normal``: the Normal pass, turned into the camera's space; ``lines``: Freestyle's
    lines (silhouettes, borders, creases of the view layer's line sets, or of a temporary
    one when it has none) as a pass of their own.

    ``as_viewport``: render the objects the viewport shows, and only those (also those
    hidden from renders), so the depth holds whatever can hide a surface from the camera
    in the add-on's ray casts. Colour goes through the scene's view transform (what the
    artist sees); depth is the Z pass (depth along the camera's axis, 1e10 where nothing
    was hit). ``samples``: render at most this many samples (Cycles, EEVEE), for a quick
    look.
    """
    camera = host.require_camera(scene)
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
        if normal:
            stack.enter_context(_restored(view_layer, use_pass_normal=True))
        if lines:
            stack.enter_context(_freestyle_pass(scene, view_layer))
        if samples is not None:
            stack.enter_context(_fewer_samples(scene, samples))
        if not color and render.engine == "CYCLES":
            # Passes alone need one sample, and no denoiser (Debian's build has none).
            stack.enter_context(_restored(scene.cycles, samples=1, use_denoising=False))
        for obj, visible in shown.items():
            if obj.hide_render == visible:
                stack.enter_context(_restored(obj, hide_render=not visible))
        stack.enter_context(_output_nodes(scene, view_layer, folder, color=color, depth=depth,
                                          normal=normal, lines=lines))
        # The camera as the render sees it: matrix_world is stale until the view layer is
        # evaluated (a camera placed or moved by a script since the last update).
        view_layer.update()
        view = [list(row) for row in camera.matrix_world.inverted()]
        bpy.ops.render.render(write_still=False, scene=scene.name, layer=view_layer.name)
        color_bytes = depth_bytes = normal_bytes = lines_bytes = vector_bytes = None
        if color:
            color_bytes = read_rgba8_file(_written(folder, COLOR_SLOT))
        if depth:
            depth_bytes = pixels.blender_channel_to_float32(
                _read_float_file(_written(folder, DEPTH_SLOT), width, height), width, height)
        if normal:
            vectors = control_maps.normal_pass_vectors(
                _read_float_file(_written(folder, NORMAL_SLOT), width, height), width, height,
                view)
            normal_bytes = control_maps.encode_normals(vectors).tobytes()
            vector_bytes = control_maps.float32x3_payload(vectors)
        if lines:
            lines_bytes = control_maps.line_pass_to_rgba8(
                _read_float_file(_written(folder, LINES_SLOT), width, height), width, height)
    return Capture(width, height, color_bytes, depth_bytes, normal_bytes, lines_bytes,
                   vector_bytes)


@contextlib.contextmanager
def _freestyle_pass(scene: bpy.types.Scene, view_layer: bpy.types.ViewLayer) -> Iterator[None]:
    """Freestyle on for the block, its lines as a render pass of their own (not drawn over
    the colour); a view layer without line sets gets a temporary one drawing silhouettes,
    borders and creases."""
    if not bpy.app.build_options.freestyle:
        raise host.HostError("this Blender was built without Freestyle, which the Line Art "
                             "control renders its lines with: turn Line Art off")
    freestyle = view_layer.freestyle_settings
    with contextlib.ExitStack() as stack:
        stack.enter_context(_restored(scene.render, use_freestyle=True))
        stack.enter_context(_restored(view_layer, use_freestyle=True))
        stack.enter_context(_restored(freestyle, as_render_pass=True, mode="EDITOR"))
        added = None
        if not any(lineset.show_render for lineset in freestyle.linesets):
            added = freestyle.linesets.new(LINESET)
            added.select_by_visibility = added.select_by_edge_types = True
            added.select_silhouette = added.select_border = added.select_crease = True
        try:
            yield
        finally:
            if added is not None:
                style = added.linestyle
                freestyle.linesets.remove(added)
                if style is not None and style.users == 0:
                    bpy.data.linestyles.remove(style)


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
                  color: bool, depth: bool, normal: bool = False,
                  lines: bool = False) -> Iterator[None]:
    """Compositor File Output nodes writing colour (PNG), and depth, normals and the line
    pass (32-bit EXRs, values as rendered) to ``folder``.

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
        floats = ((depth, DEPTH_SLOT, "FLOAT", "Depth"), (normal, NORMAL_SLOT, "RGBA", "Normal"),
                  (lines, LINES_SLOT, "RGBA", "Freestyle"))
        for wanted, slot, socket_type, output in floats:
            if not wanted:
                continue
            out, socket = _file_output(tree, folder, slot, socket_type)
            out.format.file_format = "OPEN_EXR"
            out.format.color_depth = "32"
            if socket_type == "RGBA":
                out.format.color_mode = "RGBA"
            source = layers.outputs.get(output)
            if source is None or not source.enabled:
                raise host.HostError(f"the {scene.render.engine} render engine gives no "
                                     f"{output} pass: render with Cycles or EEVEE")
            tree.links.new(source, socket)
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


def _read_float_file(path: str, width: int, height: int) -> Any:
    """An EXR pass as Blender's flat float RGBA pixels (bottom row first), values as written."""
    with _loaded(path) as image:
        image.colorspace_settings.name = "Non-Color"
        if tuple(image.size) != (width, height):
            raise host.HostError(f"the {os.path.basename(path)} render is "
                                 f"{tuple(image.size)}, expected {(width, height)}")
        return host.float_pixels(image)
