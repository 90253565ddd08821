"""Camera projection maths for texture projection. No Blender needed.

Blender hands over its matrices (camera world matrix, the camera's projection
matrix for the render size) as 4x4 nested sequences; these functions turn
world-space points into texture coordinates of the generated image, decide
which faces point at the camera and where on a face to test whether it is seen.
Occlusion needs the scene and is tested by the host adapter with ray casts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generator, Iterator, Literal, Sequence

import numpy as np

Matrix = Sequence[Sequence[float]]
RASTER_BATCH = 1 << 20   # candidate texels the baker tests in one vectorised step
# The 3D Viewport frames its view like a camera with a 36 mm sensor at zoom 2
# (Blender's CAMERA_PARAM_ZOOM_INIT_PERSP), i.e. a 72 mm sensor, fitted to the
# region's longer side.
VIEWPORT_SENSOR = 72.0
# A camera cannot start clipping at 0 or behind itself; an orthographic view can
# (it clips from -clip_end/2 to +clip_end/2 around its origin).
MIN_CLIP_START = 1e-4
# Visibility is tested at each face's centre and corners, and inside faces that look big in
# the image at points at most this many pixels apart (up to MAX_GRID steps along an edge).
SAMPLE_SPACING_PX = 16.0
MAX_GRID = 8


@dataclass(frozen=True)
class ViewCamera:
    """Camera settings that see what a 3D Viewport region shows, in an image of another size.

    ``sensor_fit`` names the image side that spans ``sensor_size`` (perspective)
    or ``ortho_scale`` (orthographic), as Blender's camera data fields do.
    """
    matrix_world: tuple[tuple[float, ...], ...]
    orthographic: bool
    lens: float
    sensor_fit: Literal["HORIZONTAL", "VERTICAL"]
    sensor_size: float
    ortho_scale: float
    clip_start: float
    clip_end: float


def camera_for_view(view_matrix: Matrix, *, orthographic: bool, lens: float,
                    clip_start: float, clip_end: float, view_distance: float,
                    region_size: tuple[int, int], image_size: tuple[int, int]) -> ViewCamera:
    """The camera that frames a viewport's view (``RegionView3D.view_matrix``, the
    space's lens and clip range, the region's pixel size) in an image of ``image_size``.

    The image keeps the region's centre and covers all of the region: where the
    aspects differ it shows more than the region along one side.
    """
    view = np.asarray(view_matrix, dtype=np.float64).reshape(4, 4)
    if lens <= 0.0:
        raise ValueError(f"viewport lens must be positive, got {lens}")
    if not 0.0 <= clip_start < clip_end:
        raise ValueError(f"viewport clip range must satisfy 0 <= start < end, "
                         f"got {clip_start}..{clip_end}")
    (rw, rh), (iw, ih) = region_size, image_size
    if min(rw, rh, iw, ih) <= 0:
        raise ValueError(f"region {region_size} and image {image_size} need positive sizes")
    if abs(np.linalg.det(view[:3, :3])) < 1e-12:
        raise ValueError("viewport view matrix is singular")
    world = np.linalg.inv(view)
    # What the region shows along its longer side, in sensor millimetres
    # (perspective) or scene units (orthographic, Blender's ED_view3d ortho scale).
    longer = VIEWPORT_SENSOR * (view_distance / lens if orthographic else 1.0)
    region_x = longer * min(1.0, rw / rh)
    region_y = longer * min(1.0, rh / rw)
    # A wider image than the region matches heights (and shows more at the sides).
    fit, extent = (("VERTICAL", region_y) if iw / ih >= rw / rh else ("HORIZONTAL", region_x))
    if orthographic:
        # Move back by half the range so the camera clips from 0 where the view clips
        # from -clip_end/2; an orthographic image does not change along the view axis.
        half = clip_end / 2.0
        world = world @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, half], [0, 0, 0, 1.0]])
        clip_start, clip_end = MIN_CLIP_START, clip_end
    else:
        clip_start = max(clip_start, MIN_CLIP_START)
    return ViewCamera(matrix_world=tuple(tuple(float(x) for x in row) for row in world),
                      orthographic=orthographic, lens=float(lens), sensor_fit=fit,
                      sensor_size=float(extent) if not orthographic else VIEWPORT_SENSOR / 2,
                      ortho_scale=float(extent) if orthographic else 1.0,
                      clip_start=float(clip_start), clip_end=float(clip_end))


def project_to_uv(points: np.ndarray, view: Matrix, projection: Matrix) -> np.ndarray:
    """World points (N, 3) -> (N, 3) of (u, v, camera-space depth).

    ``view`` is the inverse of the camera's world matrix, ``projection`` the
    camera's projection matrix for the image's aspect. (0, 0) is the image's
    bottom-left corner and (1, 1) its top-right, the way Blender's UVs and
    ``bpy_extras.object_utils.world_to_camera_view`` count. Depth is the
    distance in front of the camera along its view axis (negative behind it).
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    homo = np.concatenate([pts, np.ones((len(pts), 1))], axis=1)
    # einsum, not @: a tall (N, 4) x (4, 4) product through BLAS threads took seconds for
    # a 2k texture's texels on a loaded machine, einsum a tenth of a second
    cam = np.einsum("ij,kj->ik", homo, np.asarray(view, dtype=np.float64))
    clip = np.einsum("ij,kj->ik", cam, np.asarray(projection, dtype=np.float64))
    w = clip[:, 3:4]
    safe_w = np.where(np.abs(w) < 1e-12, 1e-12, w)
    ndc = clip[:, :2] / safe_w
    uv = (ndc + 1.0) * 0.5
    return np.concatenate([uv, -cam[:, 2:3]], axis=1)


def faces_toward_camera(centers: np.ndarray, normals: np.ndarray, camera_origin: Sequence[float],
                        camera_forward: Sequence[float], orthographic: bool) -> np.ndarray:
    """Boolean (N,) for faces whose front side sees the camera.

    Perspective cameras look along the ray from the camera to the face;
    orthographic ones along their forward axis.
    """
    c = np.asarray(centers, dtype=np.float64).reshape(-1, 3)
    n = np.asarray(normals, dtype=np.float64).reshape(-1, 3)
    if orthographic:
        rays = np.broadcast_to(np.asarray(camera_forward, dtype=np.float64), c.shape)
    else:
        rays = c - np.asarray(camera_origin, dtype=np.float64)
    return np.einsum("ij,ij->i", rays, n) < 0.0


def inside_frame(uvd: np.ndarray) -> np.ndarray:
    """Boolean (N,) for projected points in front of the camera and inside its frame."""
    u, v, d = uvd[:, 0], uvd[:, 1], uvd[:, 2]
    return (d > 0.0) & (u >= 0.0) & (u <= 1.0) & (v >= 0.0) & (v <= 1.0)


def unoccluded(hit_distances: np.ndarray, face_distances: np.ndarray,
               tolerance: float = 1e-3) -> np.ndarray:
    """Boolean (N,): a ray from the camera to each face centre hit nothing before it.

    ``hit_distances`` holds the first hit along each ray (``inf`` for no hit);
    the tolerance is relative to the face's distance, to absorb float error
    where the ray hits the face itself.
    """
    hits = np.asarray(hit_distances, dtype=np.float64)
    faces = np.asarray(face_distances, dtype=np.float64)
    return hits >= faces * (1.0 - tolerance)


def grid_levels(corners_px: np.ndarray, spacing: float = SAMPLE_SPACING_PX,
                most: int = MAX_GRID) -> np.ndarray:
    """Steps per edge (1..``most``) for sampling triangles (T, 3, 2) given in image pixels,
    so that samples lie at most ``spacing`` pixels apart along the longest edge."""
    px = np.asarray(corners_px, dtype=np.float64).reshape(-1, 3, 2)
    longest = np.linalg.norm(px - np.roll(px, 1, axis=1), axis=2).max(axis=1)
    return np.clip(np.ceil(longest / spacing), 1, most).astype(np.int64)


def triangle_grid(corners: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points on a grid of ``levels[t]`` steps per edge over each triangle (T, 3, 3), its
    corners left out (they are tested as vertices): (points (M, 3), triangle of each (M,))."""
    tri = np.asarray(corners, dtype=np.float64).reshape(-1, 3, 3)
    levels = np.asarray(levels, dtype=np.int64)
    points, owners = [np.zeros((0, 3))], [np.zeros(0, dtype=np.int64)]
    for k in np.unique(levels[levels >= 2]):
        i, j = (a.ravel() for a in np.meshgrid(np.arange(k + 1), np.arange(k + 1),
                                               indexing="ij"))
        corner = ((i == 0) & (j == 0)) | (i == k) | (j == k)
        keep = (i + j <= k) & ~corner
        a, b = i[keep] / k, j[keep] / k
        weights = np.stack([1.0 - a - b, a, b], axis=1)            # (G, 3)
        ids = np.flatnonzero(levels == k)
        points.append(np.einsum("gc,tcx->tgx", weights, tri[ids]).reshape(-1, 3))
        owners.append(np.repeat(ids, len(weights)))
    return np.concatenate(points), np.concatenate(owners)


def faces_with_nothing_hidden(face_count: int, hidden_faces: np.ndarray) -> np.ndarray:
    """Boolean (face_count,): True for faces none of whose samples is hidden;
    ``hidden_faces`` holds the face of every hidden sample (repeats allowed)."""
    hidden = np.asarray(hidden_faces, dtype=np.int64)
    return np.bincount(hidden, minlength=face_count)[:face_count] == 0


def bake_triangles(target_uv: np.ndarray, source_uv: np.ndarray, source: np.ndarray,
                   width: int, height: int, padding: int = 2) -> np.ndarray:
    """Resample a projected image into another UV layout.

    ``target_uv`` and ``source_uv`` are (T, 3, 2): each triangle's corners in the
    layout to bake into and in the projected image. ``source`` is (H, W, C) in
    Blender's row order (row 0 at v = 0). Returns (height, width, C + 1): the
    sampled channels plus a coverage channel (1 where a triangle covers the texel,
    also ``padding`` texels around islands so filtering does not pull in the
    empty background at UV seams).
    """
    src = np.asarray(source, dtype=np.float32)
    out = np.zeros((height, width, src.shape[2]), dtype=np.float32)
    covered = np.zeros((height, width), dtype=bool)
    for rows, cols, uv in raster_fragments(target_uv, source_uv, width, height):
        out[rows, cols] = sample_bilinear(src, uv)
        covered[rows, cols] = True
    out, covered = pad_islands(out, covered, padding)
    return np.concatenate([out, covered[..., None].astype(np.float32)], axis=2)


def raster_fragments(target_uv: np.ndarray, attributes: np.ndarray, width: int,
                     height: int, batch: int = RASTER_BATCH
                     ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Rasterise triangles given in a 0..1 layout (``target_uv`` (T, 3, 2)) into a
    ``width`` x ``height`` grid (row 0 at v = 0), interpolating each corner's
    ``attributes`` (T, 3, K) linearly: yields (rows, cols, values (M, K)) per batch of
    triangles. A texel whose centre lies in two triangles comes once for each."""
    tgt = np.asarray(target_uv, dtype=np.float64).reshape(-1, 3, 2) * (width, height)
    values = np.asarray(attributes, dtype=np.float64)
    values = values.reshape(len(tgt), 3, -1)
    # Texel i has its centre at i + 0.5: a triangle's candidate texels lie in [lo, hi].
    lo = np.maximum(np.ceil(tgt.min(axis=1) - 0.5), 0).astype(np.int64)
    hi = np.minimum(np.floor(tgt.max(axis=1) - 0.5), (width - 1, height - 1)).astype(np.int64)
    extent = (hi - lo + 1).max(axis=1)
    keep = np.all(hi >= lo, axis=1)
    # Triangles of similar size are rasterised together over a square of candidates.
    tile = (2 ** np.ceil(np.log2(np.maximum(extent, 1)))).astype(np.int64)
    for size in np.unique(tile[keep]):
        group = np.flatnonzero(keep & (tile == size))
        chunk = max(1, batch // int(size * size))
        for first in range(0, len(group), chunk):
            ids = group[first:first + chunk]
            yield _rasterize(tgt[ids], values[ids], lo[ids], hi[ids], int(size))


def pad_islands(values: np.ndarray, covered: np.ndarray,
                steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Grow the covered texels of ``values`` (H, W, C) by ``steps`` texels (UV padding, so
    mip-mapping pulls no empty background into islands); (values, covered) copies."""
    growing = _dilate(np.array(values, dtype=np.float32), np.array(covered, dtype=bool), steps)
    while True:
        try:
            next(growing)
        except StopIteration as done:
            return done.value


def padding_steps(values: np.ndarray, covered: np.ndarray, steps: int, copy: bool = True
                  ) -> Generator[None, None, tuple[np.ndarray, np.ndarray]]:
    """:func:`pad_islands` a step at a time (it yields after each ring of texels it adds,
    for callers that must not hold a thread long); returns (values, covered). ``copy``
    False grows float32 ``values`` and ``covered`` in place (a 2k texture's copy alone
    holds the thread for tens of ms)."""
    values = np.asarray(values, dtype=np.float32)
    covered = np.asarray(covered, dtype=bool)
    if copy:
        values, covered = values.copy(), covered.copy()
        yield
    return (yield from _dilate(values, covered, steps))


def _rasterize(tri: np.ndarray, suv: np.ndarray, lo: np.ndarray, hi: np.ndarray,
               size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texels (rows, cols) whose centres lie in each triangle, and their source UVs."""
    count = len(tri)
    offsets = np.arange(size)
    cols = np.broadcast_to(lo[:, 0, None, None] + offsets[None, None, :], (count, size, size))
    rows = np.broadcast_to(lo[:, 1, None, None] + offsets[None, :, None], (count, size, size))
    cols, rows = cols.reshape(count, -1), rows.reshape(count, -1)
    a, e1, e2 = tri[:, 0], tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    ok = np.abs(det) > 1e-12                 # degenerate triangles cover no texel
    safe = np.where(ok, det, 1.0)[:, None]
    px = cols + 0.5 - a[:, 0, None]
    py = rows + 0.5 - a[:, 1, None]
    l2 = (px * e2[:, 1, None] - py * e2[:, 0, None]) / safe
    l3 = (py * e1[:, 0, None] - px * e1[:, 1, None]) / safe
    l1 = 1.0 - l2 - l3
    eps = -1e-9
    inside = ((l1 >= eps) & (l2 >= eps) & (l3 >= eps) & ok[:, None]
              & (cols <= hi[:, 0, None]) & (rows <= hi[:, 1, None]))
    t, k = np.nonzero(inside)
    uv = l1[t, k, None] * suv[t, 0] + l2[t, k, None] * suv[t, 1] + l3[t, k, None] * suv[t, 2]
    return rows[t, k], cols[t, k], uv


def sample_bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Sample (H, W, C) at UVs (N, 2), texel centres at (i + 0.5) / size, edges clamped."""
    h, w = image.shape[:2]
    x = np.clip(uv[:, 0] * w - 0.5, 0, w - 1)
    y = np.clip(uv[:, 1] * h - 0.5, 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _dilate(values: np.ndarray, covered: np.ndarray,
            steps: int) -> Generator[None, None, tuple[np.ndarray, np.ndarray]]:
    """Grow covered regions by ``steps`` texels, each new texel the mean of covered neighbours.

    Only the ring of texels each step adds is computed (a 2k texture's full-array dilation
    took about a second a step here). Grows ``values`` and ``covered`` in place; yields
    before each ring."""
    h, w = covered.shape
    for _ in range(steps):
        yield
        grown = covered.copy()
        grown[1:] |= covered[:-1]
        grown[:-1] |= covered[1:]
        grown[:, 1:] |= covered[:, :-1]
        grown[:, :-1] |= covered[:, 1:]
        rows, cols = np.nonzero(grown & ~covered)
        if not len(rows):
            break
        total = np.zeros((len(rows),) + values.shape[2:], dtype=values.dtype)
        count = np.zeros(len(rows), dtype=np.float32)
        for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            r, c = rows + dy, cols + dx
            ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            r, c = np.where(ok, r, 0), np.where(ok, c, 0)
            ok &= covered[r, c]
            total += values[r, c] * ok.reshape((-1,) + (1,) * (values.ndim - 2))
            count += ok
        values[rows, cols] = total / count.reshape((-1,) + (1,) * (values.ndim - 2))
        covered[rows, cols] = True
    return values, covered
