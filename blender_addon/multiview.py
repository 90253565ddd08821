"""Texturing an object from many views into its own UVs: the maths. No Blender needed.

Where the views stand (an orbit around the objects' bounding sphere, plus top and bottom),
how much each view is trusted at each texel (visibility from the view's depth pass x the
angle between the surface normal and the view direction, falling smoothly to 0 at a
threshold angle, x a feather near depth edges), how the views' colours blend in UV space,
and which pixels of a later view are to be repainted (its texels not yet seen well).

Conventions: UV-space arrays are (H, W, ...) with row 0 at v = 0 (Blender's pixel order);
view-space arrays too (row 0 at the image's bottom), turned top-first only for uploads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from . import projection

# Defaults an artist gets: trust a view fully up to 55 degrees off the surface normal,
# fading to nothing at 75 (the threshold).
MAX_ANGLE = 75.0
FEATHER_ANGLE = 20.0
FRAME_MARGIN = 1.1         # the bounding sphere fills this much less than the frame
EDGE_FEATHER_PX = 4        # pixels over which a view's weight rises from a depth edge
EDGE_FLOOR = 0.05          # the weight left at a depth edge (a texel only one view sees)
DEPTH_JUMP = 0.05          # a neighbour this much (relative) nearer or farther: an edge
DEPTH_SLACK = 0.005        # relative depth error allowed in the occlusion test
SEEN_WEIGHT = 0.5          # texels with less summed weight are repainted by a later view


@dataclass(frozen=True)
class ViewPose:
    """A camera placed by :func:`orbit_views`: its name and 4x4 world matrix (looks down
    its -Z, +Y up, as Blender's cameras)."""
    name: str
    matrix_world: tuple[tuple[float, ...], ...]


def look_at(eye: Sequence[float], target: Sequence[float],
            up: Sequence[float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """The 4x4 world matrix of a camera at ``eye`` looking at ``target``, its image's up
    towards ``up`` (world +Y when looking straight along ``up``)."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    forward = target - eye
    if np.linalg.norm(forward) < 1e-12:
        raise ValueError("a camera cannot look at the point it stands on")
    forward /= np.linalg.norm(forward)
    up = np.asarray(up, float)
    if abs(float(np.dot(forward, up / np.linalg.norm(up)))) > 0.999:
        up = np.array([0.0, 1.0, 0.0]) if forward[2] < 0 else np.array([0.0, -1.0, 0.0])
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    true_up = np.cross(right, forward)
    matrix = np.eye(4)
    matrix[:3, 0], matrix[:3, 1], matrix[:3, 2], matrix[:3, 3] = right, true_up, -forward, eye
    return matrix


def fit_distance(radius: float, lens: float, sensor: float, width: int, height: int,
                 margin: float = FRAME_MARGIN) -> float:
    """How far a camera (``lens`` and ``sensor`` in mm, sensor across the longer side, as
    Blender's AUTO fit) stands from a sphere of ``radius`` to frame it whole."""
    if radius <= 0 or lens <= 0 or sensor <= 0:
        raise ValueError(f"radius, lens and sensor must be positive: {radius}, {lens}, {sensor}")
    half = math.atan(sensor / 2.0 / lens * min(width, height) / max(width, height))
    return radius * margin / math.sin(half)


def orbit_views(center: Sequence[float], distance: float, count: int, elevation: float,
                top: bool = True, bottom: bool = False) -> list[ViewPose]:
    """``count`` cameras evenly around ``center`` at ``distance``, ``elevation`` degrees
    above its horizon (the first in front, at -Y, as Blender's Front view), then one
    straight above and one straight below when asked; all look at ``center``."""
    if count < 0 or (count == 0 and not top and not bottom):
        raise ValueError(f"no views: orbit count {count}, top {top}, bottom {bottom}")
    if not -90.0 < elevation < 90.0:
        raise ValueError(f"orbit elevation must lie between -90 and 90 degrees, got {elevation}")
    if distance <= 0:
        raise ValueError(f"camera distance must be positive, got {distance}")
    c = np.asarray(center, float)
    el = math.radians(elevation)
    poses = []
    for i in range(count):
        az = math.radians(-90.0 + 360.0 * i / count)
        eye = c + distance * np.array([math.cos(el) * math.cos(az),
                                       math.cos(el) * math.sin(az), math.sin(el)])
        poses.append(ViewPose(f"Orbit {i + 1}", _rows(look_at(eye, c))))
    if top:
        poses.append(ViewPose("Top", _rows(look_at(c + (0, 0, distance), c))))
    if bottom:
        poses.append(ViewPose("Bottom", _rows(look_at(c - (0, 0, distance), c))))
    return poses


def _rows(matrix: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(x) for x in row) for row in matrix)


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((np.asarray(x, float) - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def angle_weights(cos_angle: np.ndarray, max_angle: float = MAX_ANGLE,
                  feather: float = FEATHER_ANGLE) -> np.ndarray:
    """How much a view is trusted where it sees a surface at an angle whose cosine is
    ``cos_angle`` (surface normal . direction to the camera): cos(angle), times a
    smoothstep from 1 at ``max_angle - feather`` degrees to 0 at ``max_angle``; 0 beyond
    it and for back faces."""
    if not 0.0 < max_angle <= 90.0 or not 0.0 < feather <= max_angle:
        raise ValueError(f"need 0 < feather ({feather}) <= max angle ({max_angle}) <= 90")
    cos_angle = np.clip(np.asarray(cos_angle, float), -1.0, 1.0)
    angle = np.degrees(np.arccos(cos_angle))
    return np.where(cos_angle > 0.0,
                    cos_angle * smoothstep(max_angle, max_angle - feather, angle), 0.0)


def edge_feather(depth: np.ndarray, steps: int = EDGE_FEATHER_PX, floor: float = EDGE_FLOOR,
                 jump: float = DEPTH_JUMP) -> np.ndarray:
    """(H, W) in [``floor``, 1]: ``floor`` on pixels at a depth edge (a neighbour more than
    ``jump`` nearer or farther, relatively) or the frame's border, rising linearly to 1
    ``steps`` pixels (4-neighbour steps) away, so views meet without a cut where one of
    them sees past a silhouette."""
    d = np.asarray(depth, float)
    edge = np.zeros(d.shape, bool)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    for axis in (0, 1):
        a = np.take(d, np.arange(d.shape[axis] - 1), axis=axis)
        b = np.take(d, np.arange(1, d.shape[axis]), axis=axis)
        step = np.abs(a - b) > jump * np.minimum(a, b)
        lead = [(0, 0), (0, 0)]
        lead[axis] = (0, 1)
        trail = [(0, 0), (0, 0)]
        trail[axis] = (1, 0)
        edge |= np.pad(step, lead) | np.pad(step, trail)
    distance = np.where(edge, 0.0, np.inf)
    reached = edge.copy()
    for k in range(1, steps + 1):
        grown = reached.copy()
        grown[1:] |= reached[:-1]
        grown[:-1] |= reached[1:]
        grown[:, 1:] |= reached[:, :-1]
        grown[:, :-1] |= reached[:, 1:]
        distance[grown & ~reached] = k
        reached = grown
    return floor + (1.0 - floor) * np.clip(distance / max(steps, 1), 0.0, 1.0)


@dataclass(frozen=True)
class ViewGeometry:
    """One view: world-to-camera ``view`` and ``projection`` matrices, image size, the
    camera's place (``origin``) and the Z pass (H, W) bottom row first (1e10 where
    nothing is)."""
    view: np.ndarray
    projection: np.ndarray
    width: int
    height: int
    origin: np.ndarray
    depth: np.ndarray
    orthographic: bool = False
    forward: Optional[np.ndarray] = None
    # The passes were rendered this many times smaller and ``depth`` enlarged to width x
    # height: each of its pixels stands for pass_scale x pass_scale of the view's
    pass_scale: int = 1


def enlarge_nearest(small: np.ndarray, height: int, width: int) -> np.ndarray:
    """A pass rendered smaller (h, W, ...) as (``height``, ``width``, ...): each pixel takes
    the value of the small pixel it lies in (no blending across depth edges)."""
    small = np.asarray(small)
    rows = np.minimum(np.arange(height) * small.shape[0] // height, small.shape[0] - 1)
    cols = np.minimum(np.arange(width) * small.shape[1] // width, small.shape[1] - 1)
    return small[rows][:, cols]


def texel_weights(positions: np.ndarray, normals: np.ndarray, geometry: ViewGeometry,
                  max_angle: float = MAX_ANGLE, feather: float = FEATHER_ANGLE,
                  feather_px: int = EDGE_FEATHER_PX,
                  feather_map: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """How much the view is trusted at each texel (world ``positions`` and unit
    ``normals`` (N, 3)): 0 outside its frame, behind it, or hidden (the texel lies
    farther than what its depth pass shows there), else :func:`angle_weights` x
    :func:`edge_feather` (``feather_map``: the view's, when already worked out).
    Returns (weights (N,), the texels' (u, v) in the view (N, 2))."""
    pts = np.asarray(positions, float).reshape(-1, 3)
    nrm = np.asarray(normals, float).reshape(-1, 3)
    if geometry.orthographic and geometry.forward is not None:
        to_camera = np.broadcast_to(-np.asarray(geometry.forward, float), pts.shape)
    else:
        to_camera = geometry.origin - pts
        to_camera = to_camera / np.maximum(np.linalg.norm(to_camera, axis=1), 1e-12)[:, None]
    cos_angle = np.einsum("ij,ij->i", nrm, to_camera)
    weights = np.zeros(len(pts))
    view_uv = np.zeros((len(pts), 2))
    # Only texels the angle lets the view colour are projected and tested (about a third
    # of a closed surface's).
    some = np.flatnonzero(cos_angle > math.cos(math.radians(max_angle)))
    cos_angle = cos_angle[some]
    weight = angle_weights(cos_angle, max_angle, feather)
    uvd = projection.project_to_uv(pts[some], geometry.view, geometry.projection)
    inside = projection.inside_frame(uvd)
    h, w = geometry.depth.shape
    col = np.clip((uvd[:, 0] * w).astype(np.int64), 0, w - 1)
    row = np.clip((uvd[:, 1] * h).astype(np.int64), 0, h - 1)
    shown = geometry.depth[row, col]
    # The pass holds each pixel centre's depth: a slanted surface's texel may lie up to
    # about a pixel's footprint x tan(angle) behind it and still be that surface.
    footprint = 2.0 * uvd[:, 2] * geometry.pass_scale / (abs(float(geometry.projection[0][0])) * w)
    tangent = np.sqrt(np.maximum(1.0 - cos_angle * cos_angle, 0.0)) / cos_angle
    slack = DEPTH_SLACK * uvd[:, 2] + footprint * (1.0 + tangent)
    visible = inside & (uvd[:, 2] <= shown + slack)
    weight = np.where(visible, weight, 0.0)
    if feather_map is None:
        feather_map = edge_feather(geometry.depth, feather_px)
    # Bilinear, not the nearest pixel's: the feather would step a pixel at a time, a cut
    # between texels where a view hands over to another
    weight *= projection.sample_bilinear(np.asarray(feather_map, float)[..., None],
                                         uvd[:, :2])[:, 0]
    weights[some] = weight
    view_uv[some] = uvd[:, :2]
    return weights, view_uv


def blend(color_sums: np.ndarray, weight_sums: np.ndarray,
          min_weight: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """The blended colours (..., C) (sum of weight x colour over the sum of weights) and
    the covered mask (some view has weight there); uncovered texels are 0."""
    wsum = np.asarray(weight_sums, float)
    covered = wsum > min_weight
    colors = np.where(covered[..., None],
                      np.asarray(color_sums, float) / np.where(covered, wsum, 1.0)[..., None],
                      0.0)
    return colors, covered


def repaint_mask(seen_weight: np.ndarray, surface: np.ndarray,
                 threshold: float = SEEN_WEIGHT) -> np.ndarray:
    """A view's inpaint mask (H, W) uint8, 255 = repaint: its pixels whose texel the views
    so far saw with a summed weight under ``threshold`` (uncovered or only grazed), and
    the pixels showing no target surface (``surface`` False); 0 where it is known."""
    repaint = ~np.asarray(surface, bool) | (np.asarray(seen_weight, float) < threshold)
    return np.where(repaint, 255, 0).astype(np.uint8)


def nearest_surface(rows: np.ndarray, cols: np.ndarray, depth: np.ndarray, width: int,
                    height: int) -> np.ndarray:
    """Among fragments (``rows``, ``cols``, ``depth`` (M,)), the index of the nearest at
    each pixel: (height, width) int64, -1 where no fragment fell."""
    pixel = np.asarray(rows, np.int64) * width + np.asarray(cols, np.int64)
    order = np.lexsort((np.asarray(depth, float), pixel))
    first = np.ones(len(order), bool)
    first[1:] = pixel[order][1:] != pixel[order][:-1]
    winner = np.full(width * height, -1, np.int64)
    winner[pixel[order][first]] = order[first]
    return winner.reshape(height, width)


# The orders views can be generated in (the first generates freely, the later ones inpaint
# what those before them left): as listed, the one facing the objects' front (Blender's
# Front view, from -Y) first and then by their angle from it, or greedily the one that
# adds the most texels not yet seen well.
VIEW_ORDERS = ("LISTED", "FRONT", "COVERAGE")
FRONT = (0.0, -1.0, 0.0)


def front_first(origins: np.ndarray, center: Sequence[float]) -> list[int]:
    """The views (cameras standing at ``origins`` (V, 3)) by the angle between where they
    stand, seen from ``center``, and the front: the front first, the back last; equal
    angles keep their listed order."""
    away = np.asarray(origins, float) - np.asarray(center, float)
    away /= np.maximum(np.linalg.norm(away, axis=1), 1e-12)[:, None]
    cosine = np.round(away @ np.asarray(FRONT), 9)
    return [int(i) for i in np.argsort(-cosine, kind="stable")]


def coverage_first(weights: np.ndarray, threshold: float = SEEN_WEIGHT) -> list[int]:
    """The views greedily by what each adds: ``weights`` (V, N) is how much each view is
    trusted at N sample texels; next comes the view whose weights fill most of what the
    views so far leave under ``threshold`` (ties: the one listed first)."""
    weights = np.asarray(weights, float)
    seen = np.zeros(weights.shape[1])
    left = list(range(len(weights)))
    order = []
    while left:
        wanting = np.maximum(threshold - seen, 0.0)
        gains = [float(np.minimum(weights[v], wanting).sum()) for v in left]
        best = left[int(np.argmax(gains))]
        order.append(best)
        left.remove(best)
        seen += weights[best]
    return order


def order_views(how: str, *, origins: Optional[np.ndarray] = None,
                center: Optional[Sequence[float]] = None,
                weights: Optional[np.ndarray] = None, count: Optional[int] = None,
                threshold: float = SEEN_WEIGHT) -> list[int]:
    """The order to generate views in, ``how`` one of VIEW_ORDERS (FRONT needs the views'
    ``origins`` and the objects' ``center``; COVERAGE their sample ``weights``)."""
    if how == "LISTED":
        if count is None:
            raise ValueError("the listed order needs the count of views")
        return list(range(count))
    if how == "FRONT":
        if origins is None or center is None:
            raise ValueError("front-first needs the views' origins and the objects' centre")
        return front_first(origins, center)
    if how == "COVERAGE":
        if weights is None:
            raise ValueError("most-coverage-first needs the views' weights")
        return coverage_first(weights, threshold)
    raise ValueError(f"view order must be one of {', '.join(VIEW_ORDERS)}, got {how!r}")


# Faces meeting at up to this many degrees are one surface for the views' weights (as
# Blender's Auto Smooth does for shading): a flat-shaded approximation of a smooth surface
# is weighted by the surface's normals, not each facet's, so views do not hand over at
# facet edges; across sharper edges (a cube's) each face keeps its own. At 30 degrees a
# flat-shaded subdivided cube still had a neighbour pair whose share jumped by 0.46.
SMOOTH_ANGLE = 45.0


def weighting_normals(face_normals: np.ndarray, face_areas: np.ndarray,
                      corner_face: np.ndarray, corner_vertex: np.ndarray,
                      angle: float = SMOOTH_ANGLE) -> np.ndarray:
    """Per face corner (C,), the unit normal views are weighted by there: the area-weighted
    mean of the normals of the faces around its vertex that lie within ``angle`` degrees of
    its own face's (its face's alone when none does)."""
    normals = np.asarray(face_normals, float)
    areas = np.asarray(face_areas, float)
    corner_face = np.asarray(corner_face, np.int64)
    corner_vertex = np.asarray(corner_vertex, np.int64)
    order = np.argsort(corner_vertex, kind="stable")
    sorted_vertex = corner_vertex[order]
    starts = np.searchsorted(sorted_vertex, corner_vertex, side="left")
    counts = np.searchsorted(sorted_vertex, corner_vertex, side="right") - starts
    # Every (corner, corner at the same vertex) pair
    mine = np.repeat(np.arange(len(corner_face)), counts)
    offsets = np.arange(len(mine)) - np.repeat(np.cumsum(counts) - counts, counts)
    theirs = order[np.repeat(starts, counts) + offsets]
    own, other = normals[corner_face[mine]], normals[corner_face[theirs]]
    near = np.einsum("ij,ij->i", own, other) >= math.cos(math.radians(angle)) - 1e-9
    weight = np.where(near, areas[corner_face[theirs]], 0.0)
    summed = np.stack([np.bincount(mine, weights=other[:, k] * weight,
                                   minlength=len(corner_face)) for k in range(3)], axis=1)
    length = np.linalg.norm(summed, axis=1)
    fallback = normals[corner_face]
    return np.where((length > 1e-12)[:, None], summed / np.maximum(length, 1e-12)[:, None],
                    fallback)
