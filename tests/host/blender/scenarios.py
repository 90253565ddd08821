"""Scenarios run inside real Blender against a real Atelier daemon (see harness.py).

Each scenario installs the built add-on zip, runs its operators on a small
scene, pumps the add-on's event loop the way its timer does, and asserts on
the datablocks that result.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bpy  # noqa: E402
import numpy as np  # noqa: E402

import harness  # noqa: E402

JOB_TIMEOUT = 180.0
SIZE = 64
RESTARTED = "the daemon restarted and no longer has this job; generate again"


def image_rows(image: bpy.types.Image) -> np.ndarray:
    """Blender pixels as (height, width, 4) floats, Blender's order: bottom row first."""
    width, height = image.size
    buf = np.empty(width * height * 4, dtype=np.float32)
    image.pixels.foreach_get(buf)
    return buf.reshape(height, width, 4)


def depth_control(params):
    """The depth control of a request (what the add-on sent, or the daemon's echo)."""
    found = [layer for layer in params.controls if layer.kind == "depth"]
    assert len(found) == 1, f"expected one depth control, got {params.controls}"
    assert params.depth is None and params.control is None   # depth goes as a control
    return found[0]


def depth_upload(job) -> np.ndarray:
    """The FLOAT32 depth the add-on sent with ``job``, top row first."""
    frame = next(f for f in job.uploads if f.id == depth_control(job.request).image)
    assert frame.format.name == "FLOAT32", frame.format
    return np.frombuffer(frame.data, dtype="<f4").reshape(frame.height, frame.width)


def new_datablocks(before: dict[str, set[str]]) -> dict[str, set[str]]:
    return {kind: {x.name for x in getattr(bpy.data, kind)} - names
            for kind, names in before.items()}


def snapshot() -> dict[str, set[str]]:
    return {kind: {x.name for x in getattr(bpy.data, kind)}
            for kind in ("images", "materials", "meshes")}


def last_job(session):
    assert session.jobs, "no job was made"
    return session.jobs[-1]


# ------------------------------------------------------------------ scenarios

def scenario_generate(module, url: str) -> None:
    """Test connection, txt2img batch into new images, apply to object, records, history."""
    session = harness.session(module)
    assert bpy.ops.atelier.test_connection() == {"FINISHED"}
    session.pump_until_idle(30, until=lambda: session.status is not None)
    assert session.status.model, session.connection_text
    assert session.status.device in session.connection_text
    assert "tiny" in session.connection_text, session.connection_text

    scene = harness.empty_scene()
    target = harness.add_cube(scene, "Target", (0, 0, 0))
    user_mat = bpy.data.materials.new("UserPaint")
    target.data.materials.append(user_mat)
    harness.select_only([target])
    harness.settings(scene, prompt="red brick wall", seed=1234, random_seed=False, steps=4,
                     width=SIZE, height=SIZE, batch_size=2, tiling="both", preview_every=1,
                     cache_interval=2)
    before = snapshot()
    bpy.ops.ed.undo_push(message="scene ready")   # what loading a file gives in the UI
    assert bpy.ops.atelier.generate(apply_to_object=True) == {"FINISHED"}
    session.pump_until_idle(JOB_TIMEOUT)
    job = last_job(session)
    assert job.state.name == "DONE", job.progress_text
    assert job.total == 4, "no progress arrived"
    # The panel's Step Cache went into the request, and the daemon ran it that way.
    assert job.request.cache_interval == 2 and job.result.params.cache_interval == 2

    made = new_datablocks(before)
    assert len(made["images"]) == 2, made
    assert made["images"] == set(job.image_names), (made, job.image_names)
    images = [bpy.data.images[name] for name in job.image_names]
    for index, image in enumerate(images):
        assert tuple(image.size) == (SIZE, SIZE), tuple(image.size)
        record = image["atelier"]
        assert record["prompt"] == "red brick wall" and record["tiling"] == "both"
        assert record["batch_index"] == index and record["steps"] == 4
        assert record["cache_interval"] == 2
        assert image.name.startswith("red brick wall ") and str(record["seed"]) in image.name
        assert np.ptp(image_rows(image)[..., :3]) > 0.05, "image pixels are flat"

    # Same request + seed straight through the protocol client: the same pixels, and the
    # frame's top row is the image's top row (Blender stores rows bottom first).
    client = module.protocol.client.AtelierClient(url, client_name="scenario").start()
    try:
        client.wait_connected(30)
        done = client.run_job(job.request, timeout=JOB_TIMEOUT)
    finally:
        client.close()
    for frame, image in zip(done.images, images):
        expected = np.frombuffer(frame.data, dtype=np.uint8).reshape(SIZE, SIZE, 4) / 255.0
        got = image_rows(image)[::-1]
        assert np.abs(got - expected).max() < 1.5 / 255, np.abs(got - expected).max()

    # Applied without overwriting: the user's material keeps its slot, a new slot holds ours.
    slots = [slot.material for slot in target.material_slots]
    assert slots[0] == user_mat and len(slots) == 2, slots
    ours = slots[1]
    tex = next(n for n in ours.node_tree.nodes if n.type == "TEX_IMAGE")
    assert tex.image == images[0]
    assert any(link.from_node == tex and link.to_node.type == "BSDF_PRINCIPLED"
               and link.to_socket.name == "Base Color" for link in ours.node_tree.links)
    assert {p.material_index for p in target.data.polygons} == {1}

    # The result is one undo step: undo takes images, material and slot away, redo restores.
    names = [image.name for image in images]
    assert bpy.ops.ed.undo() == {"FINISHED"}
    assert not any(name in bpy.data.images for name in names)
    assert len(bpy.data.objects["Target"].material_slots) == 1
    assert bpy.ops.ed.redo() == {"FINISHED"}
    target, scene = bpy.data.objects["Target"], bpy.context.scene
    images = [bpy.data.images[name] for name in names]
    assert len(target.material_slots) == 2 and target.material_slots[1].material is not None

    # Asked to replace: the active slot's material changes, no slot is added, and the
    # replaced material still exists.
    replaced = target.material_slots[1].material.name
    bpy.context.view_layer.objects.active = target
    assert bpy.ops.atelier.apply_image(image=names[1], replace_material=True) == {"FINISHED"}
    assert len(target.material_slots) == 2 and replaced in bpy.data.materials
    tex = next(n for n in target.material_slots[1].material.node_tree.nodes
               if n.type == "TEX_IMAGE")
    assert tex.image.name == names[1]

    # History: recall puts the first image's settings back.
    history = scene.atelier.history
    assert len(history) == 2 and history[0].image_name == images[0].name
    assert history[0].cache_interval == 2
    harness.settings(scene, prompt="something else", random_seed=True, batch_size=3,
                     cache_interval=1)
    assert bpy.ops.atelier.recall(index=0) == {"FINISHED"}
    props = scene.atelier
    assert props.prompt == "red brick wall" and not props.random_seed
    assert props.cache_interval == 2
    assert props.seed == images[0]["atelier"]["seed"] and props.batch_size == 1

    # The daemon's own error for a bad request reaches the job (and the panel) as text.
    harness.settings(scene, model="no-such-model")
    before = snapshot()
    assert bpy.ops.atelier.generate() == {"FINISHED"}
    session.pump_until_idle(JOB_TIMEOUT)
    job = last_job(session)
    assert job.state.name == "FAILED" and "no-such-model" in job.message, job.message
    assert job.message.startswith("daemon:"), job.message
    assert new_datablocks(before)["images"] == set()

    # Disabling stops the pump timer and closes the connection.
    timer = module.addon._tick
    harness.disable(module)
    assert not bpy.app.timers.is_registered(timer)
    assert module.addon.current_session() is None


def frames_for(url: str, request) -> list[np.ndarray]:
    """What the daemon sends for ``request`` (same seed: the same pixels), as (H, W, 4)
    floats in Blender's row order."""
    module = sys.modules[harness.ADDON]
    client = module.protocol.client.AtelierClient(url, client_name="scenario").start()
    try:
        client.wait_connected(30)
        done = client.run_job(request, timeout=JOB_TIMEOUT)
    finally:
        client.close()
    return [np.frombuffer(f.data, dtype=np.uint8).reshape(f.height, f.width, 4)[::-1] / 255.0
            for f in done.images]


def waits_to_pack(module, image) -> bool:
    """Kept with the .blend: packed into it at the next save (host.keep_images)."""
    return image.packed_file is None and bool(image.get(module.host.PACK_ON_SAVE))


def generate_one(session, prompt: str, seed: int):
    harness.settings(bpy.context.scene, prompt=prompt, steps=2, width=SIZE, height=SIZE,
                     batch_size=1, random_seed=False, seed=seed)
    assert bpy.ops.atelier.generate() == {"FINISHED"}
    job = last_job(session)
    session.pump_until_idle(JOB_TIMEOUT)
    assert job.state.name == "DONE", job.progress_text
    return job


def reopen(path: str) -> None:
    bpy.ops.wm.save_mainfile(filepath=path)
    bpy.ops.wm.open_mainfile(filepath=path)


def scenario_keep(module, url: str) -> None:
    """Results come back after the .blend is saved and opened again: packed into it (the
    default), or saved as PNGs beside it when the preferences say so (packed, and said so,
    while the .blend was never saved)."""
    session = harness.session(module)
    prefs = harness.preferences(module)
    harness.empty_scene()
    folder = os.environ["ATELIER_SCENARIO_DIR"]
    blend = os.path.join(folder, "kept.blend")

    # The default, in a .blend not saved yet: packed when the .blend is saved (packing
    # encodes a PNG, seconds at 4k, so it does not happen as the result lands).
    packed = generate_one(session, "packed", 1)
    assert packed.message.startswith("done in") and ";" not in packed.message, packed.message
    name = packed.image_names[0]
    assert waits_to_pack(module, bpy.data.images[name])
    arrived = frames_for(url, packed.request)[0]
    reopen(blend)
    image = bpy.data.images[name]
    assert image.packed_file is not None and module.host.PACK_ON_SAVE not in image
    assert tuple(image.size) == (SIZE, SIZE), tuple(image.size)
    assert np.abs(image_rows(image) - arrived).max() < 0.5 / 255
    assert image["atelier"]["seed"] == 1

    # PNG files beside the .blend: written at once, found again when the .blend opens.
    prefs.image_storage = "FILES"
    as_file = generate_one(session, "as file", 2)
    name = as_file.image_names[0]
    png = os.path.join(folder, "atelier", name + ".png")
    assert os.path.isfile(png), os.listdir(folder)
    image = bpy.data.images[name]
    assert image.filepath == f"//atelier/{name}.png" and image.packed_file is None
    arrived = image_rows(image)
    reopen(blend)
    assert np.abs(image_rows(bpy.data.images[name]) - arrived).max() < 0.5 / 255

    # PNG files asked for, but the .blend was never saved: packed, and the job says so.
    bpy.ops.wm.read_homefile(use_empty=True)
    assert not bpy.data.filepath and prefs.image_storage == "FILES"
    unsaved = generate_one(session, "never saved", 3)
    assert "never saved, so the images will be packed" in unsaved.message, unsaved.message
    name = unsaved.image_names[0]
    arrived = image_rows(bpy.data.images[name])
    reopen(os.path.join(folder, "first-save.blend"))
    assert bpy.data.images[name].packed_file is not None
    assert np.abs(image_rows(bpy.data.images[name]) - arrived).max() < 0.5 / 255

    # Disabling the add-on packs what still waits: no handler would see the next save.
    prefs.image_storage = "PACK"
    waiting = generate_one(session, "disabled before saving", 4)
    name = waiting.image_names[0]
    assert bpy.data.images[name].packed_file is None
    bpy.ops.preferences.addon_disable(module=module.__name__)
    assert bpy.data.images[name].packed_file is not None


def scenario_render(module, url: str) -> None:
    """Render to image: the camera's render goes up as init image, its Z pass as depth."""
    session = harness.session(module)
    scene = harness.empty_scene()
    harness.add_camera(scene, (0.0, -5.0, 0.0))
    cube = harness.add_cube(scene, "Cube", (0, 0, 0))
    mat = bpy.data.materials.new("White")
    mat.diffuse_color = (1, 1, 1, 1)
    cube.data.materials.append(mat)
    scene.world = bpy.data.worlds.new("Dark")
    scene.world.color = (0.0, 0.0, 0.0)
    light = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    scene.collection.objects.link(light)
    light.rotation_euler = (math.pi / 2, 0, 0)   # shining along +Y onto the cube's front
    scene.render.use_compositing = False    # the add-on must render its passes anyway
    res_before = (scene.render.resolution_x, scene.render.resolution_y,
                  harness.compositor(scene), scene.render.use_compositing)
    harness.settings(scene, prompt="stone block", steps=4, width=SIZE, height=SIZE,
                     strength=0.6, use_depth=True, random_seed=False, seed=7)
    before = snapshot()
    assert bpy.ops.atelier.render_to_image() == {"FINISHED"}
    job = last_job(session)

    # The scene is as it was: resolution, compositor, passes.
    assert (scene.render.resolution_x, scene.render.resolution_y,
            harness.compositor(scene), scene.render.use_compositing) == res_before, res_before
    assert not bpy.context.view_layer.use_pass_z
    assert not any(g.bl_idname == "CompositorNodeTree" for g in bpy.data.node_groups)

    assert job.request.kind == "img2img" and abs(job.request.strength - 0.6) < 1e-6
    init = next(f for f in job.uploads if f.id == job.request.init_image)
    rgba = np.frombuffer(init.data, dtype=np.uint8).reshape(SIZE, SIZE, 4)
    centre, corner = rgba[SIZE // 2, SIZE // 2, :3].astype(int), rgba[1, 1, :3].astype(int)
    assert centre.sum() > corner.sum() + 60, (centre, corner)   # lit cube on a black world
    depth = depth_upload(job)
    assert abs(float(depth[SIZE // 2, SIZE // 2]) - 4.0) < 0.05, depth[SIZE // 2, SIZE // 2]
    assert float(depth[0, 0]) >= depth_control(job.request).background_at, depth[0, 0]
    # The Z pass is depth along the camera's axis: the whole front face (y = -1) reads 4,
    # also off-centre where its distance from the camera is about 4.15; and so it is sent.
    assert abs(float(depth[14, 14]) - 4.0) < 0.02, depth[14, 14]
    assert depth_control(job.request).convention == "z"

    session.pump_until_idle(JOB_TIMEOUT)
    assert job.state.name == "DONE", job.progress_text
    # The daemon ran the job with that very depth upload and init image.
    ran = job.result.params
    assert depth_control(ran).image == depth_control(job.request).image
    assert depth_control(ran).convention == "z" and ran.init_image == init.id
    made = new_datablocks(before)
    assert made["images"] == set(job.image_names) and len(made["images"]) == 1, made
    image = bpy.data.images[job.image_names[0]]
    assert tuple(image.size) == (SIZE, SIZE)
    assert image["atelier"]["kind"] == "img2img" and image["atelier"]["seed"] == 7


def _ray_hits_box(origin: np.ndarray, target: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> bool:
    """Slab test: does the segment origin->target pass through the box before target?"""
    d = target - origin
    t0, t1 = 0.0, 0.999
    for axis in range(3):
        if abs(d[axis]) < 1e-12:
            if not lo[axis] <= origin[axis] <= hi[axis]:
                return False
            continue
        a, b = (lo[axis] - origin[axis]) / d[axis], (hi[axis] - origin[axis]) / d[axis]
        t0, t1 = max(t0, min(a, b)), min(t1, max(a, b))
    return t0 <= t1


def _bilinear(rows: np.ndarray, u: float, v: float) -> np.ndarray:
    """Texel-centred bilinear lookup, written out here so the check does not lean on the
    add-on's own sampler."""
    h, w = rows.shape[:2]
    x, y = min(max(u * w - 0.5, 0), w - 1), min(max(v * h - 0.5, 0), h - 1)
    x0, y0 = int(x), int(y)
    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
    fx, fy = x - x0, y - y0
    top = rows[y0, x0] * (1 - fx) + rows[y0, x1] * fx
    return top * (1 - fy) + (rows[y1, x0] * (1 - fx) + rows[y1, x1] * fx) * fy


def _check_bake(scene, cam, obj, baked, source, new_slot: int, check_hidden: bool) -> None:
    """At the texel nearest each triangle's centre in the object's own UVs: faces that got
    the projection hold the generated image as the camera saw that point; others are empty."""
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector
    from mathutils.geometry import barycentric_transform
    mesh = obj.data
    assert tuple(baked.size) == tuple(source.size)
    w, h = baked.size
    got, src = image_rows(baked), image_rows(source)
    own = mesh.uv_layers["UVMap"]
    mesh.calc_loop_triangles()
    for tri in mesh.loop_triangles:
        uvs = [own.data[i].uv.to_3d() for i in tri.loops]
        corners = [obj.matrix_world @ mesh.vertices[mesh.loops[i].vertex_index].co
                   for i in tri.loops]
        centre = (uvs[0] + uvs[1] + uvs[2]) / 3
        col, row = int(centre.x * w), int(centre.y * h)
        texel = Vector(((col + 0.5) / w, (row + 0.5) / h, 0.0))
        if mesh.polygons[tri.polygon_index].material_index == new_slot:
            world = barycentric_transform(texel, *uvs, *corners)
            u, v, _ = world_to_camera_view(scene, cam, world)
            expected = _bilinear(src, u, v)[:3]
            assert got[row, col, 3] == 1.0, (obj.name, tri.index)
            assert np.abs(got[row, col, :3] - expected).max() < 2.5 / 255, \
                (obj.name, tri.index, got[row, col], expected)
        elif check_hidden:
            assert got[row, col, 3] == 0.0, (obj.name, tri.index, got[row, col])


def scenario_project(module, url: str) -> None:
    """Project texture: depth of the selected objects only, UVs from the camera, material on
    the faces that see the camera and nothing else."""
    job = project_and_check(module)
    assert depth_control(job.request).model is None   # nothing chosen: the daemon's default


def project_and_check(module):
    """Project Texture onto a cube and a wall behind it with the panel as it is, and check
    the depth sent, the UVs, which faces got the projection (none partly hidden), and the
    bakes; a third selected object the camera cannot see gets nothing; the job."""
    from bpy_extras.object_utils import world_to_camera_view
    session = harness.session(module)
    scene = harness.empty_scene()
    scene.render.resolution_x = scene.render.resolution_y = SIZE
    cam = harness.add_camera(scene, (0.0, -10.0, 0.0))
    front = harness.add_cube(scene, "Front", (0, 0, 0))           # faces y = -1 .. 1
    paint = bpy.data.materials.new("Paint")
    front.data.materials.append(paint)
    back = harness.add_grid(scene, "Back", (0, 3, 0), size=8, cuts=8)   # wall behind, 1x1 faces
    other = harness.add_cube(scene, "Other", (2.5, -2, -2.5), size=1.0)  # not selected
    hidden = harness.add_cube(scene, "Hidden", (0, 6, 0), size=1.0)      # behind the wall
    harness.select_only([front, back, hidden])
    harness.settings(scene, prompt="mossy stones", steps=4, width=SIZE, height=SIZE,
                     random_seed=False, seed=3)
    before = snapshot()
    assert bpy.ops.atelier.project_texture(bake=True) == {"FINISHED"}
    job = last_job(session)
    assert "'Hidden'" in job.note and "Front" not in job.note, job.note

    depth = depth_upload(job)
    assert abs(float(depth[SIZE // 2, SIZE // 2]) - 9.0) < 0.05, depth[SIZE // 2, SIZE // 2]
    assert float(depth[0, 0]) >= 1e9, depth[0, 0]     # past the wall's edge: background
    u, v, _ = world_to_camera_view(scene, cam, other.location)
    row, col = int((1 - v) * SIZE), int(u * SIZE)
    # Not selected, but it hides part of the wall: it is in the depth (its front at 7.5).
    assert abs(float(depth[row, col]) - 7.5) < 0.05, depth[row, col]
    session.pump_until_idle(JOB_TIMEOUT)
    assert job.state.name == "DONE", job.progress_text
    assert depth_control(job.result.params).image == depth_control(job.request).image
    made = new_datablocks(before)
    # The generated image, and one bake per object seen into its own UV layout.
    assert made["images"] == set(job.image_names) and len(made["images"]) == 3, made
    assert len(made["materials"]) == 2, made   # one per projected object
    image = bpy.data.images[job.image_names[0]]
    baked = {bpy.data.images[n]["atelier"]["baked_for"]: bpy.data.images[n]
             for n in job.image_names[1:]}
    # Kept to be packed at the save, the bakes too: they come back with the .blend.
    assert all(waits_to_pack(module, bpy.data.images[n]) for n in job.image_names)
    assert len(other.material_slots) == 0 and len(other.data.uv_layers) == 1   # its own
    # Selected, but no face of it is seen: no UV map, slot, material or image.
    assert len(hidden.material_slots) == 0 and len(hidden.data.uv_layers) == 1
    assert "Hidden" not in baked and "'Hidden'" in job.message, job.message

    origin = np.array(cam.location)
    boxes = [(np.array(o.location) - s / 2, np.array(o.location) + s / 2)
             for o, s in ((front, 2.0), (other, 1.0))]
    for obj in (front, back):
        uv_layer = obj.data.uv_layers.get("Atelier Projection")
        assert uv_layer is not None, [l.name for l in obj.data.uv_layers]
        new_slot = len(obj.material_slots) - 1
        ours = obj.material_slots[new_slot].material
        uv_node = next(n for n in ours.node_tree.nodes if n.type == "UVMAP")
        assert uv_node.uv_map == uv_layer.name
        assert next(n for n in ours.node_tree.nodes if n.type == "TEX_IMAGE").image == image
        for loop in obj.data.loops[:16]:
            world = obj.matrix_world @ obj.data.vertices[loop.vertex_index].co
            expected = world_to_camera_view(scene, cam, world)
            got = uv_layer.data[loop.index].uv
            assert abs(got[0] - expected[0]) < 1e-4 and abs(got[1] - expected[1]) < 1e-4
        for poly in obj.data.polygons:
            centre = np.array(obj.matrix_world @ poly.center)
            normal = np.array(obj.matrix_world.to_3x3() @ poly.normal)
            facing = float(np.dot(centre - origin, normal)) < 0
            covered = any(_ray_hits_box(origin, point, lo, hi)
                          for point in _face_points(obj, poly) for lo, hi in boxes)
            expect = facing and not covered
            assert (poly.material_index == new_slot) == expect, (obj.name, poly.index, centre,
                                                                  facing, covered)
        _check_bake(scene, cam, obj, baked[obj.name], image, new_slot,
                    check_hidden=obj is front)
    # The cube: only its front face sees the camera; the rest keep the user's paint.
    assert sorted(p.material_index for p in front.data.polygons) == [0] * 5 + [1]
    assert front.material_slots[0].material == paint
    # The wall had no material: an empty first slot keeps the hidden faces as they were.
    assert back.material_slots[0].material is None
    back_new = sum(p.material_index == 1 for p in back.data.polygons)
    assert 0 < back_new < len(back.data.polygons), back_new
    # Near the cube's silhouette (x = 1.44 on the wall) the face from x = 1 to 2 shows its
    # centre to the camera, but the cube hides its left part: it keeps its old look.
    beside = next(p for p in back.data.polygons
                  if np.allclose(back.matrix_world @ p.center, (1.5, 3.0, 0.5)))
    assert beside.material_index == 0
    assert not any(_ray_hits_box(origin, np.array(back.matrix_world @ beside.center), lo, hi)
                   for lo, hi in boxes)
    return job


def _face_points(obj, poly, steps: int = 10) -> list[np.ndarray]:
    """Points all over a quad, its corners and edges included, in world space."""
    a, b, c, d = (np.array(obj.matrix_world @ obj.data.vertices[i].co) for i in poly.vertices)
    grid = np.linspace(0.0, 1.0, steps + 1)
    return [(1 - t) * ((1 - s) * a + s * b) + t * ((1 - s) * d + s * c)
            for s in grid for t in grid]


def depth_model_ids(module, props) -> list[str]:
    """What the Depth Model dropdown offers, as Blender gets it from the add-on."""
    return [item[0] for item in module.properties.depth_model_items(props, bpy.context)]


def scenario_depth_model(module, url: str) -> None:
    """The Depth Model dropdown lists the daemon's ControlNets and T2I-Adapters once
    connected; the one picked conditions Project Texture, is recorded and recalled, and a
    name the daemon does not list leaves the panel drawable."""
    session = harness.session(module)
    scene = harness.empty_scene()
    props = scene.atelier
    item_name = bpy.types.UILayout.enum_item_name
    # Not connected yet: only the daemon's default, chosen.
    assert depth_model_ids(module, props) == ["DEFAULT"] and props.depth_model == "DEFAULT"
    assert props.control_model == ""
    assert item_name(props, "depth_model", "DEFAULT") == "Daemon default"
    props.control_model = "tiny-adapter"   # saved with a file, say: shown, not yet checked
    assert props.depth_model == "tiny-adapter"
    assert item_name(props, "depth_model", "tiny-adapter") == "tiny-adapter"
    props.depth_model = "DEFAULT"
    assert props.control_model == ""
    prop = props.bl_rna.properties["depth_model"]
    assert prop.name == "Depth Model"
    assert "once per job" in prop.description and "every step" in prop.description

    assert bpy.ops.atelier.test_connection() == {"FINISHED"}
    session.pump_until_idle(30, until=lambda: bool(session.conditioners))
    offered = depth_model_ids(module, props)
    assert offered[0] == "DEFAULT" and {"tiny-adapter", "tiny-controlnet"} <= set(offered)
    assert "tiny" not in offered and "tiny-depth" not in offered, offered   # not conditioners
    # Blender itself sees these items, with their kind in the label.
    assert item_name(props, "depth_model", "tiny-adapter") == "tiny-adapter (T2I-Adapter: fast)"
    assert item_name(props, "depth_model", "tiny-controlnet") == "tiny-controlnet (ControlNet)"
    assert item_name(props, "depth_model", "tiny") == ""
    # The panels draw it after Depth Strength.
    log = draw_panels(module, "VIEW_3D")
    assert log.index(("prop", "control_scale")) < log.index(("prop", "depth_model")), log

    props.depth_model = "tiny-adapter"   # what picking it from the dropdown does
    assert props.control_model == "tiny-adapter" and props.depth_model == "tiny-adapter"
    job = project_and_check(module)
    assert depth_control(job.request).model == "tiny-adapter", job.request.controls
    assert job.state.name == "DONE"
    assert depth_control(job.result.params).model == "tiny-adapter"
    image = bpy.data.images[job.image_names[0]]
    assert image["atelier"]["control_model"] == "tiny-adapter"
    entry = props.history[-1]
    assert entry.depth and entry.control_model == "tiny-adapter"

    # Recall puts the adapter back; a result made without depth leaves the choice alone.
    props.depth_model = "DEFAULT"
    assert props.control_model == ""
    assert bpy.ops.atelier.recall(index=len(props.history) - 1) == {"FINISHED"}
    assert props.depth_model == "tiny-adapter"
    props.depth_model = "tiny-controlnet"
    values = {key: getattr(props.history[-1], key) for key in module.settings.HISTORY_FIELDS}
    plain = props.history.add()   # (adding may move the others: no older item references)
    for key, value in values.items():
        setattr(plain, key, value)
    plain.depth = False
    assert bpy.ops.atelier.recall(index=len(props.history) - 1) == {"FINISHED"}
    assert props.control_model == "tiny-controlnet"

    # A name the daemon no longer lists: shown as such, the panel still draws, and the
    # request still names it (the daemon answers for it).
    props.control_model = "gone-adapter"
    assert props.depth_model == "gone-adapter"
    assert item_name(props, "depth_model", "gone-adapter") == \
        "gone-adapter (not listed by the daemon)"
    draw_panels(module, "VIEW_3D")
    assert depth_control(module.settings.build_request(
        module.settings.settings_from(props), depth_upload="d" * 32)).model == "gone-adapter"
    props.depth_model = "DEFAULT"
    assert props.control_model == "" and "gone-adapter" not in depth_model_ids(module, props)


def lora_ids(module, row) -> list[str]:
    """What a LoRA row's dropdown offers, as Blender gets it from the add-on."""
    return [item[0] for item in module.properties.lora_items(row, bpy.context)]


def scenario_loras(module, url: str) -> None:
    """LoRA rows and the Sampler Preset (a daemon whose models folder holds the tiny LoRA
    'tiny_style', see test_blender_loras_reach_the_daemon): the rows' dropdown lists the
    daemon's LoRAs once connected, a Generate with one row and a preset sends both and the
    daemon runs them, the result records them, Recall puts them back, at most 8 rows, and
    the rows are saved with the .blend."""
    session = harness.session(module)
    scene = harness.empty_scene()
    props = scene.atelier
    item_name = bpy.types.UILayout.enum_item_name
    assert len(props.loras) == 0 and props.sampler_preset_choice == "NONE"
    assert bpy.ops.atelier.lora_add() == {"FINISHED"}
    row = props.loras[0]
    assert row.lora_name == "" and row.lora_choice == "NONE" and row.weight == 1.0
    assert lora_ids(module, row) == ["NONE"]   # not connected: nothing listed yet
    for name in ("lora_choice", "weight", "lora_name"):
        assert row.bl_rna.properties[name].description, name
    assert "overrides Steps" in props.bl_rna.properties["sampler_preset_choice"].description

    assert bpy.ops.atelier.test_connection() == {"FINISHED"}
    session.pump_until_idle(30, until=lambda: bool(session.loras))
    assert ("tiny_style", "sd15") in session.loras, session.loras
    assert "tiny_style" not in session.models   # no model to make images with
    assert "tiny_style" in lora_ids(module, row), lora_ids(module, row)
    row.lora_choice = "tiny_style"   # what picking it from the dropdown does
    assert row.lora_name == "tiny_style" and row.lora_choice == "tiny_style"
    assert item_name(row, "lora_choice", "tiny_style") == "tiny_style"
    row.weight = 0.5
    presets = [item[0] for item in module.properties.sampler_preset_items(props, bpy.context)]
    assert presets[0] == "NONE" and "lcm_4" in presets and \
        set(presets[1:]) == set(session.sampler_presets), presets
    props.sampler_preset_choice = "lcm_4"
    assert props.sampler_preset == "lcm_4"
    log = draw_panels(module, "VIEW_3D")
    shown = " ".join(entry[1] for entry in log if entry[0] == "label")
    assert "overrides Steps" in shown and "1 LoRA(s) sent" in shown, shown
    assert ("prop", "lora_choice") in log and ("prop", "sampler_preset_choice") in log, log

    job = generate_one(session, "mossy stone", 5)
    assert [(l.name, l.weight) for l in job.request.loras] == [("tiny_style", 0.5)]
    assert job.request.sampler_preset == "lcm_4"
    params = job.result.params
    assert [(l.name, l.weight) for l in params.loras] == [("tiny_style", 0.5)], params.loras
    assert params.sampler_preset == "lcm_4" and params.steps == 4 and \
        params.scheduler == "lcm", params
    image = bpy.data.images[job.image_names[0]]
    assert json.loads(image["atelier"]["loras"]) == [["tiny_style", 0.5]]
    assert image["atelier"]["sampler_preset"] == "lcm_4"
    entry = props.history[-1]
    assert json.loads(entry.loras) == [["tiny_style", 0.5]] and entry.sampler_preset == "lcm_4"

    # Recall puts the LoRA rows and the preset back.
    props.loras.clear()
    props.sampler_preset_choice = "NONE"
    assert props.sampler_preset == ""
    assert bpy.ops.atelier.recall(index=len(props.history) - 1) == {"FINISHED"}
    assert [(r.lora_name, r.weight) for r in props.loras] == [("tiny_style", 0.5)]
    assert props.sampler_preset == "lcm_4" and props.sampler_preset_choice == "lcm_4"

    # At most 8 rows: the ninth is refused with a report.
    for _ in range(7):
        assert bpy.ops.atelier.lora_add() == {"FINISHED"}
    assert "at most 8 LoRAs" in refused(bpy.ops.atelier.lora_add)
    assert bpy.ops.atelier.lora_remove(index=3) == {"FINISHED"} and len(props.loras) == 7
    while len(props.loras) > 1:
        bpy.ops.atelier.lora_remove()
    # A name the daemon does not list stays chosen, and says so.
    props.loras[0].lora_name = "gone_lora"
    assert item_name(props.loras[0], "lora_choice", "gone_lora") == \
        "gone_lora (not listed by the daemon)"
    draw_panels(module, "IMAGE_EDITOR")

    # The rows and the preset are saved with the .blend.
    reopen(os.path.join(os.environ["ATELIER_SCENARIO_DIR"], "loras.blend"))
    props = bpy.context.scene.atelier
    assert [(r.lora_name, r.weight) for r in props.loras] == [("gone_lora", 0.5)]
    assert props.sampler_preset == "lcm_4"


def scenario_cancel(module, url: str) -> None:
    """Cancel during a long job: the preview image that had arrived is gone, nothing remains."""
    session = harness.session(module)
    scene = harness.empty_scene()
    cube = harness.add_cube(scene, "Target", (0, 0, 0))
    harness.select_only([cube])
    harness.settings(scene, prompt="long job", steps=150, width=SIZE, height=SIZE,
                     preview_every=1, apply_to_object=True)
    before = snapshot()
    assert bpy.ops.atelier.generate() == {"FINISHED"}
    job = last_job(session)
    session.pump_until_idle(JOB_TIMEOUT, until=lambda: bool(job.image_names))
    assert job.state.name == "RUNNING", job.progress_text
    preview = bpy.data.images[job.image_names[0]]
    assert preview.name == "long job (preview)", preview.name
    assert np.ptp(image_rows(preview)[..., :3]) > 0.0, "preview pixels did not arrive"
    assert bpy.ops.atelier.cancel() == {"FINISHED"}
    session.pump_until_idle(JOB_TIMEOUT)
    assert job.state.name == "CANCELLED", job.progress_text
    assert job.step < 150
    made = new_datablocks(before)
    assert made == {"images": set(), "materials": set(), "meshes": set()}, made
    assert len(cube.material_slots) == 0


def drive_live(module, session, until, timeout: float = JOB_TIMEOUT,
               least: float = 0.0) -> None:
    """Run Live's timer (when registered) and the session's pump the way Blender's timers do
    (background Blender runs none), until ``until()`` holds and ``least`` seconds passed."""
    timer = module.live.timer
    start = time.monotonic()
    while True:
        if bpy.app.timers.is_registered(timer):
            timer()
        session.pump()
        waited = time.monotonic() - start
        if waited >= least and until():
            return
        assert waited < timeout, f"Live: {session.live.line()} after {timeout:g} s"
        time.sleep(0.02)


def live_init(live) -> np.ndarray:
    """The init image of the newest live job sent, top row first."""
    _, request, uploads = live.last_sent
    frame = next(f for f in uploads if f.id == request.init_image)
    return np.frombuffer(frame.data, dtype=np.uint8).reshape(frame.height, frame.width, 4)


def live_handlers(module) -> list:
    return [h for h in (*bpy.app.handlers.depsgraph_update_post, *bpy.app.handlers.load_pre)
            if h in (module.live.depsgraph_updated, module.live.file_loading)]


def scenario_live(module, url: str) -> None:
    """Live: on, the first result lands in "Atelier Live"; nothing is sent while nothing
    changes; a camera move sends the new view and its result replaces the old; a burst of
    moves runs a handful of jobs and shows the newest; a long job is superseded without a
    report; Live off cancels the running job and takes its timer and handlers away; Apply
    keeps the result; opening a file and disabling the add-on turn Live off."""
    session = harness.session(module)
    live = session.live
    scene = harness.empty_scene()
    cam = harness.add_camera(scene, (0.0, -5.0, 0.0))
    harness.add_cube(scene, "Cube", (0, 0, 0))
    light = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    scene.collection.objects.link(light)
    light.rotation_euler = (math.pi / 2, 0, 0)
    harness.settings(scene, prompt="live stone", steps=4, width=SIZE, height=SIZE,
                     random_seed=False, seed=11, live_strength=0.6)
    timer = module.live.timer
    assert not bpy.app.timers.is_registered(timer) and not live_handlers(module)

    assert bpy.ops.atelier.live(action="ON") == {"FINISHED"}
    assert live.on and bpy.app.timers.is_registered(timer)
    assert len(live_handlers(module)) == 2
    drive_live(module, session, lambda: live.results_shown == 1 and live.idle)
    image = bpy.data.images["Atelier Live"]
    assert tuple(image.size) == (SIZE, SIZE)
    first, first_init = image_rows(image).copy(), live_init(live).copy()
    first_job = live.shown.job_id
    ran = live.shown.params
    assert ran.kind == "img2img" and abs(ran.strength - 0.6) < 1e-6 and ran.seed == 11
    assert ran.init_image == live.last_sent[1].init_image and ran.preview_every == 0
    assert image["atelier"]["seed"] == 11 and image["atelier"]["job_id"] == first_job
    # The capture and the image write are no edits: nothing more is sent while idle.
    drive_live(module, session, lambda: True, least=1.0)
    assert live.jobs_sent == 1, live.jobs_sent

    # A camera move: the new view goes up and its result replaces the first.
    cam.location.x += 1.5
    bpy.context.view_layer.update()
    drive_live(module, session, lambda: live.results_shown == 2 and live.idle)
    assert live.jobs_sent == 2 and live.shown.job_id != first_job
    assert live.shown.params.init_image == live.last_sent[1].init_image
    assert np.abs(live_init(live).astype(int) - first_init.astype(int)).max() > 30, \
        "the camera moved but the init image did not change"
    assert np.abs(image_rows(image) - first).max() > 0.01, "the live image did not change"

    # An edit that is not a camera move (the cube moves) sends too.
    bpy.data.objects["Cube"].location.z += 0.5
    bpy.context.view_layer.update()
    drive_live(module, session, lambda: live.results_shown == 3 and live.idle)
    assert live.jobs_sent == 3
    # So does a setting: another seed.
    scene.atelier.seed = 12
    drive_live(module, session, lambda: live.results_shown == 4 and live.idle)
    assert live.jobs_sent == 4 and live.shown.params.seed == 12

    # A burst of ten moves 50 ms apart: a handful of jobs, the newest shown.
    for _ in range(10):
        cam.location.x -= 0.1
        bpy.context.view_layer.update()
        drive_live(module, session, lambda: True, least=0.05)
    drive_live(module, session, lambda: live.idle)
    assert 4 < live.jobs_sent <= 4 + 2, live.jobs_sent
    assert live.results.shows_newest and \
        live.shown.params.init_image == live.last_sent[1].init_image

    # Long jobs: a newer state supersedes the running one, and nobody is told.
    harness.settings(scene, steps=150)
    cam.location.z += 0.3
    bpy.context.view_layer.update()
    sent = live.jobs_sent
    drive_live(module, session, lambda: live.jobs_sent == sent + 1)
    superseded = live.superseded
    cam.location.z += 0.3
    bpy.context.view_layer.update()
    drive_live(module, session, lambda: live.jobs_sent == sent + 2)
    drive_live(module, session, lambda: live.superseded == superseded + 1)
    assert live.problem is None, live.problem
    assert all(job.state.name != "CANCELLED" for job in session.jobs)

    # Live off while that job runs: it is cancelled; the timer and the handlers are gone.
    drive_live(module, session, lambda: live.results.newest_id() is not None)
    running = live.results.newest_id()
    shown_before = live.results_shown
    assert bpy.ops.atelier.live(action="OFF") == {"FINISHED"}
    assert not live.on and not bpy.app.timers.is_registered(timer) and not live_handlers(module)
    drive_live(module, session, lambda: not live.stopping)
    assert running in live.cancelled, (running, live.cancelled)
    assert live.results_shown == shown_before
    cam.location.x += 1.0    # no longer watched
    bpy.context.view_layer.update()
    drive_live(module, session, lambda: True, least=0.5)
    assert live.jobs_sent == sent + 2

    # Apply keeps the live result as an ordinary result, in the History.
    before = snapshot()
    assert bpy.ops.atelier.live_apply() == {"FINISHED"}
    made = new_datablocks(before)["images"]
    assert len(made) == 1, made
    kept = bpy.data.images[made.pop()]
    assert kept.name.startswith("live stone 12") and waits_to_pack(module, kept)
    assert np.abs(image_rows(kept) - image_rows(image)).max() < 1 / 255 + 1e-6
    assert scene.atelier.history[-1].image_name == kept.name

    # Opening a file turns Live off, and so does disabling the add-on.
    assert bpy.ops.atelier.live(action="ON") == {"FINISHED"}
    assert bpy.app.timers.is_registered(timer)
    reopen(os.path.join(os.environ["ATELIER_SCENARIO_DIR"], "live.blend"))
    assert not live.on and not bpy.app.timers.is_registered(timer) and not live_handlers(module)
    assert bpy.ops.atelier.live(action="ON") == {"FINISHED"}
    assert live.on and len(live_handlers(module)) == 2
    handlers = (module.live.depsgraph_updated, module.live.file_loading)
    harness.disable(module)
    assert not bpy.app.timers.is_registered(timer)
    assert not any(h in handlers for h in (*bpy.app.handlers.depsgraph_update_post,
                                           *bpy.app.handlers.load_pre))


def pattern_image(name: str, width: int, height: int) -> bpy.types.Image:
    """An 8-bit sRGB image of stripes and a gradient (a stand-in for a colour texture)."""
    image = bpy.data.images.new(name, width=width, height=height, alpha=True)
    y, x = np.mgrid[0:height, 0:width]
    rgba = np.stack([x / max(1, width - 1), (y // 4 % 2) * 0.8 + 0.1,
                     0.5 + 0.4 * np.sin(x / 3.0), np.ones_like(x, dtype=float)], axis=-1)
    image.pixels.foreach_set(rgba.astype(np.float32).reshape(-1))
    image.update()
    image.pack()
    return image


def scenario_upscale(module, url: str) -> None:
    """Upscale the History's selected result 4x with Lanczos (seamless axes kept), then an
    image by name to a target size with a refine: new packed images '<name> x4' /
    '<name> WxH' in the History at the size asked, the source untouched, and the daemon ran
    what the panel asked."""
    session = harness.session(module)
    scene = harness.empty_scene()
    props = scene.atelier
    harness.settings(scene, tiling="both")
    source_job = generate_one(session, "mossy stone", 5)
    source = bpy.data.images[source_job.image_names[0]]
    assert source["atelier"]["tiling"] == "both"
    before_pixels = image_rows(source).copy()
    assert props.history[props.history_index].image_name == source.name
    # The Upscaler menu: Lanczos first, then the daemon's upscalers (once listed).
    ids = [item[0] for item in module.properties.upscaler_items(props, bpy.context)]
    assert ids[0] == "LANCZOS", ids
    harness.settings(scene, tiling="none", upscale_mode="FACTOR", upscale_factor="4",
                     refine_strength=0.0)
    before = snapshot()
    assert bpy.ops.atelier.upscale() == {"FINISHED"}
    job = last_job(session)
    session.pump_until_idle(JOB_TIMEOUT)
    assert job.state.name == "DONE", job.progress_text
    made = new_datablocks(before)
    assert made["images"] == {f"{source.name} x4"} and not made["materials"], made
    big = bpy.data.images[f"{source.name} x4"]
    assert tuple(big.size) == (SIZE * 4, SIZE * 4), tuple(big.size)
    assert waits_to_pack(module, big) and big["atelier"]["label"] == "upscaled"
    # The daemon was asked for a plain 4x Lanczos upscale on the axes the source tiles on
    # (its record, not the panel's Seamless), and ran it so.
    params = job.result.params
    assert params.kind == "upscale" and params.upscale.scale == 4.0
    assert params.upscale.upscaler is None and params.upscale.refine_strength == 0.0
    assert (params.width, params.height) == (SIZE * 4, SIZE * 4)
    assert job.request.tiling == "both" and job.result.tiling == "both", job.result.tiling
    assert job.result.model == "lanczos", job.result.model
    # Lanczos keeps the picture: the 4x image averaged back over 4x4 blocks is the source.
    shrunk = image_rows(big)[..., :3].reshape(SIZE, 4, SIZE, 4, 3).mean(axis=(1, 3))
    assert np.abs(shrunk - before_pixels[..., :3]).mean() < 0.03
    assert np.array_equal(image_rows(source), before_pixels) and source.name in bpy.data.images
    assert props.history[-1].image_name == big.name and props.history_index == len(props.history) - 1

    # To a size, with a refine, naming the image: the refine's settings come from the panel.
    pattern = pattern_image("Planks", 40, 24)
    harness.settings(scene, upscale_mode="SIZE", upscale_width=96, upscale_height=64,
                     refine_strength=0.5, prompt="oak planks", steps=4, random_seed=False,
                     seed=9, tiling="x")
    assert bpy.ops.atelier.upscale(image="Planks") == {"FINISHED"}
    job = last_job(session)
    session.pump_until_idle(JOB_TIMEOUT)
    assert job.state.name == "DONE", job.progress_text
    refined = bpy.data.images["Planks 96x64"]
    assert tuple(refined.size) == (96, 64)
    params = job.result.params
    assert params.upscale.scale is None and params.upscale.refine_strength == 0.5
    assert (params.width, params.height, params.seed, params.prompt) == (96, 64, 9, "oak planks")
    assert job.result.tiling == "x" and job.result.model != "lanczos", job.result
    assert job.total > 1, "no progress arrived"
    assert tuple(pattern.size) == (40, 24)
    # A target smaller than the image: refused before anything is sent.
    harness.settings(scene, upscale_width=128, upscale_height=512)
    jobs = len(session.jobs)
    assert "smaller than the image" in refused(bpy.ops.atelier.upscale, image=big.name)
    assert len(session.jobs) == jobs


def scenario_upscaler(module, url: str) -> None:
    """A daemon with the upscaler '2x-tiny': the Upscaler menu offers it after Lanczos, the
    Model menu does not; Upscale with it makes '<name> x4' through the model, or, where the
    daemon lacks spandrel, fails naming it and leaves no image."""
    session = harness.session(module)
    scene = harness.empty_scene()
    props = scene.atelier
    assert bpy.ops.atelier.test_connection() == {"FINISHED"}
    session.pump_until_idle(30, until=lambda: session.models_listed)
    ids = [item[0] for item in module.properties.upscaler_items(props, bpy.context)]
    assert ids == ["LANCZOS", "2x-tiny"], ids
    assert "2x-tiny" not in session.models, session.models
    props.upscaler_choice = "2x-tiny"
    assert props.upscaler == "2x-tiny"
    pattern_image("Tiles", 32, 32)
    harness.settings(scene, upscale_mode="FACTOR", upscale_factor="4", refine_strength=0.0)
    before = snapshot()
    assert bpy.ops.atelier.upscale(image="Tiles") == {"FINISHED"}
    job = last_job(session)
    session.pump_until_idle(JOB_TIMEOUT)
    assert job.request.upscale.upscaler == "2x-tiny"
    made = new_datablocks(before)
    if job.state.name == "FAILED":
        assert "spandrel" in job.message, job.message
        assert made["images"] == set(), made
    else:
        assert job.state.name == "DONE" and job.result.model == "2x-tiny", job.progress_text
        assert tuple(bpy.data.images["Tiles x4"].size) == (128, 128)
    props.upscaler_choice = "LANCZOS"
    assert props.upscaler == ""


def linked(tree, from_node: str, from_socket: str, to_node: str, to_socket: str) -> bool:
    return any(l.from_node.name == from_node and l.from_socket.name == from_socket
               and l.to_node.name == to_node and l.to_socket.name == to_socket
               for l in tree.links)


def check_material(material, color) -> dict:
    """The Make Material node tree as pbr_material documents it; returns the map images."""
    tree = material.node_tree
    bsdf = next(n for n in tree.nodes if n.type == "BSDF_PRINCIPLED")
    nodes = tree.nodes
    assert nodes["Atelier Color"].image == color and nodes["Atelier Color"].label
    assert linked(tree, "Atelier Color", "Color", bsdf.name, "Base Color")
    assert linked(tree, "Atelier Roughness", "Color", bsdf.name, "Roughness")
    assert linked(tree, "Atelier Normal", "Color", "Atelier Normal Map", "Color")
    assert nodes["Atelier Normal Map"].space == "TANGENT"
    assert linked(tree, "Atelier Normal Map", "Normal", "Atelier Bump", "Normal")
    assert linked(tree, "Atelier Height", "Color", "Atelier Bump", "Height")
    assert linked(tree, "Atelier Bump", "Normal", bsdf.name, "Normal")
    for name in ("Atelier Color", "Atelier Roughness", "Atelier Normal", "Atelier Height"):
        assert linked(tree, "Atelier Mapping", "Vector", name, "Vector"), name
    maps = {key: nodes[f"Atelier {key.title()}"].image for key in ("normal", "roughness",
                                                                   "height")}
    for key, image in maps.items():
        assert image.colorspace_settings.name == "Non-Color", (key, image.colorspace_settings.name)
        assert image.name == f"{color.name} {key}", image.name
    assert color.colorspace_settings.name == "sRGB"
    return maps


def scenario_material(module, url: str) -> None:
    """Make Material: the daemon gets a texture_set job for the colour image and its maps
    come back labelled; a new material in a new slot of the active object, wired as
    pbr_material says, the user's material untouched; maps packed while the .blend is
    unsaved (and said so), saved as PNGs beside it once saved; all of it is there again
    after saving and reopening."""
    session = harness.session(module)
    prefs = harness.preferences(module)
    assert prefs.image_storage == "PACK"   # Make Material saves files whatever this says
    folder = os.environ["ATELIER_SCENARIO_DIR"]
    bpy.ops.wm.read_homefile(use_empty=True)   # no object to put a material on
    pattern_image("Probe", 16, 16)
    assert "select the mesh object" in refused(bpy.ops.atelier.make_material, image="Probe")
    assert not session.jobs
    for saved in (False, True):
        bpy.ops.wm.read_homefile(use_empty=True)
        scene = bpy.context.scene
        cube = harness.add_cube(scene, "Crate", (0, 0, 0))
        user_mat = bpy.data.materials.new("UserPaint")
        user_mat.use_nodes = True
        user_nodes = sorted(n.name for n in user_mat.node_tree.nodes)
        cube.data.materials.append(user_mat)
        harness.select_only([cube])
        bpy.context.view_layer.objects.active = cube
        color = pattern_image("Bricks", 48, 32)
        harness.settings(scene, tiling="both", normal_strength=12.0)
        blend = os.path.join(folder, "material.blend")
        if saved:
            bpy.ops.wm.save_as_mainfile(filepath=blend)
        before = snapshot()
        assert bpy.ops.atelier.make_material(image="Bricks") == {"FINISHED"}
        job = last_job(session)
        session.pump_until_idle(JOB_TIMEOUT)
        assert job.state.name == "DONE", job.progress_text
        params = job.result.params
        assert params.kind == "texture_set" and params.texture.maps == ["normal", "roughness",
                                                                       "height"]
        assert params.texture.normal_strength == 12.0 and job.result.tiling == "both"
        assert [i.label for i in job.result.images] == ["normal", "roughness", "height"]
        made = new_datablocks(before)
        assert made["materials"] == {"Bricks PBR"}, made
        assert made["images"] == {"Bricks normal", "Bricks roughness", "Bricks height"}, made
        assert [s.material.name for s in cube.material_slots] == ["UserPaint", "Bricks PBR"]
        assert sorted(n.name for n in user_mat.node_tree.nodes) == user_nodes
        maps = check_material(bpy.data.materials["Bricks PBR"], color)
        for image in maps.values():
            assert tuple(image.size) == (48, 32), tuple(image.size)
        # A flat-ish colour gives a normal map pointing mostly out of the surface (blue).
        normal = image_rows(maps["normal"])
        assert normal[..., 2].mean() > 0.7, normal[..., 2].mean()
        if not saved:
            assert "never saved, so the images will be packed" in job.message, job.message
            assert all(waits_to_pack(module, image) for image in maps.values())
            continue
        assert ";" not in job.message, job.message
        for key, image in maps.items():
            path = os.path.join(folder, "atelier", f"Bricks {key}.png")
            assert os.path.isfile(path), os.listdir(folder)
            assert image.filepath == f"//atelier/Bricks {key}.png" and image.packed_file is None
        pixels = {key: image_rows(image).copy() for key, image in maps.items()}
        reopen(blend)
        cube = bpy.data.objects["Crate"]
        assert [s.material.name for s in cube.material_slots] == ["UserPaint", "Bricks PBR"]
        maps = check_material(bpy.data.materials["Bricks PBR"], bpy.data.images["Bricks"])
        for key, image in maps.items():
            assert np.abs(image_rows(image) - pixels[key]).max() < 0.5 / 255, key

    # Only the maps ticked are asked for and wired; the BSDF keeps its own roughness.
    scene = bpy.context.scene
    scene.atelier.material_maps = set()
    assert "tick at least one" in refused(bpy.ops.atelier.make_material, image="Bricks")
    scene.atelier.material_maps = {"normal"}
    assert bpy.ops.atelier.make_material(image="Bricks") == {"FINISHED"}
    job = last_job(session)
    session.pump_until_idle(JOB_TIMEOUT)
    assert job.state.name == "DONE", job.progress_text
    assert job.result.params.texture.maps == ["normal"]
    material = bpy.data.materials["Bricks PBR.001"]
    nodes = material.node_tree.nodes
    assert "Atelier Roughness" not in nodes and "Atelier Bump" not in nodes
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    assert not bsdf.inputs["Roughness"].is_linked
    [link] = bsdf.inputs["Normal"].links
    assert link.from_node.name == "Atelier Normal Map"
    assert nodes["Atelier Normal"].image.name.startswith("Bricks normal")


def scenario_asset_cancel(module, url: str) -> None:
    """Cancel right after Upscale (a long refine) and after Make Material: no new images or
    materials, the object's slots as they were."""
    session = harness.session(module)
    scene = harness.empty_scene()
    cube = harness.add_cube(scene, "Crate", (0, 0, 0))
    harness.select_only([cube])
    bpy.context.view_layer.objects.active = cube
    pattern_image("Bricks", 64, 64)
    harness.settings(scene, upscale_mode="FACTOR", upscale_factor="4", refine_strength=1.0,
                     steps=150, prompt="long refine", preview_every=1)
    for operator in (bpy.ops.atelier.upscale, bpy.ops.atelier.make_material):
        before = snapshot()
        assert operator(image="Bricks") == {"FINISHED"}
        job = last_job(session)
        if operator == bpy.ops.atelier.upscale:   # let it start and send a preview
            session.pump_until_idle(JOB_TIMEOUT, until=lambda: job.step > 0)
        assert bpy.ops.atelier.cancel() == {"FINISHED"}
        session.pump_until_idle(JOB_TIMEOUT)
        assert job.state.name == "CANCELLED", job.progress_text
        made = new_datablocks(before)
        assert made == {"images": set(), "materials": set(), "meshes": set()}, made
        assert len(cube.material_slots) == 0


def ask_test(action: str) -> None:
    """Ask the test driving this Blender to do ``action`` to the daemon (stop, kill, start
    one on the same port) and wait until it is done; files in ATELIER_CUE_DIR carry it."""
    folder = os.environ["ATELIER_CUE_DIR"]
    number = len([n for n in os.listdir(folder) if not n.endswith(".done")])
    cue = os.path.join(folder, f"{number:02d}-{action}")
    with open(cue, "w") as handle:
        handle.write(action)
    deadline = time.monotonic() + JOB_TIMEOUT
    while not os.path.exists(cue + ".done"):
        assert time.monotonic() < deadline, f"the test did not do {action!r}"
        time.sleep(0.05)


LONG_SIZE = 192   # 150 steps at SIZE took 2.4 s in CI, which a kill could arrive after


def long_job(session, prompt: str):
    """A 150-step job (the daemon's most) at LONG_SIZE, once its first preview is in."""
    harness.settings(bpy.context.scene, prompt=prompt, steps=150, width=LONG_SIZE,
                     height=LONG_SIZE, preview_every=1)
    assert bpy.ops.atelier.generate() == {"FINISHED"}
    job = last_job(session)
    session.pump_until_idle(JOB_TIMEOUT, until=lambda: bool(job.image_names))
    return job


def scenario_daemon_goes_away(module, url: str) -> None:
    """The daemon goes away mid-job in three ways (the test does what ask_test says): no job
    waits forever, each says what happened, and nothing half-made is left."""
    session = harness.session(module)
    harness.empty_scene()
    nothing = {"images": set(), "materials": set(), "meshes": set()}
    before = snapshot()

    # Stopped (SIGTERM): the daemon stops the running job on its way down and says so
    # (an error, or a cancel nobody here asked for).
    job = long_job(session, "stopped")
    ask_test("stop")
    session.pump_until_idle(JOB_TIMEOUT, until=lambda: job.state.finished)
    assert job.state.name == "FAILED", job.progress_text
    assert "shut down" in job.message or job.message.startswith("daemon:"), job.message
    assert new_datablocks(before) == nothing
    ask_test("start")

    # Killed (SIGKILL) and started again: the new daemon does not know the jobs. The running
    # one ends saying so; the queued one, cancelled after the reconnect, ends cancelled.
    job = long_job(session, "restarted")
    assert bpy.ops.atelier.generate() == {"FINISHED"}
    queued = last_job(session)
    session.pump_until_idle(JOB_TIMEOUT, until=lambda: queued.job_id is not None)
    ask_test("kill")
    session.pump_until_idle(JOB_TIMEOUT, until=lambda: job.state.name == "RECONNECTING")
    assert not session.connection_ok and "atelier serve" in job.message, job.message
    assert "resumes when the daemon is back" in job.progress_text, job.progress_text
    assert job.image_names and job.image_names[0] in bpy.data.images   # kept: may resume
    ask_test("start")
    client = session._client
    deadline = time.monotonic() + JOB_TIMEOUT
    while not client.connected:   # back, not pumped yet: the answers to its fetches wait
        assert time.monotonic() < deadline, "the client did not reconnect"
        time.sleep(0.05)
    session.cancel(queued)
    session.pump_until_idle(JOB_TIMEOUT)
    assert job.state.name == "FAILED" and job.message == RESTARTED, job.message
    assert queued.state.name == "CANCELLED", queued.progress_text
    assert new_datablocks(before) == nothing

    # Killed and not back: the job waits to resume; Cancel drops it at once.
    job = long_job(session, "interrupted")
    ask_test("kill")
    session.pump_until_idle(JOB_TIMEOUT, until=lambda: job.state.name == "RECONNECTING"
                            or job.state.finished)
    assert job.state.name == "RECONNECTING", job.progress_text
    assert bpy.ops.atelier.cancel() == {"FINISHED"}
    assert job.state.name == "CANCELLED" and not session.active_jobs
    assert new_datablocks(before) == nothing


def refused(operator, **properties) -> str:
    """The error report of an operator that must refuse to run (a RuntimeError for scripts)."""
    try:
        result = operator(**properties)
    except RuntimeError as exc:
        return str(exc)
    raise AssertionError(f"{operator} ran: {result}")


def scenario_sizes(module, url: str) -> None:
    """Sizes the daemon would refuse are reported before anything is rendered or sent:
    multiples of 8 always, the daemon's max_side once its limits are known (a job made
    before that fails when the add-on connects, naming the limit)."""
    session = harness.session(module)
    scene = harness.empty_scene()
    harness.add_camera(scene, (0.0, -5.0, 0.0))
    cube = harness.add_cube(scene, "Cube", (0, 0, 0))
    harness.select_only([cube])
    harness.settings(scene, prompt="sizes", steps=2, width=500, height=SIZE)
    for operator in (bpy.ops.atelier.generate, bpy.ops.atelier.render_to_image,
                     bpy.ops.atelier.project_texture):
        report = refused(operator)
        assert "Width 500 is not a multiple of 8" in report and "496 or 504" in report, report
    assert not session.jobs
    assert bpy.context.view_layer.use_pass_z is False   # nothing was rendered

    harness.settings(scene, width=SIZE, height=4096)   # fine until the limits are known
    assert bpy.ops.atelier.generate() == {"FINISHED"}
    job = last_job(session)
    session.pump_until_idle(JOB_TIMEOUT)
    limit = session.limits.max_side
    assert limit < 4096, limit
    assert job.state.name == "FAILED", job.progress_text
    assert job.message == f"Height 4096 is more than the daemon allows (max_side {limit})", \
        job.message
    report = refused(bpy.ops.atelier.render_to_image)
    assert f"Height 4096 is more than the daemon allows (max_side {limit})" in report, report
    assert len(session.jobs) == 1


def scenario_no_daemon(module, url: str) -> None:
    """Nothing listens at ``url``: each job fails with a message saying how to start the
    daemon, nothing is left behind, every click tries again, and Blender carries on."""
    session = harness.session(module)
    scene = harness.empty_scene()
    harness.settings(scene, prompt="anything", steps=2, width=SIZE, height=SIZE)
    before = snapshot()
    for attempt in range(2):
        assert bpy.ops.atelier.generate() == {"FINISHED"}
        job = last_job(session)
        assert job.state.name == "WAITING" and session.last_failure is None, attempt
        session.pump_until_idle(JOB_TIMEOUT)
        assert job.state.name == "FAILED", job.progress_text
        assert "atelier serve" in job.message and url.rstrip("/") in job.message, job.message
        assert not session.connection_ok and session.connection_text == job.message
    assert len(session.jobs) == 2
    assert bpy.ops.atelier.test_connection() == {"FINISHED"}
    session.pump_until_idle(JOB_TIMEOUT, until=lambda: session.last_failure is not None)
    assert "atelier serve" in session.connection_text and session.status is None
    assert new_datablocks(before) == {"images": set(), "materials": set(), "meshes": set()}


def scenario_extension(module, url: str) -> None:
    """Installed from disk as a Blender 4.2+ extension (bl_ext.*): one image end to end."""
    assert module.__name__.startswith("bl_ext."), module.__name__
    session = harness.session(module)
    scene = harness.empty_scene()
    harness.settings(scene, prompt="blue tiles", steps=2, width=SIZE, height=SIZE,
                     random_seed=True, seed=5)
    assert bpy.ops.atelier.generate() == {"FINISHED"}
    job = last_job(session)
    assert 0 <= job.request.seed <= module.settings.SEED_MAX   # "random": drawn per job
    session.pump_until_idle(JOB_TIMEOUT)
    assert job.state.name == "DONE", job.progress_text
    seed = job.result.images[0].seed
    image = bpy.data.images[job.image_names[0]]
    assert image.name == f"blue tiles {seed}" and tuple(image.size) == (SIZE, SIZE)
    assert image["atelier"]["seed"] == seed and scene.atelier.history[-1].seed == seed


class RecordingLayout:
    """Stands in for UILayout where Blender draws no UI (background mode): checks that
    every property, operator, list and icon a panel names exists, as drawing would."""

    ICONS = set(bpy.types.UILayout.bl_rna.functions["label"].parameters["icon"].enum_items.keys())

    def __init__(self, log: list) -> None:
        self.log = log
        self.enabled = True

    def _sub(self, *args, **kwargs) -> "RecordingLayout":
        return RecordingLayout(self.log)

    row = column = box = _sub

    def __getattr__(self, name: str):
        """Other UILayout calls (separator, progress, template_icon ...): recorded by name,
        if UILayout has them."""
        if name not in bpy.types.UILayout.bl_rna.functions:
            raise AttributeError(f"UILayout has no {name}()")
        return lambda *args, **kwargs: self.log.append((name, None)) or 0

    def _icon(self, icon: str) -> None:
        assert icon in self.ICONS, f"unknown icon {icon!r}"

    def prop(self, data, name: str, icon: str = "NONE", **kwargs) -> None:
        assert name in data.bl_rna.properties, f"{data} has no property {name!r}"
        self._icon(icon)
        self.log.append(("prop", name))

    def label(self, text: str = "", icon: str = "NONE", icon_value: int = 0) -> None:
        self._icon(icon)
        self.log.append(("label", text))

    def operator(self, idname: str, icon: str = "NONE", **kwargs) -> SimpleNamespace:
        category, name = idname.split(".")
        assert hasattr(getattr(bpy.ops, category), name), f"no operator {idname}"
        self._icon(icon)
        self.log.append(("operator", idname))
        return SimpleNamespace()   # the button's operator properties, set by the panel

    def template_list(self, list_type: str, list_id: str, data, prop: str, active_data,
                      active_prop: str, **kwargs) -> None:
        assert hasattr(bpy.types, list_type), f"no UIList {list_type}"
        assert prop in data.bl_rna.properties and active_prop in active_data.bl_rna.properties
        self.log.append(("list", prop))


class Stand:
    """``self`` for a draw method: our layout, everything else from ``target``."""

    def __init__(self, layout: RecordingLayout, target=None) -> None:
        self.layout = layout
        self._target = target

    def __getattr__(self, name: str):
        return getattr(self._target, name)


def draw_panels(module, space: str) -> list:
    """What the add-on's panels in ``space`` (VIEW_3D, IMAGE_EDITOR) draw, in order."""
    log: list = []
    for cls in module.panels.PANELS:
        if cls.bl_space_type == space:
            cls.draw(Stand(RecordingLayout(log), cls), bpy.context)
    return log


def scenario_ui(module, url: str) -> None:
    """The panels, history list and preferences draw what exists, in both editors."""
    session = harness.session(module)
    scene = harness.empty_scene()
    props = scene.atelier
    item = props.history.add()
    item.prompt, item.seed = "old prompt", 3
    drawn = {space: draw_panels(module, space) for space in ("VIEW_3D", "IMAGE_EDITOR")}
    image_only = [e for e in drawn["IMAGE_EDITOR"] if e not in drawn["VIEW_3D"]]
    assert image_only == [("operator", "atelier.apply_image")], image_only
    names = {entry[1] for entry in drawn["VIEW_3D"]}
    for expected in ("prompt", "negative_prompt", "width", "height", "steps",
                     "guidance", "cache_interval", "seed", "random_seed", "scheduler",
                     "strength", "tiling", "batch_size", "atelier.generate",
                     "atelier.render_to_image", "atelier.project_texture", "control_scale",
                     "depth_model"):
        assert expected in names, expected
    assert ("list", "history") in drawn["IMAGE_EDITOR"]
    # Step caching: off by default, limited as the protocol limits it.
    cache = props.bl_rna.properties["cache_interval"]
    assert (props.cache_interval, cache.hard_min, cache.hard_max) == (1, 1, 10)
    # A history row and the preferences (with the connection state) draw too.
    log = []
    bpy.types.ATELIER_UL_history.draw_item(None, bpy.context, RecordingLayout(log), props,
                                           item, 0, props, "history_index")
    assert len(log) == 1 and log[0][0] == "label" and "old prompt" in log[0][1], log
    prefs = harness.preferences(module)
    log = []
    type(prefs).draw(Stand(RecordingLayout(log), prefs), bpy.context)
    assert ("operator", "atelier.test_connection") in log
    assert ("label", "not connected") in log, log
    # Operators that cannot run here say why, as reports (a RuntimeError for a script).
    for op, needs in ((bpy.ops.atelier.render_to_image, "no active camera"),
                      (bpy.ops.atelier.project_texture, "select the mesh objects"),
                      (bpy.ops.atelier.upscale, "no image to upscale"),
                      (bpy.ops.atelier.make_material, "no colour texture"),
                      (bpy.ops.atelier.cancel, None)):
        try:
            result = op()
        except RuntimeError as exc:
            assert needs is not None and needs in str(exc), exc
        else:
            assert needs is None and result == {"CANCELLED"}, (op, result)
    # While a job runs the panel shows a Cancel button, and the job's line once it ended.
    assert bpy.ops.atelier.generate() == {"FINISHED"}
    assert ("operator", "atelier.cancel") in draw_panels(module, "VIEW_3D")
    session.pump_until_idle(JOB_TIMEOUT)
    assert session.jobs[-1].state.name == "FAILED"
    log = draw_panels(module, "VIEW_3D")
    assert ("operator", "atelier.cancel") not in log, log
    shown = " ".join(entry[1] for entry in log if entry[0] == "label")
    assert " ".join(session.jobs[-1].progress_text.split()) in shown, (shown, log)


SCENARIOS = {name[len("scenario_"):]: fn for name, fn in globals().items()
             if name.startswith("scenario_")}


def main() -> None:
    args = harness.parse_args()
    module = harness.install_and_enable(args.zip, args.url, args.install)
    import control_scenarios   # issue 14's; it imports this module's helpers
    import multiview_scenarios   # issue 13's, likewise
    scenarios = {**SCENARIOS, **control_scenarios.SCENARIOS, **multiview_scenarios.SCENARIOS}
    scenarios[args.scenario](module, args.url)
    print(f"SCENARIO {args.scenario} PASSED on Blender {bpy.app.version_string}")


if __name__ == "__main__":
    main()
