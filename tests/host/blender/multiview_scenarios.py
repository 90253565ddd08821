"""Scenarios for Texture from Views (issue 13), run like scenarios.py's.

Geometry truths that do not depend on the tiny model's random pictures: a cube textured
from 6 placed views is covered almost everywhere; a face no view sees stays empty; a face
hidden behind a wall in one view gets no weight from it (the weight maps the add-on keeps
when asked); the normal pass of a face toward the camera; Cancel leaves the scene as it was.
"""

from __future__ import annotations

import json
import os
import time

import bpy
import numpy as np

import harness
from scenarios import (JOB_TIMEOUT, SIZE, RecordingLayout, Stand, image_rows, new_datablocks,
                       reopen, snapshot)

TEXTURE = 128


def _views(scene, **values):
    props = scene.atelier_views
    for key, value in values.items():
        setattr(props, key, value)
    return props


def _run_of(job):
    return job.finish.__self__   # the ViewsRun whose view this job is


def _texture_all(module, session, scene, expect_views: int):
    """Press Texture from Views and pump until the last view is blended in; the run."""
    started = time.perf_counter()
    assert bpy.ops.atelier.texture_from_views() == {"FINISHED"}
    run = _run_of(session.jobs[-1])
    assert len(run.shots) == expect_views, [shot.name for shot in run.shots]
    assert not run.views and not run.targets   # made in the pump's steps, not on the press
    prepared = time.perf_counter() - started
    session.pump_until_idle(JOB_TIMEOUT * 2)
    states = [job.progress_text for job in run.jobs]
    assert [job.state.name for job in run.jobs] == ["DONE"] * expect_views, states
    total = time.perf_counter() - started
    print(f"TIMING prepare {prepared:.2f} s, total {total:.2f} s for {expect_views} views "
          f"({TEXTURE}px texture, {SIZE}px views):",
          ", ".join(f"{t['view']} daemon {t['daemon_s']:.2f} s + blend {t['blender_s']:.3f} s"
                    for t in run.timings))
    return run


def _face_texels(target, normal) -> np.ndarray:
    """Which of the target's inside texels lie on the face whose normal is ``normal``."""
    return np.einsum("ij,j->i", target.normals, np.asarray(normal, float)) > 0.99


def _weights(name: str) -> np.ndarray:
    """A kept weight map as (H, W) floats, Blender's row order."""
    return image_rows(bpy.data.images[name])[..., 0]


def _drawn(module) -> list:
    """What the Texture from Views sub-panel draws (every property and operator exists)."""
    log: list = []
    panel = module.multiview_ops.VIEW3D_PT_atelier_views
    assert hasattr(bpy.types, panel.bl_parent_id), panel.bl_parent_id
    panel.draw(Stand(RecordingLayout(log), panel), bpy.context)
    return log


def scenario_views(module, url: str) -> None:
    session = harness.session(module)
    # The sub-panel: orbit settings and Add View Cameras only for placed views.
    props = bpy.context.scene.atelier_views
    assert props.views_from == "AUTO" and props.texture_size == 1024
    assert props.view_order == "FRONT"
    placed = _drawn(module)
    assert {("prop", "view_order"), ("prop", "max_angle"), ("prop", "seen_weight")} <= set(placed)
    assert ("operator", "atelier.add_view_cameras") in placed
    assert ("prop", "orbit_count") in placed and ("prop", "elevation") in placed
    assert placed[-1] == ("operator", "atelier.texture_from_views")
    props.views_from = "CAMERAS"
    picked = _drawn(module)
    assert ("prop", "orbit_count") not in picked and ("prop", "texture_size") in picked
    assert ("operator", "atelier.add_view_cameras") not in picked
    props.views_from = "AUTO"
    # ---------------- a cube alone, 4 orbit views at the horizon + top + bottom
    scene = harness.empty_scene()
    cube = harness.add_cube(scene, "Box", (0, 0, 0))
    paint = bpy.data.materials.new("Paint")
    cube.data.materials.append(paint)
    harness.select_only([cube])
    harness.settings(scene, prompt="painted crate", steps=2, width=SIZE, height=SIZE,
                     random_seed=False, seed=11)
    _views(scene, views_from="AUTO", orbit_count=4, elevation=0.0, top=True, bottom=True,
           texture_size=TEXTURE, keep_weights=True, padding=2)
    before = snapshot()
    assert bpy.ops.atelier.texture_from_views() == {"FINISHED"}
    first = session.jobs[-1]
    run = _run_of(first)
    assert first.state.name == "PREPARING" and not first.uploads
    session.pump_until_idle(JOB_TIMEOUT, until=lambda: first.preparing is None)
    # One job per view, depth and normals as its two controls; the first generates freely.
    assert first.request.kind == "txt2img" and first.request.mask is None
    assert [c.kind for c in first.request.controls] == ["depth", "normal"]
    # The daemon takes exact normals (float32x3): the front face, a plane facing Orbit 1,
    # is (0, 0, 1) to 1e-3 over the middle of the view; the depth there is the distance.
    normal = next(f for f in first.uploads if f.id == first.request.controls[1].image)
    assert normal.format == module.protocol.PixelFormat.FLOAT32X3, normal.format
    rows = np.frombuffer(normal.data, "<f4").reshape(SIZE, SIZE, 3)
    middle = slice(SIZE // 2 - 8, SIZE // 2 + 8)
    centre = rows[middle, middle].reshape(-1, 3)
    assert np.abs(centre - (0.0, 0.0, 1.0)).max() < 1e-3, np.abs(centre - (0, 0, 1)).max()
    depth = next(f for f in first.uploads if f.id == first.request.controls[0].image)
    z = np.frombuffer(depth.data, "<f4").reshape(SIZE, SIZE)
    camera_distance = _pose_distance(module, scene)
    assert np.abs(z[middle, middle] - (camera_distance - 1.0)).max() < 1e-3, \
        (z[middle, middle], camera_distance)
    # What went over the wire, for the test to decode and plan as the daemon does
    for name, frame in (("normal", normal), ("depth", depth)):
        with open(f"sent_{name}.atf", "wb") as out:
            out.write(module.protocol.frames.encode_frame(frame))
    with open("sent_expected.json", "w") as out:
        json.dump({"depth": camera_distance - 1.0, "size": SIZE}, out)
    session.pump_until_idle(JOB_TIMEOUT * 2)
    assert [job.state.name for job in run.jobs] == ["DONE"] * 6, \
        [job.progress_text for job in run.jobs]
    # Later views inpaint: init image and mask, with the same two controls.
    for job in run.jobs[1:]:
        assert job.request.kind == "inpaint" and job.request.mask and job.request.init_image
        assert [c.kind for c in job.request.controls] == ["depth", "normal"]
    # Front first (Orbit 1 stands at -Y), then by the angle from it: the back (Orbit 3) last
    assert [v.name for v in run.views] == ["Orbit 1", "Orbit 2", "Orbit 4", "Top", "Bottom",
                                           "Orbit 3"]
    print("TIMING", ", ".join(f"{t['view']} daemon {t['daemon_s']:.2f} s + blend "
                              f"{t['blender_s']:.3f} s" for t in run.timings))

    made = new_datablocks(before)
    texture_name = run.made[0]
    weight_names = run.made[1:]
    assert made["images"] == set(run.made) and len(weight_names) == 6, made
    assert len(made["materials"]) == 1 and made["meshes"] == set(), made
    # Its own UV map, untouched; the old material stays in its slot, the new one added.
    assert [layer.name for layer in cube.data.uv_layers] == ["UVMap"]
    assert cube.material_slots[0].material == paint and len(cube.material_slots) == 2
    material = cube.material_slots[1].material
    nodes = {n.type: n for n in material.node_tree.nodes}
    assert nodes["TEX_IMAGE"].image.name == texture_name
    assert nodes["UVMAP"].uv_map == "UVMap"
    assert all(p.material_index == 1 for p in cube.data.polygons)
    texture = image_rows(bpy.data.images[texture_name])
    assert texture.shape == (TEXTURE, TEXTURE, 4)
    target = run.targets[0]
    coverage = float((texture[target.inside, 3] > 0.5).mean())
    print(f"COVERAGE {coverage:.4f} of {int(target.inside.sum())} UV texels")
    assert coverage >= 0.98, coverage
    assert np.ptp(texture[target.inside, :3]) > 0.0    # the daemon's colours came in
    front = _face_texels(target, (0, -1, 0))
    facing = _weights("Atelier Weights Box Orbit 1")[target.inside]   # at the front face
    assert np.median(facing[front]) > 0.9, np.median(facing[front])
    behind = _weights("Atelier Weights Box Orbit 3")[target.inside]
    assert (behind[front] == 0.0).all()
    _rerun_keeps_the_rest(module, session, run, "Box")

    # ---------------- a wall hides the front face from Orbit 1; no bottom view. Both are
    # textured together, each into its own UVs and image.
    scene = harness.empty_scene()
    cube = harness.add_cube(scene, "Walled", (0, 0, 0))
    wall = harness.add_grid(scene, "Wall", (0, -2.5, 0), size=3.0, cuts=1)
    harness.select_only([cube, wall])
    _views(scene, orbit_count=4, elevation=0.0, top=True, bottom=False)
    run = _run_of_all(module, session, 5)
    assert [t.name for t in run.targets] == ["Wall", "Walled"]
    target = run.targets[1]
    texture = image_rows(bpy.data.images["Walled from 5 views"])
    front = _face_texels(target, (0, -1, 0))
    bottom = _face_texels(target, (0, 0, -1))
    hidden = _weights("Atelier Weights Walled Orbit 1")[target.inside]
    assert (hidden[front] == 0.0).all(), hidden[front].max()   # the wall is in the way
    right = _face_texels(target, (1, 0, 0))
    seen_right = _weights("Atelier Weights Walled Orbit 2")[target.inside][right]
    # Seen nearly face on, but small in a 64 px view: the feather near its outline (4 px)
    # takes part of its weight.
    assert np.median(seen_right) > 0.5 and seen_right.min() > 0.0, seen_right
    # No view sees the front (hidden) or the bottom (no view below): they stay empty.
    assert (texture[target.inside][front | bottom, 3] == 0.0).all()
    seen_faces = ~(front | bottom)
    assert (texture[target.inside][seen_faces, 3] > 0.5).mean() >= 0.98
    # The wall, seen face on by Orbit 1, has its own texture in its own UVs.
    wall_target = run.targets[0]
    wall_texture = image_rows(bpy.data.images["Wall from 5 views"])
    assert (wall_texture[wall_target.inside, 3] > 0.5).mean() >= 0.98
    assert wall.material_slots[-1].material.node_tree.nodes["Image Texture"].image.name \
        == "Wall from 5 views"
    assert cube.material_slots[-1].material.node_tree.nodes["Image Texture"].image.name \
        == "Walled from 5 views"
    _rounded_cube_is_covered(module, session)
    _half_passes_cover(module, session)


def _half_passes_cover(module, session) -> None:
    """Pass Size: Half renders each view's depth and normals at half the views' size (the
    daemon scales the controls up); the job, its init image and mask keep the views' size,
    and the cube is covered as at full size."""
    scene = harness.empty_scene()
    cube = harness.add_cube(scene, "Halved", (0, 0, 0))
    harness.select_only([cube])
    _views(scene, orbit_count=4, elevation=0.0, top=True, bottom=True, pass_scale="2",
           keep_weights=False)
    run = _run_of_all(module, session, 6)
    for view in run.views:    # the passes sent: half size; what the init and mask show: full
        assert {(f.width, f.height) for f in view.uploads.uploads} == {(SIZE // 2, SIZE // 2)}
        assert view.surface_object.shape == (SIZE, SIZE)
    assert all((job.request.width, job.request.height) == (SIZE, SIZE) for job in run.jobs)
    assert all(job.state.name == "DONE" for job in run.jobs)
    target = run.targets[0]
    texture = image_rows(bpy.data.images["Halved from 6 views"])
    coverage = float((texture[target.inside, 3] > 0.5).mean())
    print(f"COVERAGE halved passes {coverage:.4f} of {int(target.inside.sum())} UV texels")
    assert coverage >= 0.98, coverage


def _rerun_keeps_the_rest(module, session, run, name: str) -> None:
    """Re-run one view (Orbit 2, from the panel's views list) with another seed: its mask
    is the texels it sees best, its picture replaces its share, and every texel of the
    layout outside its footprint is byte-identical in the new image; the material shows
    the new image, the old one is kept."""
    index = [view.name for view in run.views].index("Orbit 2")
    target = run.targets[0]
    old_image = target.texture
    old = image_rows(bpy.data.images[old_image])[target.inside]
    seen, weights, _ = target.contributions[index]
    footprint = np.zeros(len(target.positions), bool)
    footprint[seen] = True
    drawn = _drawn(module)
    assert drawn.count(("operator", "atelier.rerun_view")) == len(run.views), drawn
    harness.settings(bpy.context.scene, seed=99)
    assert bpy.ops.atelier.rerun_view(index=index) == {"FINISHED"}
    job = run.jobs[-1]
    session.pump_until_idle(JOB_TIMEOUT, until=lambda: job.preparing is None)
    assert job.request.kind == "inpaint" and job.request.seed == 99
    uploads = {f.id: f for f in job.uploads}
    mask = np.frombuffer(uploads[job.request.mask].data, np.uint8).reshape(SIZE, SIZE)
    view = run.views[index]
    shown = view.surface_texel[::-1]
    on_cube = view.surface_object[::-1] == 0
    # Orbit 2 (at +X) sees its own face best; the faces it sees at 45 degrees and more
    # (none: a cube's others are at 90) stay. Repainted: only pixels showing the cube.
    assert (mask[~on_cube] == 0).all() and (mask[on_cube] == 255).mean() > 0.9, mask.mean()
    right = _face_texels(target, (1, 0, 0))
    assert right[shown[mask == 255]].mean() > 0.95
    session.pump_until_idle(JOB_TIMEOUT)
    assert job.state.name == "DONE", job.progress_text
    assert target.texture != old_image and old_image in bpy.data.images
    material = bpy.data.materials[target.material]
    node = next(n for n in material.node_tree.nodes if n.type == "TEX_IMAGE")
    assert node.image.name == target.texture
    new = image_rows(bpy.data.images[target.texture])[target.inside]
    changed = np.any(new != old, axis=1)
    print(f"RERUN Orbit 2: footprint {footprint.mean():.3f} of the texels, changed there "
          f"{changed[footprint].mean():.3f}, changed elsewhere {int(changed[~footprint].sum())}")
    assert not changed[~footprint].any()          # byte-identical outside its footprint
    assert changed[footprint].mean() > 0.5        # the new picture came in
    # Another re-run, cancelled while its picture is being blended in (the pump made to run
    # one step at a time): the view's share is as it was, the texture too.
    slice_was = module.runtime.FINISH_SLICE
    module.runtime.FINISH_SLICE = 1e-4
    try:
        sums = [t.color_sum.copy() for t in run.targets]
        shares = [t.contributions[index] for t in run.targets]
        shown = target.texture
        assert bpy.ops.atelier.rerun_view(index=index) == {"FINISHED"}
        again = run.jobs[-1]
        session.pump_until_idle(JOB_TIMEOUT, until=lambda: id(again) in run._undo)
        assert again.finishing is not None and not np.allclose(target.color_sum, sums[0])
        assert bpy.ops.atelier.cancel() == {"FINISHED"}
        assert again.state.name == "CANCELLED", again.progress_text
    finally:
        module.runtime.FINISH_SLICE = slice_was
    for t, before_sums, before_share in zip(run.targets, sums, shares):
        assert np.allclose(t.color_sum, before_sums, rtol=0, atol=1e-9)
        assert t.contributions[index] is before_share
    assert target.texture == shown and node.image.name == shown
    assert not run.busy()


def _rounded_cube_is_covered(module, session) -> None:
    """A cube under a Subdivision Surface modifier is textured as it renders: its texels lie
    on the rounded surface (the cage's corners stand sqrt(3) from its centre), and 6 views
    cover it. Views hand over without a cut, shaded smooth (weights follow its vertex
    normals) and flat (its facets are weighted as the surface they approximate:
    multiview.weighting_normals)."""
    for shading in ("smooth", "flat"):
        scene = harness.empty_scene()
        name = f"Rounded {shading}"
        cube = harness.add_cube(scene, name, (0, 0, 0))
        modifier = cube.modifiers.new("Subdivision", "SUBSURF")
        modifier.levels = modifier.render_levels = 2
        cube.data.polygons.foreach_set("use_smooth",
                                       [shading == "smooth"] * len(cube.data.polygons))
        cube.data.update()
        harness.select_only([cube])
        _views(scene, orbit_count=4, elevation=0.0, top=True, bottom=True, keep_weights=True)
        run = _run_of_all(module, session, 6)
        _no_cut_where_views_meet(run, name)


def _no_cut_where_views_meet(run, name: str) -> None:
    target = run.targets[0]
    radius = np.linalg.norm(target.positions, axis=1)
    assert radius.max() < 1.5 and radius.min() > 0.5, (radius.min(), radius.max())
    texture = image_rows(bpy.data.images[f"{name} from 6 views"])
    coverage = float((texture[target.inside, 3] > 0.5).mean())
    print(f"COVERAGE {name} {coverage:.4f} of {int(target.inside.sum())} UV texels")
    assert coverage >= 0.98, coverage
    # No cut where views meet: each view's share of a texel (its weight over the sum)
    # changes little from a texel to its neighbour on the surface (a cut would jump by 1).
    weights = np.stack([_weights(f"Atelier Weights {name} {shot.name}")
                        for shot in run.shots])
    total = weights.sum(axis=0)
    share = np.where(total > 0, weights / np.where(total > 0, total, 1.0), 0.0)
    where = np.full(target.inside.shape + (3,), np.nan)
    where[target.inside] = target.positions
    jumps = []
    for axis in (1, 2):
        a = np.take(share, range(share.shape[axis] - 1), axis=axis)
        b = np.take(share, range(1, share.shape[axis]), axis=axis)
        pa = np.take(where, range(where.shape[axis - 1] - 1), axis=axis - 1)
        pb = np.take(where, range(1, where.shape[axis - 1]), axis=axis - 1)
        near = np.linalg.norm(pa - pb, axis=-1) < 0.08        # neighbours on the surface too
        near &= np.take(total, range(total.shape[axis - 1] - 1), axis=axis - 1) > 0
        near &= np.take(total, range(1, total.shape[axis - 1]), axis=axis - 1) > 0
        jumps.append(np.abs(a - b)[:, near])
    jumps = np.concatenate(jumps, axis=1)
    shared = (weights > 0).sum(axis=0)[target.inside]
    cuts = float((jumps.max(axis=0) > 0.5).mean())
    print(f"SEAMS {name}: texels seen by 2+ views {float((shared >= 2).mean()):.3f}; "
          f"change of a view's share between neighbours: 99th percentile "
          f"{np.percentile(jumps, 99):.3f}, largest {jumps.max():.3f}; neighbour pairs with "
          f"a change over 0.5: {cuts:.4f} of {jumps.shape[1]}")
    # Measured: at most 0.25 (99th percentile 0.16), smooth or flat; flat-shaded, the
    # facets' own normals made 1.3 % of pairs jump by more than 0.5 (at most 0.92).
    assert (shared >= 2).mean() > 0.2
    assert jumps.max() < 0.35 and cuts == 0.0, (jumps.max(), cuts)


def _run_of_all(module, session, expect_views: int):
    return _texture_all(module, session, bpy.context.scene, expect_views)


def _pose_distance(module, scene) -> float:
    """How far the placed cameras stand from the selected cube's centre (at the origin)."""
    objects = [o for o in bpy.context.selected_objects if o.type == "MESH"]
    poses = module.multiview_ops.auto_poses(objects, scene.atelier_views, SIZE, SIZE)
    return float(np.linalg.norm(np.array(poses[0].matrix_world)[:3, 3]))


def scenario_views_cancel(module, url: str) -> None:
    """Add View Cameras places the cameras, which then serve as Selected Cameras; an object
    without UVs gets a Smart UV Project map for the run; the second view repaints only what
    the first did not see well, over the first's colours; Cancel then takes everything back:
    no image, material or UV map is left; likewise when Cancel comes while a view's picture
    is being blended in."""
    session = harness.session(module)
    scene = harness.empty_scene()
    cube = harness.add_cube(scene, "Bare", (0, 0, 0))
    cube.data.uv_layers.remove(cube.data.uv_layers[0])
    harness.select_only([cube])
    harness.settings(scene, prompt="long views", steps=60, width=SIZE, height=SIZE,
                     random_seed=False, seed=2)
    props = _views(scene, views_from="AUTO", orbit_count=8, elevation=20.0, top=False,
                   bottom=False, texture_size=64, keep_weights=True)
    poses = module.multiview_ops.auto_poses([cube], props, SIZE, SIZE)
    assert bpy.ops.atelier.add_view_cameras() == {"FINISHED"}
    cameras = sorted((o for o in scene.objects if o.type == "CAMERA"), key=lambda o: o.name)
    assert [c.name for c in cameras] == [f"View Orbit {i}" for i in range(1, 9)]
    for camera, pose in zip(cameras, poses):
        assert np.allclose(np.array(camera.matrix_world), pose.matrix_world, atol=1e-5)
    cube.select_set(True)
    props.views_from = "CAMERAS"
    before = snapshot()
    assert bpy.ops.atelier.texture_from_views() == {"FINISHED"}
    run = _run_of(session.jobs[-1])
    assert [layer.name for layer in cube.data.uv_layers] == ["Atelier Views UV"]
    session.pump_until_idle(JOB_TIMEOUT, until=lambda: run.jobs[0].preparing is None)
    # Front first: View Orbit 1 stands at -Y, then the cameras by their angle from it
    assert [shot.name for shot in run.shots] == [cameras[i].name for i in (0, 1, 7, 2, 6, 3,
                                                                            5, 4)]
    assert run.targets[0].inside.mean() > 0.3    # Smart UV Project laid the faces out
    session.pump_until_idle(JOB_TIMEOUT, until=lambda: len(run.jobs) >= 2
                            and run.jobs[1].preparing is None)
    assert run.jobs[0].state.name == "DONE" and run.jobs[1].request.kind == "inpaint"
    # The second view (45 degrees round) sees some of what the first saw well: kept
    # (mask 0) and shown with the first's colours; the rest of the cube is repainted.
    second = run.jobs[1]
    uploads = {f.id: f for f in second.uploads}
    mask = np.frombuffer(uploads[second.request.mask].data, np.uint8).reshape(SIZE, SIZE)
    init = np.frombuffer(uploads[second.request.init_image].data,
                         np.uint8).reshape(SIZE, SIZE, 4)
    view = run.views[1]
    on_cube = view.surface_object[::-1] >= 0          # top row first, like the uploads
    kept = on_cube & (mask == 0)
    assert kept.sum() > 20 and (on_cube & (mask == 255)).sum() > 20, (kept.sum(), mask)
    assert (mask[~on_cube] == 255).all()
    assert np.abs(init[kept][:, :3].astype(int) - 128).max() > 2   # not the empty grey
    assert bpy.ops.atelier.cancel() == {"FINISHED"}
    session.pump_until_idle(JOB_TIMEOUT)
    assert run.jobs[-1].state.name == "CANCELLED", run.jobs[-1].progress_text
    assert len(run.jobs) == 2
    assert new_datablocks(before) == {"images": set(), "materials": set(), "meshes": set()}
    assert len(cube.data.uv_layers) == 0 and len(cube.material_slots) == 0

    # Cancel while the first view is being prepared (its texels rasterised, 2048 px): the
    # job ends there, nothing was sent and nothing is left either.
    props.texture_size = 2048
    assert bpy.ops.atelier.texture_from_views() == {"FINISHED"}
    run = _run_of(session.jobs[-1])
    session.pump()
    assert run.jobs[0].state.name == "PREPARING", run.jobs[0].progress_text
    assert bpy.ops.atelier.cancel() == {"FINISHED"}
    assert [job.state.name for job in run.jobs] == ["CANCELLED"], run.jobs
    assert run.jobs[0].job_id is None
    assert new_datablocks(before) == {"images": set(), "materials": set(), "meshes": set()}
    assert len(cube.data.uv_layers) == 0 and len(cube.material_slots) == 0
    # Cancel while the first view is being blended in (slices of the pump, 2048 px): the
    # rest of the blend is dropped, no second view is sent, nothing is left either.
    assert bpy.ops.atelier.texture_from_views() == {"FINISHED"}
    run = _run_of(session.jobs[-1])
    session.pump_until_idle(JOB_TIMEOUT, until=lambda: run.jobs[0].finishing is not None)
    assert run.jobs[0].state.name == "RUNNING", run.jobs[0].progress_text
    assert run.jobs[0].progress_text.endswith("finishing"), run.jobs[0].progress_text
    assert bpy.ops.atelier.cancel() == {"FINISHED"}
    session.pump_until_idle(JOB_TIMEOUT)
    assert [job.state.name for job in run.jobs] == ["CANCELLED"], run.jobs
    assert new_datablocks(before) == {"images": set(), "materials": set(), "meshes": set()}
    assert len(cube.data.uv_layers) == 0 and len(cube.material_slots) == 0


def scenario_views_measure(module, url: str) -> None:
    """Figures, not a test: a UV sphere (smooth, 32 x 16) textured from 6 views (4 orbit +
    top + bottom) of 256 px into a 2048 px texture, 4 steps on the daemon's model. Prints
    the time Texture from Views blocks Blender when pressed (placing, rendering every
    view's passes, working out every texel's weights), per view the daemon's time and the
    blend's, and the longest single pump of the add-on's timer (what freezes the UI)."""
    import bmesh
    session = harness.session(module)
    scene = harness.empty_scene()
    mesh = bpy.data.meshes.new("Ball")
    bm = bmesh.new()
    bm.loops.layers.uv.new("UVMap")
    bmesh.ops.create_uvsphere(bm, u_segments=32, v_segments=16, radius=1.0, calc_uvs=True)
    for face in bm.faces:
        face.smooth = True
    ball = harness._link_object(scene, "Ball", mesh, bm, (0, 0, 0))
    harness.select_only([ball])
    view_size = int(os.environ.get("ATELIER_VIEWS_SIZE", "256"))
    texture = int(os.environ.get("ATELIER_VIEWS_TEXTURE", "2048"))
    harness.settings(scene, prompt="marble ball", steps=4, width=view_size,
                     height=view_size, random_seed=False, seed=4)
    passes = os.environ.get("ATELIER_VIEWS_PASSES", "1")    # Pass Size: 1, 2, 4 (a divisor)
    _views(scene, views_from="AUTO", orbit_count=4, elevation=15.0, top=True, bottom=True,
           texture_size=texture, pass_scale=passes)
    started = time.perf_counter()
    assert bpy.ops.atelier.texture_from_views() == {"FINISHED"}
    pressed = time.perf_counter() - started
    run = _run_of(session.jobs[-1])
    pumps, active = [], True
    deadline = time.monotonic() + JOB_TIMEOUT * 4
    while active:
        assert time.monotonic() < deadline, [job.progress_text for job in run.jobs]
        began = time.perf_counter()
        active = session.pump()
        pumps.append(time.perf_counter() - began)
        time.sleep(0.02)
    total = time.perf_counter() - started
    assert [job.state.name for job in run.jobs] == ["DONE"] * 6, \
        [job.progress_text for job in run.jobs]
    target = run.targets[0]
    texels = image_rows(bpy.data.images[run.made[0]])[target.inside, 3]
    steps = sorted((step.seconds, step.where) for step in run.steps)
    cpu = sorted((step.cpu, step.where) for step in run.steps)
    print(f"MEASURE {len(run.views)} views of {view_size}px into {texture}px: press blocks "
          f"{pressed * 1000:.0f} ms, total {total:.2f} s, longest pumps "
          f"{', '.join(f'{p * 1000:.0f}' for p in sorted(pumps)[-6:])} ms of {len(pumps)}, "
          f"longest steps {', '.join(f'{p * 1000:.0f} ({w})' for p, w in steps[-8:])} ms of "
          f"{len(steps)} (median {steps[len(steps) // 2][0] * 1000:.1f}; CPU longest "
          f"{', '.join(f'{c * 1000:.0f} ({w})' for c, w in cpu[-4:])}), "
          f"coverage {float((texels > 0.5).mean()):.4f} of {texels.size} texels")
    for t in run.timings:
        print(f"MEASURE {t['view']}: daemon {t['daemon_s']:.2f} s, Blender {t['blender_s']:.3f} s")
    renders = []
    scene_, view_layer = run._scene()
    for shot in run.shots[:3]:
        began = time.perf_counter()
        with shot.seen_from(scene_, view_layer):
            module.passes.render_passes(scene_, view_layer, view_size // int(passes),
                                        view_size // int(passes),
                                        ("depth", "normal"), as_viewport=True)
        renders.append(time.perf_counter() - began)
    print(f"MEASURE one view's depth + normal render at {view_size // int(passes)}px: "
          f"{', '.join(f'{r * 1000:.0f}' for r in renders)} ms")


def scenario_views_saved(module, url: str) -> None:
    """Texture from Views' settings (views, order, the grazing angle, what counts as seen
    well, texture size, padding) come back with the .blend; the order is followed."""
    scene = harness.empty_scene()
    values = dict(views_from="CAMERAS", orbit_count=7, elevation=-12.5, top=False, bottom=True,
                  distance=6.5, texture_size=2048, view_order="COVERAGE", max_angle=62.0,
                  pass_scale="4",
                  seen_weight=0.8, padding=9, keep_weights=True)
    defaults = bpy.types.Scene.bl_rna.properties["atelier_views"].fixed_type.bl_rna.properties
    assert defaults["view_order"].default == "FRONT"
    for key, value in values.items():   # each differs from its default
        assert getattr(scene.atelier_views, key) != value, key
    _views(scene, **values)
    reopen(os.path.join(os.environ["ATELIER_SCENARIO_DIR"], "views.blend"))
    props = bpy.context.scene.atelier_views
    for key, value in values.items():
        got = getattr(props, key)
        assert (abs(got - value) < 1e-6) if isinstance(value, float) else got == value, \
            (key, got, value)
    _order_follows_the_setting(module)


def _order_follows_the_setting(module) -> None:
    """A floor (a grid facing up): Most Coverage First generates the top view first (the
    orbit, 15 degrees above it, sees it past Max Angle), Front First the front orbit view.
    The views are put in order while the first job is prepared, before anything is sent
    (no daemon here); Cancel then leaves nothing."""
    session = harness.session(module)
    for order, first in (("COVERAGE", "Top"), ("FRONT", "Orbit 1")):
        scene = harness.empty_scene()
        floor = harness.add_grid(scene, "Floor", (0, 0, 0), size=4.0, cuts=4)
        floor.rotation_euler = (-np.pi / 2, 0.0, 0.0)     # its -Y face turned to +Z
        harness.select_only([floor])
        harness.settings(scene, width=SIZE, height=SIZE)
        _views(scene, views_from="AUTO", orbit_count=4, elevation=15.0, top=True,
               bottom=False, texture_size=64, view_order=order)
        before = snapshot()
        assert bpy.ops.atelier.texture_from_views() == {"FINISHED"}
        run = _run_of(session.jobs[-1])
        session.pump_until_idle(JOB_TIMEOUT, until=lambda: bool(run.views))
        names = [shot.name for shot in run.shots]
        assert names[0] == first and run.views[0].name == first, (order, names)
        assert run.jobs[0].state.name == "PREPARING" and run.jobs[0].job_id is None
        assert bpy.ops.atelier.cancel() == {"FINISHED"}
        assert run.jobs[0].state.name == "CANCELLED"
        assert new_datablocks(before) == {"images": set(), "materials": set(), "meshes": set()}


SCENARIOS = {"views": scenario_views, "views_saved": scenario_views_saved, "views_cancel": scenario_views_cancel,
             "views_measure": scenario_views_measure}
