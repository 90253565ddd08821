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
