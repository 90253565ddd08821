"""Blender data the add-on reads and writes: images, materials, UV maps, visibility.

The rest of the add-on goes through here (and ``capture`` for renders).
Functions take Blender objects and plain values; pixel and projection maths
live in ``pixels`` and ``projection`` so they can be tested without Blender.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Collection, Iterable, Iterator, Optional, Sequence

import bpy
import mathutils
import numpy as np

from . import pixels, projection, settings

PROJECTION_UV_NAME = "Atelier Projection"
IMAGE_FOLDER = "atelier"   # beside the .blend: where results go as PNG files
MAX_UV_MAPS = 8          # Blender's limit per mesh


class HostError(Exception):
    """Blender cannot do what was asked (no camera, no mesh, UV maps full ...)."""


# ---------------------------------------------------------------- images

def new_image(name: str, width: int, height: int, colorspace: str = "sRGB") -> bpy.types.Image:
    """A new 8-bit image datablock; Blender makes the name unique if taken. The colour space
    is set here, before any pixels: changing it later makes Blender regenerate a generated
    image's buffer, losing what was written."""
    image = bpy.data.images.new(name, width=width, height=height, alpha=True, float_buffer=False)
    image.colorspace_settings.name = colorspace
    return image


def _is_linear(image: bpy.types.Image) -> bool:
    return bool(image.is_float) and image.colorspace_settings.name != "Non-Color"


def write_rgba8(image: bpy.types.Image, data: bytes, width: int, height: int) -> None:
    """Put RGBA8 top-first pixels into ``image``, resizing it if needed."""
    if tuple(image.size) != (width, height):
        image.scale(width, height)
    image.pixels.foreach_set(pixels.rgba8_to_blender(data, width, height,
                                                     linear=_is_linear(image)))
    image.update()


def float_pixels(image: bpy.types.Image) -> np.ndarray:
    width, height = image.size
    buf = np.empty(width * height * 4, dtype=np.float32)
    image.pixels.foreach_get(buf)
    return buf


def read_rgba8(image: bpy.types.Image) -> bytes:
    """The image as RGBA8 top-first bytes (sRGB-encoded if it holds linear floats)."""
    width, height = image.size
    return pixels.blender_to_rgba8(float_pixels(image), width, height, linear=_is_linear(image))


# An image waiting to be packed into the .blend when it is next saved (pack_waiting_images)
PACK_ON_SAVE = "atelier_pack_on_save"


def keep_images(images: Sequence[bpy.types.Image], as_files: bool) -> Optional[str]:
    """Make results come back when the .blend is saved and opened again: each is packed
    into the .blend when it is saved, or with ``as_files`` saved as a PNG in IMAGE_FOLDER
    beside it now. Each also gets a fake user, so a result nothing uses yet is saved too.
    Returns a note for the artist when the images went elsewhere than asked, else None.

    Packing encodes a PNG on Blender's thread (seconds for a 4k upscale), so it waits for
    the save, where the artist expects to wait, instead of freezing Blender as it lands."""
    blend = bpy.data.filepath
    notes = []
    for image in images:
        image.use_fake_user = True
        if not as_files or not blend:
            image[PACK_ON_SAVE] = True
            continue
        try:
            _save_png(image, os.path.join(os.path.dirname(blend), IMAGE_FOLDER))
        except (OSError, RuntimeError) as exc:
            image[PACK_ON_SAVE] = True
            notes.append(f"could not save '{image.name}' as a PNG ({exc}): it will be packed "
                         f"into the .blend instead")
    if as_files and not blend and images:
        notes.append("the .blend was never saved, so the images will be packed into it")
    return "; ".join(notes) or None


def pack_waiting_images() -> list[str]:
    """Pack the results that wait for it (keep_images) into the .blend: run just before
    Blender writes it, and when the add-on is disabled. Returns their names."""
    packed = []
    for image in bpy.data.images:
        if not image.get(PACK_ON_SAVE):
            continue
        del image[PACK_ON_SAVE]
        if image.packed_file is None:
            image.pack()
            packed.append(image.name)
    return packed


def _save_png(image: bpy.types.Image, folder: str) -> None:
    """Save ``image`` as a new PNG file in ``folder``, referred to relative to the .blend."""
    os.makedirs(folder, exist_ok=True)
    stem = settings.file_stem(image.name)
    path = os.path.join(folder, stem + ".png")
    number = 1
    while os.path.exists(path):   # never overwrite: another result may live there
        number += 1
        path = os.path.join(folder, f"{stem}-{number}.png")
    image.filepath_raw = bpy.path.relpath(path)
    image.file_format = "PNG"
    image.save()


def remove_images(names: Iterable[str]) -> None:
    for name in names:
        image = bpy.data.images.get(name)
        if image is not None:
            bpy.data.images.remove(image)


def show_image(image: bpy.types.Image) -> None:
    """Show ``image`` in every open Image Editor (none exist in background mode)."""
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "IMAGE_EDITOR":
                area.spaces.active.image = image


def push_undo(message: str) -> None:
    """Make what a timer just created one undo step (timers push none by themselves)."""
    bpy.ops.ed.undo_push(message=message)


def redraw(status: Optional[str], written: Collection[str] = ()) -> None:
    """Redraw what shows the add-on's state and put ``status`` in the status bar (None
    clears it): the sidebars of 3D Viewports and Image Editors, the whole of an Image Editor
    showing one of the images just ``written``, and the preferences. A 3D Viewport's main
    region shows none of it and costs the most to draw, so it is left alone."""
    for window in bpy.context.window_manager.windows:
        window.workspace.status_text_set(status)
        for area in window.screen.areas:
            if area.type == "IMAGE_EDITOR" and _shown_image(area) in written:
                area.tag_redraw()
            elif area.type in {"VIEW_3D", "IMAGE_EDITOR"}:
                for region in area.regions:
                    if region.type == "UI":
                        region.tag_redraw()
            elif area.type == "PREFERENCES":
                area.tag_redraw()


def _shown_image(area: bpy.types.Area) -> Optional[str]:
    image = area.spaces.active.image
    return image.name if image is not None else None


def require_camera(scene: bpy.types.Scene) -> bpy.types.Object:
    if scene.camera is None:
        raise HostError("the scene has no active camera; add one or make one active")
    return scene.camera


# ---------------------------------------------------------------- viewport cameras

def viewport_camera(context: bpy.types.Context, width: int,
                    height: int) -> Optional[projection.ViewCamera]:
    """The camera that frames the invoking 3D Viewport's view in a ``width`` x ``height``
    image; None when the viewport looks through the scene camera already."""
    space = context.space_data
    if space is None or space.type != "VIEW_3D":
        raise HostError("'From: View' needs a 3D Viewport; use it from the 3D Viewport's "
                        "sidebar or choose 'From: Camera'")
    area = context.area
    region = context.region
    view = context.region_data
    if region is None or region.type != "WINDOW" or view is None:
        # From the sidebar: the area's main view (the top-right one in quad view).
        view = space.region_3d
        region = next((r for r in area.regions if r.type == "WINDOW"), None) if area else None
        if region is None:
            raise HostError("the 3D Viewport has no view region to take the view from")
    return _view_camera(space, region, view, width, height)


def area_view_camera(area: bpy.types.Area, width: int,
                     height: int) -> Optional[projection.ViewCamera]:
    """Like ``viewport_camera``, for the main view of a 3D Viewport ``area`` found without a
    context (from a timer)."""
    region = next((r for r in area.regions if r.type == "WINDOW"), None)
    if region is None:
        raise HostError("the 3D Viewport has no view region to take the view from")
    space = area.spaces.active
    return _view_camera(space, region, space.region_3d, width, height)


def _view_camera(space: Any, region: Any, view: Any, width: int,
                 height: int) -> Optional[projection.ViewCamera]:
    if view.view_perspective == "CAMERA":
        return None
    try:
        return projection.camera_for_view(
            [list(row) for row in view.view_matrix], orthographic=not view.is_perspective,
            lens=space.lens, clip_start=space.clip_start, clip_end=space.clip_end,
            view_distance=view.view_distance, region_size=(region.width, region.height),
            image_size=(width, height))
    except ValueError as exc:
        raise HostError(f"cannot make a camera from this view: {exc}") from exc


@contextlib.contextmanager
def temporary_camera(scene: bpy.types.Scene, view_layer: bpy.types.ViewLayer,
                     settings: Optional[projection.ViewCamera]) -> Iterator[None]:
    """Make a camera with ``settings`` the scene camera for the block; afterwards the
    camera object and its data are gone and the scene camera is the one before.
    None: leave the scene camera as it is."""
    if settings is None:
        yield
        return
    previous = scene.camera
    data = bpy.data.cameras.new("Atelier View")
    camera = None
    try:
        data.type = "ORTHO" if settings.orthographic else "PERSP"
        data.lens = settings.lens
        data.sensor_fit = settings.sensor_fit
        data.sensor_width = data.sensor_height = settings.sensor_size
        data.ortho_scale = settings.ortho_scale
        data.clip_start, data.clip_end = settings.clip_start, settings.clip_end
        camera = bpy.data.objects.new("Atelier View", data)
        camera.matrix_world = mathutils.Matrix(settings.matrix_world)
        scene.collection.objects.link(camera)
        scene.camera = camera
        view_layer.update()
        yield
    finally:
        scene.camera = previous
        if camera is not None:
            bpy.data.objects.remove(camera)
        bpy.data.cameras.remove(data)
        view_layer.update()


# ---------------------------------------------------------------- materials

def new_image_material(name: str, image: bpy.types.Image,
                       uv_map: Optional[str] = None) -> bpy.types.Material:
    """Image Texture -> Principled BSDF Base Color; ``uv_map`` picks the UVs (else active)."""
    material = bpy.data.materials.new(name)
    if material.node_tree is None:   # before 5.0 a new material has no nodes until asked
        material.use_nodes = True
    tree = material.node_tree
    bsdf = next(n for n in tree.nodes if n.type == "BSDF_PRINCIPLED")
    tex = tree.nodes.new("ShaderNodeTexImage")
    tex.image = image
    tex.location = (bsdf.location.x - 350, bsdf.location.y)
    tree.links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    if uv_map is not None:
        tex.extension = "CLIP"   # outside the projected frame: no repeats
        uv = tree.nodes.new("ShaderNodeUVMap")
        uv.uv_map = uv_map
        uv.location = (tex.location.x - 250, tex.location.y)
        tree.links.new(uv.outputs["UV"], tex.inputs["Vector"])
    return material


def assign_material(obj: bpy.types.Object, material: bpy.types.Material, *,
                    replace: bool, faces: Optional[np.ndarray] = None) -> int:
    """Put ``material`` on ``obj``; returns the slot index.

    ``replace`` False (the default everywhere) adds a new slot, so the old
    material stays on the object; True swaps the active slot's material.
    ``faces``: a boolean mask of polygons that get the new slot (all if None).
    """
    mesh = obj.data
    if replace and len(obj.material_slots) > 0:
        slot = obj.active_material_index
        obj.material_slots[slot].material = material
        return slot
    if faces is not None and len(mesh.materials) == 0:
        # Faces left out must keep looking as they did: give them an empty first slot.
        mesh.materials.append(None)
    mesh.materials.append(material)
    slot = len(mesh.materials) - 1
    count = len(mesh.polygons)
    indices = np.empty(count, dtype=np.int32)
    mesh.polygons.foreach_get("material_index", indices)
    chosen = np.ones(count, dtype=bool) if faces is None else np.asarray(faces, dtype=bool)
    indices[chosen] = slot
    mesh.polygons.foreach_set("material_index", indices)
    mesh.update()
    obj.active_material_index = slot
    return slot


# ---------------------------------------------------------------- projection

def camera_matrices(scene: bpy.types.Scene, depsgraph: Any, width: int,
                    height: int) -> tuple[list[list[float]], list[list[float]]]:
    """(view, projection) of the scene camera for an image of ``width`` x ``height``."""
    camera = require_camera(scene)
    view = camera.matrix_world.inverted()
    proj = camera.calc_matrix_camera(depsgraph, x=width, y=height)
    return [list(row) for row in view], [list(row) for row in proj]


def _mesh_arrays(obj: bpy.types.Object) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """World-space vertex positions, face centres, face normals, and loop vertex indices."""
    mesh = obj.data
    world = np.array(obj.matrix_world, dtype=np.float64)
    normal_matrix = np.linalg.inv(world[:3, :3]).T
    co = np.empty(len(mesh.vertices) * 3, dtype=np.float64)
    mesh.vertices.foreach_get("co", co)
    centers = np.empty(len(mesh.polygons) * 3, dtype=np.float64)
    mesh.polygons.foreach_get("center", centers)
    normals = np.empty(len(mesh.polygons) * 3, dtype=np.float64)
    mesh.polygons.foreach_get("normal", normals)
    loops = np.empty(len(mesh.loops), dtype=np.int64)
    mesh.loops.foreach_get("vertex_index", loops)

    def to_world(points: np.ndarray) -> np.ndarray:
        pts = points.reshape(-1, 3)
        return pts @ world[:3, :3].T + world[:3, 3]

    world_normals = normals.reshape(-1, 3) @ normal_matrix.T
    return to_world(co), to_world(centers), world_normals, loops


def add_projection_uvs(obj: bpy.types.Object, view: Sequence[Sequence[float]],
                       proj: Sequence[Sequence[float]]) -> str:
    """A new UV map holding every vertex's position in the camera image; returns its name."""
    mesh = obj.data
    if len(mesh.uv_layers) >= MAX_UV_MAPS:
        raise HostError(f"'{obj.name}' already has {MAX_UV_MAPS} UV maps, Blender's limit; "
                        "remove one to project onto it")
    vertices, _, _, loops = _mesh_arrays(obj)
    uvd = projection.project_to_uv(vertices, view, proj)
    layer = mesh.uv_layers.new(name=PROJECTION_UV_NAME, do_init=False)
    layer.data.foreach_set("uv", uvd[loops, :2].astype(np.float32).reshape(-1))
    return layer.name


def visible_faces(scene: bpy.types.Scene, depsgraph: Any, obj: bpy.types.Object,
                  view: Sequence[Sequence[float]], proj: Sequence[Sequence[float]],
                  size: tuple[int, int]) -> np.ndarray:
    """Boolean per polygon: faces the camera, its centre inside the frame, and no part of
    it hidden behind anything, for an image of ``size`` (width, height).

    A face is seen when its centre, its corners and, where it looks big in the image,
    points inside it at most SAMPLE_SPACING_PX apart are each reached by a ray cast from
    the camera through the scene as the viewport shows it: a face partly hidden near an
    occluder's silhouette gets nothing, rather than the occluder's pixels.
    """
    camera = require_camera(scene)
    vertices, centers, normals, loops = _mesh_arrays(obj)
    cam_world = np.array(camera.matrix_world, dtype=np.float64)
    origin, forward = cam_world[:3, 3], -cam_world[:3, 2]
    ortho = camera.data.type == "ORTHO"
    seen = projection.faces_toward_camera(centers, normals, origin, forward, ortho)
    seen &= projection.inside_frame(projection.project_to_uv(centers, view, proj))
    unhidden = functools.partial(_unhidden, scene, depsgraph, origin, forward, ortho)
    seen[seen] = unhidden(centers[seen])
    # Corners: each vertex of a face still in question, cast once.
    face_of_loop = _face_of_loop(obj.data)
    asked = seen[face_of_loop]
    corner_seen = np.ones(len(vertices), dtype=bool)
    wanted = np.unique(loops[asked])
    corner_seen[wanted] = unhidden(vertices[wanted])
    seen &= projection.faces_with_nothing_hidden(
        len(centers), face_of_loop[asked & ~corner_seen[loops]])
    # Inside faces that cover many pixels.
    tri_vertices, tri_faces = _loop_triangles(obj.data)
    keep = seen[tri_faces]
    corners = vertices[tri_vertices[keep]]
    corners_px = projection.project_to_uv(corners.reshape(-1, 3), view, proj)[:, :2] * size
    points, owner = projection.triangle_grid(
        corners, projection.grid_levels(corners_px.reshape(-1, 3, 2)))
    hidden = ~unhidden(points)
    return seen & projection.faces_with_nothing_hidden(
        len(centers), tri_faces[keep][owner[hidden]])


def _unhidden(scene: bpy.types.Scene, depsgraph: Any, origin: np.ndarray, forward: np.ndarray,
              orthographic: bool, points: np.ndarray) -> np.ndarray:
    """Boolean (N,): a ray from the camera reaches each point before anything else
    (False for points behind the camera)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    along = (pts - origin) @ forward
    starts = pts - np.outer(along, forward) if orthographic else np.broadcast_to(origin, pts.shape)
    rays = pts - starts
    dists = np.linalg.norm(rays, axis=1)
    ahead = (along > 0.0) & (dists > 0.0)
    hits = np.full(len(pts), np.inf)
    directions = rays / np.where(dists > 0.0, dists, 1.0)[:, None]
    for i in np.flatnonzero(ahead):
        start = tuple(starts[i])
        found, location, *_ = scene.ray_cast(depsgraph, start, tuple(directions[i]),
                                             distance=dists[i] * 1.01)
        if found:
            hits[i] = (mathutils.Vector(location) - mathutils.Vector(start)).length
    return ahead & projection.unoccluded(hits, dists)


def _face_of_loop(mesh: bpy.types.Mesh) -> np.ndarray:
    """The polygon each loop belongs to."""
    starts = np.empty(len(mesh.polygons), dtype=np.int64)
    totals = np.empty(len(mesh.polygons), dtype=np.int64)
    mesh.polygons.foreach_get("loop_start", starts)
    mesh.polygons.foreach_get("loop_total", totals)
    firsts = np.repeat(starts, totals)
    offsets = np.arange(int(totals.sum())) - np.repeat(np.cumsum(totals) - totals, totals)
    faces = np.zeros(len(mesh.loops), dtype=np.int64)
    faces[firsts + offsets] = np.repeat(np.arange(len(starts)), totals)
    return faces


def _loop_triangles(mesh: bpy.types.Mesh) -> tuple[np.ndarray, np.ndarray]:
    """The mesh's triangulation: (vertex indices (T, 3), polygon of each triangle (T,))."""
    mesh.calc_loop_triangles()
    count = len(mesh.loop_triangles)
    vertices = np.empty(count * 3, dtype=np.int64)
    mesh.loop_triangles.foreach_get("vertices", vertices)
    faces = np.empty(count, dtype=np.int64)
    mesh.loop_triangles.foreach_get("polygon_index", faces)
    return vertices.reshape(-1, 3), faces


def own_uv_map(obj: bpy.types.Object) -> Optional[str]:
    """The UV map the object renders with, other than a projection map; None if it has none."""
    layers = [layer for layer in obj.data.uv_layers
              if not layer.name.startswith(PROJECTION_UV_NAME)]
    for layer in layers:
        if layer.active_render:
            return layer.name
    return layers[0].name if layers else None


def bake_projection(obj: bpy.types.Object, image: bpy.types.Image, projection_uv: str,
                    faces: np.ndarray, name: str) -> bpy.types.Image:
    """A new image in the object's own UV layout holding the projected ``image`` on
    ``faces`` (transparent elsewhere); the object and its materials are not changed."""
    target_uv = own_uv_map(obj)
    if target_uv is None:
        raise HostError(f"'{obj.name}' has no UV map of its own to bake the projection into")
    mesh = obj.data
    mesh.calc_loop_triangles()
    count = len(mesh.loop_triangles)
    loops = np.empty(count * 3, dtype=np.int64)
    mesh.loop_triangles.foreach_get("loops", loops)
    polys = np.empty(count, dtype=np.int64)
    mesh.loop_triangles.foreach_get("polygon_index", polys)
    chosen = loops.reshape(-1, 3)[np.asarray(faces, dtype=bool)[polys]]

    def uvs(layer_name: str) -> np.ndarray:
        flat = np.empty(len(mesh.loops) * 2, dtype=np.float64)
        mesh.uv_layers[layer_name].data.foreach_get("uv", flat)
        return flat.reshape(-1, 2)[chosen]

    width, height = image.size
    source = float_pixels(image).reshape(height, width, 4)
    baked = projection.bake_triangles(uvs(target_uv), uvs(projection_uv), source[..., :3],
                                      width, height)
    result = new_image(name, width, height)
    result.pixels.foreach_set(baked.astype(np.float32).reshape(-1))
    result.update()
    return result
