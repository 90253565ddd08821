"""Texture from Views in Blender: the objects' texels and what each view's pixels show.

An object's texels are the texels inside its UV layout, each with the place on the object
as it renders (modifiers applied) and the normal views are weighted by there; a view's
surface says which texel each of its pixels shows. Both are worked out in steps (each a
generator that yields between slices of its work) so Blender's main thread is never held
long (multiview_ops.ViewsRun runs them on the session's pump).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Generator

import bpy
import numpy as np

from . import host, multiview, projection

TEXEL_CHUNK = 1 << 16               # texels blended in one step of the pump (~25 ms here)
RASTER_STEP = 1 << 16               # candidate texels rasterised in one step


@dataclass(frozen=True)
class Mesh:
    """An object to texture, and the UV map it is textured in."""
    name: str
    uv_map: str


@dataclass
class Target:
    """One object being textured: its UV map and the texels inside its UV layout."""
    name: str
    uv_map: str
    inside: np.ndarray                    # (S, S) bool
    positions: np.ndarray                 # (n, 3) world, the inside texels in order
    normals: np.ndarray                   # (n, 3)
    corners: np.ndarray                   # (T, 3, 3) world, the mesh as it renders
    corner_uvs: np.ndarray                # (T, 3, 2)
    texel_index: np.ndarray               # (S, S): the inside texels' numbers, -1 outside
    color_sum: np.ndarray = field(init=False)
    weight_sum: np.ndarray = field(init=False)
    # Per view, what it gave (for its weight map and for a re-run of it): the texels it
    # colours (int32 indices into the inside texels), their weights and its colours there
    contributions: list = field(default_factory=list)
    texture: str = ""                     # the image made for it, once made
    material: str = ""

    def __post_init__(self) -> None:
        self.color_sum = np.zeros((len(self.positions), 3))
        self.weight_sum = np.zeros(len(self.positions))


def triangles(obj: bpy.types.Object, uv_map: str,
               depsgraph: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The object as it renders (modifiers applied), as triangles: corners in the world
    (T, 3, 3), in ``uv_map`` (T, 3, 2), and the surface's normals there (T, 3, 3; smooth
    faces: vertex normals; flat ones: multiview.weighting_normals)."""
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    try:
        layer = mesh.uv_layers.get(uv_map)
        if layer is None:
            raise host.HostError(f"'{obj.name}' loses its UV map '{uv_map}' in its modifiers")
        mesh.calc_loop_triangles()
        count = len(mesh.loop_triangles)
        loops = np.empty(count * 3, np.int64)
        mesh.loop_triangles.foreach_get("loops", loops)
        faces = np.empty(count, np.int64)
        mesh.loop_triangles.foreach_get("polygon_index", faces)
        uv = np.empty(len(mesh.loops) * 2, np.float64)
        layer.data.foreach_get("uv", uv)
        vertex_of_loop = np.empty(len(mesh.loops), np.int64)
        mesh.loops.foreach_get("vertex_index", vertex_of_loop)
        co = np.empty(len(mesh.vertices) * 3, np.float64)
        mesh.vertices.foreach_get("co", co)
        vnormal = np.empty(len(mesh.vertices) * 3, np.float64)
        mesh.vertices.foreach_get("normal", vnormal)
        fnormal = np.empty(len(mesh.polygons) * 3, np.float64)
        mesh.polygons.foreach_get("normal", fnormal)
        smooth = np.zeros(len(mesh.polygons), bool)
        with contextlib.suppress(AttributeError, RuntimeError, TypeError):
            mesh.polygons.foreach_get("use_smooth", smooth)
        area = np.empty(len(mesh.polygons), np.float64)
        mesh.polygons.foreach_get("area", area)
        loop_start = np.empty(len(mesh.polygons), np.int64)
        mesh.polygons.foreach_get("loop_start", loop_start)
        loop_total = np.empty(len(mesh.polygons), np.int64)
        mesh.polygons.foreach_get("loop_total", loop_total)
        world = np.array(evaluated.matrix_world, np.float64)
    finally:
        evaluated.to_mesh_clear()
    normal_matrix = np.linalg.inv(world[:3, :3]).T
    positions = co.reshape(-1, 3) @ world[:3, :3].T + world[:3, 3]
    vnormal = vnormal.reshape(-1, 3) @ normal_matrix.T
    fnormal = fnormal.reshape(-1, 3) @ normal_matrix.T
    fnormal /= np.maximum(np.linalg.norm(fnormal, axis=1), 1e-12)[:, None]
    # Flat faces are weighted by the surface they approximate (facets meeting at under
    # multiview.SMOOTH_ANGLE smoothed together), so views do not hand over at their edges
    face_of_loop = np.empty(len(vertex_of_loop), np.int64)
    within = np.arange(loop_total.sum()) - np.repeat(np.cumsum(loop_total) - loop_total,
                                                     loop_total)
    face_of_loop[np.repeat(loop_start, loop_total) + within] = \
        np.repeat(np.arange(len(loop_start)), loop_total)
    surface = multiview.weighting_normals(fnormal, area, face_of_loop, vertex_of_loop)
    corner_vertex = vertex_of_loop[loops]
    corner_face = np.repeat(faces, 3)
    corner_normal = np.where(smooth[corner_face][:, None], vnormal[corner_vertex],
                             surface[loops])
    return (positions[corner_vertex].reshape(-1, 3, 3), uv.reshape(-1, 2)[loops].reshape(-1, 3, 2),
            corner_normal.reshape(-1, 3, 3))


def texels_steps(mesh: Mesh, triangles: tuple, size: int) -> Generator[None, None, Target]:
    """The texels of an object's layout at ``size`` (``triangles`` from :func:`triangles`):
    where they lie in the world and which way the surface faces there; a step per batch of
    triangles and band of rows."""
    corners, uvs, normals = triangles
    attributes = np.concatenate([corners, normals], axis=2)
    inside = np.zeros((size, size), bool)
    data = np.empty((size, size, 6))
    band = max(1, TEXEL_CHUNK * 2 // size)
    for first in range(0, size, band):   # the memory is touched (and zeroed) in steps
        data[first:first + band] = 0.0
        yield
    for rows, cols, values in projection.raster_fragments(uvs, attributes, size, size,
                                                          batch=RASTER_STEP):
        data[rows, cols] = values
        inside[rows, cols] = True
        yield
    positions, texel_normals = [], []
    texel_index = np.empty((size, size), np.int64)
    count = 0
    band = max(1, TEXEL_CHUNK // size)
    for first in range(0, size, band):
        rows = slice(first, first + band)
        found = data[rows][inside[rows]]
        positions.append(found[:, :3])
        texel_normals.append(found[:, 3:] / np.maximum(
            np.linalg.norm(found[:, 3:], axis=1), 1e-12)[:, None])
        numbers = np.full(inside[rows].shape, -1, np.int64)
        numbers[inside[rows]] = np.arange(count, count + len(found))
        texel_index[rows] = numbers
        count += len(found)
        yield
    return Target(mesh.name, mesh.uv_map, inside, np.concatenate(positions),
                   np.concatenate(texel_normals), corners, uvs, texel_index)


def surface_steps(targets: list[Target], geometry: multiview.ViewGeometry
                   ) -> Generator[None, None, tuple[np.ndarray, np.ndarray]]:
    """Which target texel each pixel of the view shows (nearest triangle, and not hidden
    by anything the depth pass shows in front): (object index, texel index), -1 none; a
    step per batch of triangles."""
    w, h = geometry.width, geometry.height
    frags_rows, frags_cols, frags_depth, frags_obj, frags_texel = [], [], [], [], []
    for index, target in enumerate(targets):
        uvd = projection.project_to_uv(target.corners.reshape(-1, 3), geometry.view,
                                       geometry.projection)
        ahead = (uvd[:, 2].reshape(-1, 3) > 0).all(axis=1)
        tex = target.corner_uvs[ahead]
        corners = uvd.reshape(-1, 3, 3)[ahead]
        # Perspective-correct: what varies linearly across the image is attribute / depth
        # (and 1 / depth); an orthographic image keeps attributes linear as they are.
        scale = np.ones_like(corners[:, :, 2:]) if geometry.orthographic \
            else 1.0 / corners[:, :, 2:]
        attributes = np.concatenate([tex * scale, scale, corners[:, :, 2:] * scale], axis=2)
        texel_index = target.texel_index
        size = target.inside.shape[0]
        for rows, cols, values in projection.raster_fragments(corners[:, :, :2], attributes,
                                                              w, h, batch=RASTER_STEP):
            values = values / values[:, 2:3]        # (u, v, 1, depth)
            trow = np.clip((values[:, 1] * size).astype(np.int64), 0, size - 1)
            tcol = np.clip((values[:, 0] * size).astype(np.int64), 0, size - 1)
            frags_rows.append(rows)
            frags_cols.append(cols)
            frags_depth.append(values[:, 3])
            frags_obj.append(np.full(len(rows), index))
            frags_texel.append(texel_index[trow, tcol])
            yield
    objects_at = np.full((h, w), -1, np.int64)
    texel_at = np.full((h, w), -1, np.int64)
    if not frags_rows:
        return objects_at, texel_at
    rows, cols = np.concatenate(frags_rows), np.concatenate(frags_cols)
    depth, texel = np.concatenate(frags_depth), np.concatenate(frags_texel)
    owner = np.concatenate(frags_obj)
    nearest = multiview.nearest_surface(rows, cols, depth, w, h)
    hit = nearest >= 0
    chosen = nearest[hit]
    shown = geometry.depth[hit]
    visible = (depth[chosen] <= shown * (1 + 4 * multiview.DEPTH_SLACK) + 1e-4) \
        & (texel[chosen] >= 0)
    objects_at[hit] = np.where(visible, owner[chosen], -1)
    texel_at[hit] = np.where(visible, texel[chosen], -1)
    return objects_at, texel_at
