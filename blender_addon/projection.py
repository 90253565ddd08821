"""Camera projection maths for texture projection. No Blender needed.

Blender hands over its matrices (camera world matrix, the camera's projection
matrix for the render size) as 4x4 nested sequences; these functions turn
world-space points into texture coordinates of the generated image and decide
which faces point at the camera. Occlusion needs the scene and is tested by
the host adapter with ray casts.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

Matrix = Sequence[Sequence[float]]


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
    cam = homo @ np.asarray(view, dtype=np.float64).T
    clip = cam @ np.asarray(projection, dtype=np.float64).T
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
    channels = src.shape[2]
    out = np.zeros((height, width, channels), dtype=np.float32)
    covered = np.zeros((height, width), dtype=bool)
    tgt = np.asarray(target_uv, dtype=np.float64) * (width, height)   # texel units
    srcuv = np.asarray(source_uv, dtype=np.float64)
    for tri, suv in zip(tgt, srcuv):
        lo = np.maximum(np.floor(tri.min(axis=0) - 0.5), 0).astype(int)
        hi = np.minimum(np.ceil(tri.max(axis=0) - 0.5), (width - 1, height - 1)).astype(int)
        if np.any(hi < lo):
            continue
        xs, ys = np.meshgrid(np.arange(lo[0], hi[0] + 1) + 0.5, np.arange(lo[1], hi[1] + 1) + 0.5)
        weights = _barycentric(tri, xs.ravel(), ys.ravel())
        if weights is None:
            continue   # degenerate in the target layout: covers no texel
        inside = np.all(weights >= -1e-9, axis=1)
        if not inside.any():
            continue
        w = weights[inside]
        uv = w @ suv
        cols = (xs.ravel()[inside] - 0.5).astype(int)
        rows = (ys.ravel()[inside] - 0.5).astype(int)
        out[rows, cols] = sample_bilinear(src, uv)
        covered[rows, cols] = True
    out, covered = _dilate(out, covered, padding)
    return np.concatenate([out, covered[..., None].astype(np.float32)], axis=2)


def _barycentric(tri: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray | None:
    a, b, c = tri
    m = np.array([[b[0] - a[0], c[0] - a[0]], [b[1] - a[1], c[1] - a[1]]])
    det = np.linalg.det(m)
    if abs(det) < 1e-12:
        return None
    inv = np.linalg.inv(m)
    rel = np.stack([xs - a[0], ys - a[1]])
    l2, l3 = inv @ rel
    return np.stack([1.0 - l2 - l3, l2, l3], axis=1)


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


def _dilate(values: np.ndarray, covered: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Grow covered regions by ``steps`` texels, each new texel the mean of covered neighbours."""
    values, covered = values.copy(), covered.copy()
    for _ in range(steps):
        total = np.zeros_like(values)
        count = np.zeros(covered.shape, dtype=np.float32)
        for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            shifted = np.roll(covered, (dy, dx), axis=(0, 1))
            vals = np.roll(values, (dy, dx), axis=(0, 1))
            # np.roll wraps around; the wrapped row/column must not count.
            if dy:
                shifted[0 if dy > 0 else -1, :] = False
            if dx:
                shifted[:, 0 if dx > 0 else -1] = False
            total += vals * shifted[..., None]
            count += shifted
        grow = ~covered & (count > 0)
        values[grow] = total[grow] / count[grow][:, None]
        covered = covered | grow
    return values, covered
