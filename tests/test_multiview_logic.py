"""Texture from Views without Blender (issue 13): where the cameras stand, how much a view is
trusted at a texel (angle falloff, occlusion from its depth pass, feather at depth edges),
how views blend in UV space, what a later view repaints, and the shared rasteriser."""

from __future__ import annotations

import math

import numpy as np
import pytest

from blender_addon import multiview, projection


def _perspective(lens: float = 50.0, sensor: float = 36.0, near: float = 0.1,
                 far: float = 100.0) -> np.ndarray:
    """A square image's projection matrix as Blender's calc_matrix_camera gives it."""
    f = 2.0 * lens / sensor
    return np.array([[f, 0, 0, 0], [0, f, 0, 0],
                     [0, 0, -(far + near) / (far - near), -2 * far * near / (far - near)],
                     [0, 0, -1, 0]])


# ------------------------------------------------------------------ placement

def test_orbit_cameras_stand_at_the_distance_and_look_at_the_centre() -> None:
    center = np.array([1.0, 2.0, 0.5])
    poses = multiview.orbit_views(center, 10.0, 4, 15.0, top=True, bottom=True)
    assert [p.name for p in poses] == ["Orbit 1", "Orbit 2", "Orbit 3", "Orbit 4", "Top",
                                       "Bottom"]
    for pose in poses:
        m = np.array(pose.matrix_world)
        eye, forward, up = m[:3, 3], -m[:3, 2], m[:3, 1]
        assert math.isclose(np.linalg.norm(eye - center), 10.0, rel_tol=1e-9)
        to_center = (center - eye) / np.linalg.norm(center - eye)
        assert np.allclose(forward, to_center, atol=1e-9)
        assert np.allclose(m[:3, :3].T @ m[:3, :3], np.eye(3), atol=1e-9)   # a rotation
        assert np.linalg.det(m[:3, :3]) > 0
        if pose.name.startswith("Orbit"):
            assert up[2] > 0                 # the image's up is the world's up
            height = eye[2] - center[2]
            assert math.isclose(height, 10.0 * math.sin(math.radians(15.0)), rel_tol=1e-9)
    # The first stands in front (-Y), the next ones go round counter-clockwise.
    fronts = [np.array(p.matrix_world)[:3, 3] - center for p in poses[:4]]
    assert fronts[0][1] < -9 and abs(fronts[0][0]) < 1e-9
    assert fronts[1][0] > 9 and fronts[2][1] > 9 and fronts[3][0] < -9
    assert np.allclose(np.array(poses[4].matrix_world)[:3, 3], center + (0, 0, 10))
    assert np.allclose(np.array(poses[5].matrix_world)[:3, 3], center - (0, 0, 10))


def test_fit_distance_frames_the_bounding_sphere() -> None:
    distance = multiview.fit_distance(2.0, 50.0, 36.0, 512, 512, margin=1.0)
    half = math.atan(18.0 / 50.0)
    assert math.isclose(distance * math.sin(half), 2.0, rel_tol=1e-9)
    # A wide image is framed by its shorter side: farther away.
    assert multiview.fit_distance(2.0, 50.0, 36.0, 1024, 512, margin=1.0) > distance


@pytest.mark.parametrize("args, field", [((0, 5.0, 0, 10.0, False, False), "no views"),
                                          ((0, 5.0, 4, 90.0), "elevation"),
                                          ((0, -1.0, 4, 0.0), "distance")])
def test_bad_placements_are_refused_by_name(args, field) -> None:
    center, distance, count, elevation, *flags = args
    with pytest.raises(ValueError, match=field):
        multiview.orbit_views((0, 0, 0), distance, count, elevation, *flags)


# ------------------------------------------------------------------ weights

def test_angle_weights_fall_smoothly_to_zero_at_the_grazing_threshold() -> None:
    angles = np.linspace(0.0, 89.9, 2000)
    w = multiview.angle_weights(np.cos(np.radians(angles)), max_angle=75.0, feather=20.0)
    assert math.isclose(w[0], 1.0)
    assert (np.diff(w) <= 1e-12).all()                        # never rises with the angle
    assert (w[angles >= 75.0] == 0.0).all() and (w[angles < 74.0] > 0.0).all()
    # Smooth: no jump anywhere, and the slope goes to 0 at the threshold.
    assert np.abs(np.diff(w)).max() < 0.01
    near = multiview.angle_weights(np.cos(np.radians([74.0, 74.9])), 75.0, 20.0)
    assert near[0] < 0.01 and near[1] < 1e-4
    # Up to the feather's start it is the plain cosine; back faces get nothing.
    assert math.isclose(float(multiview.angle_weights(np.cos(np.radians(50.0)))),
                        math.cos(math.radians(50.0)), rel_tol=1e-9)
    assert multiview.angle_weights(np.array([-0.5, -1.0])).tolist() == [0.0, 0.0]


def test_edge_feather_is_low_at_depth_edges_and_full_inside() -> None:
    depth = np.full((32, 32), 1e10)
    depth[8:24, 8:24] = 5.0                      # a square surface in front of nothing
    f = multiview.edge_feather(depth, steps=4, floor=0.05)
    assert math.isclose(f[16, 16], 1.0)          # 8 pixels from any edge
    assert math.isclose(f[8, 16], 0.05)          # on the silhouette
    assert math.isclose(f[10, 16], 0.05 + 0.95 * 2 / 4)
    assert math.isclose(f[0, 0], 0.05)           # the frame's border
    assert f.min() >= 0.05 and f.max() <= 1.0


def _plane_view(depth_value: float = 5.0, size: int = 64) -> multiview.ViewGeometry:
    """A camera at (0, -5, 0) looking along +Y; its depth pass shows a wall at
    ``depth_value`` everywhere."""
    world = multiview.look_at((0, -5, 0), (0, 0, 0))
    return multiview.ViewGeometry(np.linalg.inv(world), _perspective(), size, size,
                                  np.array([0.0, -5.0, 0.0]), np.full((size, size), depth_value))


def test_texel_weights_see_facing_texels_and_not_hidden_or_back_ones() -> None:
    points = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.3, 0.0, 0.2], [0.0, 0.0, 0.0],
                       [30.0, 0.0, 0.0]])
    normals = np.array([[0, -1, 0], [0, 1, 0], [0, -1, 0], [1, 0, 0], [0, -1, 0]], float)
    weights, uv = multiview.texel_weights(points, normals, _plane_view(5.0))
    assert weights[0] > 0.99                     # facing, what the depth pass shows
    assert weights[1] == 0.0                     # its back
    assert weights[2] > 0.95
    assert weights[3] == 0.0                     # seen edge-on
    assert weights[4] == 0.0                     # outside the frame
    assert np.allclose(uv[0], (0.5, 0.5))
    # Something nearer in the depth pass hides them all.
    hidden, _ = multiview.texel_weights(points, normals, _plane_view(3.0))
    assert (hidden == 0.0).all()


# ------------------------------------------------------------------ blending

def test_blend_normalises_the_weighted_colours() -> None:
    red, blue = np.array([1.0, 0, 0]), np.array([0, 0, 1.0])
    weights = np.array([[0.9, 0.0, 0.0, 0.2],     # view 1
                        [0.3, 0.5, 0.0, 0.0]])    # view 2
    color_sum = weights[0][:, None] * red + weights[1][:, None] * blue
    colors, covered = multiview.blend(color_sum, weights.sum(axis=0))
    assert covered.tolist() == [True, True, False, True]
    assert np.allclose(colors[0], (0.75, 0, 0.25))
    assert np.allclose(colors[1], blue) and np.allclose(colors[3], red)
    assert np.allclose(colors[2], 0.0)             # nobody saw it: empty
    # Scaling every weight alike changes nothing.
    again, _ = multiview.blend(color_sum * 7.0, weights.sum(axis=0) * 7.0)
    assert np.allclose(again, colors)


def test_repaint_mask_covers_unseen_and_grazed_texels_and_the_background() -> None:
    seen = np.array([[0.0, 0.2, 0.9], [1.5, 0.0, 0.49]])
    surface = np.array([[True, True, True], [True, False, True]])
    mask = multiview.repaint_mask(seen, surface, threshold=0.5)
    assert mask.dtype == np.uint8
    assert mask.tolist() == [[255, 255, 0], [0, 255, 255]]


def test_nearest_surface_keeps_the_nearest_fragment_per_pixel() -> None:
    rows = np.array([0, 0, 1, 0])
    cols = np.array([0, 0, 1, 1])
    depth = np.array([5.0, 2.0, 3.0, 9.0])
    nearest = multiview.nearest_surface(rows, cols, depth, 2, 2)
    assert nearest.tolist() == [[1, 3], [-1, 2]]


def test_raster_fragments_interpolate_attributes_and_bake_still_uses_them() -> None:
    # One triangle covering the lower-left half of a 4x4 grid, attribute = its own position.
    tri = np.array([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    attrs = np.array([[[0.0, 0.0, 7.0], [4.0, 0.0, 7.0], [0.0, 4.0, 7.0]]])
    rows, cols, values = (np.concatenate(parts) for parts in
                          zip(*projection.raster_fragments(tri, attrs, 4, 4)))
    assert len(rows) == 10 and (cols + rows <= 3).all()
    assert np.allclose(values[:, 0], cols + 0.5) and np.allclose(values[:, 1], rows + 0.5)
    assert np.allclose(values[:, 2], 7.0)
    source = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    baked = projection.bake_triangles(tri, tri, source, 4, 4, padding=0)
    assert baked[0, 0, 1] == 1.0 and baked[3, 3, 1] == 0.0
    assert math.isclose(float(baked[0, 0, 0]), 0.0) and math.isclose(float(baked[1, 2, 0]), 6.0)
    padded, covered = projection.pad_islands(baked[..., :1], baked[..., 1] > 0, 3)
    assert covered.all()
    # (1, 3) grew first, from its covered neighbours (0, 3) and (1, 2): their mean.
    assert math.isclose(float(padded[1, 3, 0]), (3.0 + 6.0) / 2)


def test_front_first_puts_the_front_view_first_and_the_back_last() -> None:
    # An orbit starting at the back (+Y), then the sides and the front (-Y), then the top.
    origins = np.array([(0, 5, 0), (5, 0, 0), (0, -5, 0), (-5, 0, 0), (0, 0, 5)], float)
    order = multiview.order_views("FRONT", origins=origins, center=(0, 0, 0))
    assert order[0] == 2 and order[-1] == 0
    assert order[1:4] == [1, 3, 4]     # the sides and the top, 90 degrees off: as listed


def test_coverage_first_takes_what_adds_most_each_time() -> None:
    # View 0 sees texels 0-2 well, view 1 texels 0-3 (the most), view 2 texels 4-5: after
    # view 1, view 2 adds more than view 0 (whose texels are all seen already).
    weights = np.zeros((3, 6))
    weights[0, :3] = 1.0
    weights[1, :4] = 1.0
    weights[2, 4:] = 1.0
    assert multiview.order_views("COVERAGE", weights=weights, threshold=0.5) == [1, 2, 0]
    assert multiview.order_views("LISTED", count=3) == [0, 1, 2]


def test_order_views_names_what_it_lacks() -> None:
    with pytest.raises(ValueError, match="view order must be one of"):
        multiview.order_views("RANDOM", count=2)
    with pytest.raises(ValueError, match="origins"):
        multiview.order_views("FRONT", weights=np.zeros((1, 1)))


def test_padding_steps_yield_a_step_per_ring_and_match_pad_islands() -> None:
    values = np.zeros((9, 9, 1), np.float32)
    covered = np.zeros((9, 9), bool)
    values[4, 4], covered[4, 4] = 1.0, True
    padded, grown = projection.pad_islands(values, covered, 3)
    assert grown.sum() == 25 and covered.sum() == 1    # a diamond of radius 3; a copy
    for copy, yields in ((True, 4), (False, 3)):       # (the copies are a step of their own)
        mine_values, mine_covered = values.copy(), covered.copy()
        steps = projection.padding_steps(mine_values, mine_covered, 3, copy=copy)
        count = 0
        while True:
            try:
                next(steps)
                count += 1
            except StopIteration as done:
                stepped = done.value
                break
        assert count == yields
        assert np.array_equal(stepped[0], padded) and np.array_equal(stepped[1], grown)
        assert (stepped[0] is mine_values) != copy and (mine_covered.sum() == 25) != copy


def test_weighting_normals_smooth_facets_but_keep_hard_edges() -> None:
    # Two facets meeting at a vertex 20 degrees apart (one surface, below the threshold)
    # and a third at 90 degrees to the first (a hard edge): the first two
    # corners get the mean of both, the third keeps its own normal.
    tilt = math.radians(20)
    faces = np.array([(0.0, 0.0, 1.0), (math.sin(tilt), 0.0, math.cos(tilt)), (1.0, 0, 0)])
    corner_face = np.array([0, 1, 2])
    corner_vertex = np.array([7, 7, 7])
    got = multiview.weighting_normals(faces, np.ones(3), corner_face, corner_vertex)
    mean = (faces[0] + faces[1]) / np.linalg.norm(faces[0] + faces[1])
    assert np.allclose(got[0], mean) and np.allclose(got[1], mean)
    assert np.allclose(got[2], (1.0, 0.0, 0.0))
    # Larger faces pull harder; corners at other vertices are not mixed in.
    got = multiview.weighting_normals(faces[:2], np.array([3.0, 1.0]), np.array([0, 1, 0]),
                                      np.array([7, 7, 8]))
    weighted = 3.0 * faces[0] + faces[1]
    assert np.allclose(got[0], weighted / np.linalg.norm(weighted))
    assert np.allclose(got[2], faces[0])


def test_enlarge_nearest_repeats_each_small_pixel_over_its_block() -> None:
    small = np.array([[1.0, 2.0], [3.0, 4.0]])
    big = multiview.enlarge_nearest(small, 4, 6)
    assert big.shape == (4, 6)
    assert (big[:2, :3] == 1.0).all() and (big[:2, 3:] == 2.0).all()
    assert (big[2:, :3] == 3.0).all() and (big[2:, 3:] == 4.0).all()
    assert multiview.enlarge_nearest(np.zeros((3, 3, 2)), 7, 5).shape == (7, 5, 2)
