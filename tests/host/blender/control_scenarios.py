"""Scenarios for the Controls & Reference panel (issue 14), run like scenarios.py's.

A camera looks along +Y at two small planes: one facing it, one turned to face right. The
panel's Depth, Normal and Line Art controls and a reference image go out with Render to
Image; the scenarios check what the add-on uploads, what the daemon makes of the normal and
line-art uploads (a ``preprocess`` job with ``preprocess`` false hands back each control
image as the daemon feeds it to the models), and that the settings survive save and reopen.
"""

from __future__ import annotations

import json
import math
import os

import bpy
import numpy as np

import harness
from scenarios import JOB_TIMEOUT, SIZE, depth_control, last_job, reopen

FACING, TURNED = "Facing", "Turned"
# Where each plane's centre lands in the 64 px image (rows and columns, top row first):
# the camera sees 3.6 units across at the planes' distance of 5.
CENTRES = {FACING: (32, 16), TURNED: (32, 48)}
REFERENCE = "Reference Picture"


def two_planes_scene() -> bpy.types.Scene:
    """Camera at (0, -5, 0) looking along +Y; a plane facing it left of centre, one turned
    45 degrees about Z (facing right and towards it) right of centre; nothing behind."""
    scene = harness.empty_scene()
    harness.add_camera(scene, (0.0, -5.0, 0.0))
    harness.add_grid(scene, FACING, (-0.9, 0.0, 0.0), size=1.2, cuts=1)
    turned = harness.add_grid(scene, TURNED, (0.9, 0.0, 0.0), size=1.2, cuts=1)
    turned.rotation_euler = (0.0, 0.0, math.radians(45))   # its normal: (0.71, -0.71, 0)
    return scene


def reference_image() -> bpy.types.Image:
    """A 40 x 24 image of the .blend: a gradient, different in each channel."""
    image = bpy.data.images.new(REFERENCE, 40, 24, alpha=True)
    y, x = np.mgrid[:24, :40]
    rows = np.stack([x / 39, y / 23, (x + y) / 62, np.ones_like(x, float)], axis=-1)
    image.pixels.foreach_set(rows.astype(np.float32).reshape(-1))
    return image


def upload_of(job, upload_id: str):
    return next(f for f in job.uploads if f.id == upload_id)


def rgba(frame) -> np.ndarray:
    assert frame.format.name == "RGBA8", frame.format
    return np.frombuffer(frame.data, np.uint8).reshape(frame.height, frame.width, 4)


def fed_to_models(module, url: str, layer, frame) -> np.ndarray:
    """What the daemon makes of ``layer``'s upload ``frame``: a preprocess job with
    preprocess false returns the control image as it feeds the models (H, W, 3) uint8."""
    messages = module.protocol.messages
    client = module.protocol.client.AtelierClient(url, client_name="scenario").start()
    try:
        client.wait_connected(30)
        request = messages.GenerateRequest(
            kind="preprocess", width=frame.width, height=frame.height,
            controls=[messages.ControlLayer(kind=layer.kind, image=frame.id, preprocess=False,
                                            invert=layer.invert)])
        done = client.run_job(request, [frame], timeout=JOB_TIMEOUT)
    finally:
        client.close()
    image = done.images[0]
    return np.frombuffer(image.data, np.uint8).reshape(image.height, image.width, 4)[..., :3]


def patch(image: np.ndarray, centre: tuple[int, int], half: int = 2) -> np.ndarray:
    row, col = centre
    return image[row - half:row + half + 1, col - half:col + half + 1].reshape(-1, 3)


def check_normals(normal: np.ndarray) -> None:
    """Camera-space normals (PROTOCOL.md 4.4): the facing plane (128, 128, 255), the one
    turned right has red above 128 (about (218, 128, 218)), background black."""
    facing = patch(normal, CENTRES[FACING]).astype(int)
    assert np.abs(facing - (128, 128, 255)).max() <= 2, facing
    turned = patch(normal, CENTRES[TURNED]).astype(int)
    assert (turned[:, 0] > 200).all() and (np.abs(turned[:, 1] - 128) <= 2).all(), turned
    assert (np.abs(turned[:, 0] - turned[:, 2]) <= 4).all(), turned   # 45 degrees
    assert (normal[2:8, 2:8] == 0).all(), normal[2:8, 2:8]           # nothing there


def check_lines(lines: np.ndarray) -> None:
    """Light lines on black where the facing plane's outline is; none inside or far off."""
    grey = lines[..., 0].astype(int)
    row, col = CENTRES[FACING]
    half = round(0.6 / 3.6 * SIZE)   # the plane's half width in pixels (about 11)
    assert grey[row - 3:row + 4, col - 3:col + 4].max() < 64, "lines inside the plane"
    assert grey[2:8, 2:8].max() < 64, "lines where nothing is"
    for edge in (col - half, col + half):     # its left and right outline
        assert grey[row - 4:row + 5, edge - 2:edge + 3].max(axis=1).min() > 128, \
            grey[row - 4:row + 5, edge - 3:edge + 4]
    for edge in (row - half, row + half):     # its top and bottom outline
        assert grey[edge - 2:edge + 3, col - 4:col + 5].max(axis=0).min() > 128, \
            grey[edge - 3:edge + 4, col - 4:col + 5]


def scenario_controls(module, url: str) -> None:
    """Render to Image with Depth, Normal and Line Art ticked and a reference image: one
    job carries the three controls with the rows' settings (depth as before: the Z pass,
    convention z) and the reference's pixels; the daemon feeds the models normals and lines
    as Blender rendered them, and runs the job with them."""
    session = harness.session(module)
    scene = two_planes_scene()
    image = reference_image()
    props = harness.settings(
        scene, prompt="two panels", steps=2, width=SIZE, height=SIZE, random_seed=False,
        seed=5, use_depth=True, control_scale=0.7, use_normal=True, normal_scale=0.9,
        normal_start=0.1, normal_end=0.8, use_lineart=True, lineart_scale=1.2,
        lineart_end=0.6, use_reference=True, reference_weight=0.8, reference_flavour="style")
    props.reference_image = image
    freestyle = (scene.render.use_freestyle, len(bpy.context.view_layer.freestyle_settings
                                                 .linesets), len(bpy.data.linestyles))
    assert bpy.ops.atelier.render_to_image() == {"FINISHED"}
    job = last_job(session)
    # The scene is as it was: no pass, Freestyle setting or line set left behind.
    layer = bpy.context.view_layer
    assert not layer.use_pass_normal and not layer.use_pass_z
    assert freestyle == (scene.render.use_freestyle,
                         len(layer.freestyle_settings.linesets), len(bpy.data.linestyles))

    request = job.request
    assert [c.kind for c in request.controls] == ["depth", "normal", "lineart"]
    depth, normal, lines = request.controls
    assert depth == depth_control(request) and depth.convention == "z"
    assert np.allclose((depth.scale, depth.start, depth.end), (0.7, 0.0, 1.0))
    assert depth.model is None
    assert np.allclose((normal.scale, normal.start, normal.end), (0.9, 0.1, 0.8))
    assert np.allclose((lines.scale, lines.start, lines.end), (1.2, 0.0, 0.6))
    assert not normal.preprocess and not lines.preprocess and not lines.invert
    # Depth as before: the Z pass, 5 on the facing plane, background past background_at.
    frame = upload_of(job, depth.image)
    z = np.frombuffer(frame.data, "<f4").reshape(SIZE, SIZE)
    assert abs(float(z[CENTRES[FACING]]) - 5.0) < 0.05, z[CENTRES[FACING]]
    assert float(z[2, 2]) >= depth.background_at

    sent_normal = rgba(upload_of(job, normal.image))
    check_normals(sent_normal[..., :3])
    print("normals: facing", patch(sent_normal[..., :3], CENTRES[FACING]).mean(axis=0),
          "turned", patch(sent_normal[..., :3], CENTRES[TURNED]).mean(axis=0))
    sent_lines = rgba(upload_of(job, lines.image))
    check_lines(sent_lines[..., :3])
    # What the daemon feeds the models is what was sent.
    fed = fed_to_models(module, url, normal, upload_of(job, normal.image))
    check_normals(fed)
    assert (fed == sent_normal[..., :3]).all()
    fed = fed_to_models(module, url, lines, upload_of(job, lines.image))
    check_lines(fed)
    assert (fed == sent_lines[..., :3]).all()

    # The reference: the image's own pixels (top row first), with weight and flavour.
    assert len(request.references) == 1
    reference = request.references[0]
    assert abs(reference.weight - 0.8) < 1e-6
    assert (reference.flavour, reference.model) == ("style", None)
    frame = upload_of(job, reference.image)
    assert (frame.width, frame.height) == (40, 24)
    width, height = image.size
    buf = np.empty(width * height * 4, np.float32)
    image.pixels.foreach_get(buf)
    expected = np.floor(buf.reshape(height, width, 4)[::-1] * 255 + 0.5)
    assert np.abs(rgba(frame).astype(int) - expected).max() <= 1

    # The daemon runs the job with those controls (tiny ControlNets of each kind) and takes
    # the reference (or, lacking an IP-Adapter, refuses it by name, not its upload).
    session.pump_until_idle(JOB_TIMEOUT)
    print("with the reference:", job.progress_text)
    if job.state.name == "DONE":
        ran = job.result.params
        assert [c.image for c in ran.controls] == [c.image for c in request.controls]
        assert [r.image for r in ran.references] == [reference.image]
    else:
        assert "references" in job.message and "upload" not in job.message, job.message
        without = harness.settings(scene, use_reference=False)
        assert not without.use_reference
        assert bpy.ops.atelier.render_to_image() == {"FINISHED"}
        job = last_job(session)
        session.pump_until_idle(JOB_TIMEOUT)
        assert job.state.name == "DONE", job.progress_text
        assert [c.kind for c in job.result.params.controls] == ["depth", "normal", "lineart"]

    # The result records its normal and line-art controls; Recall puts them back.
    record = bpy.data.images[job.image_names[0]]["atelier"]
    recorded = json.loads(record["pass_controls"])
    assert [row[0] for row in recorded] == ["normal", "lineart"], recorded
    assert props.history[-1].pass_controls == record["pass_controls"]
    props.use_normal, props.normal_end, props.use_lineart = False, 1.0, False
    assert bpy.ops.atelier.recall(index=len(props.history) - 1) == {"FINISHED"}
    assert props.use_normal and abs(props.normal_end - 0.8) < 1e-6 and props.use_lineart

    # Project Texture sends depth whatever its row says, and the ticked others.
    props.use_depth, props.use_lineart, props.use_reference = False, False, False
    harness.select_only([bpy.data.objects[FACING]])
    assert bpy.ops.atelier.project_texture() == {"FINISHED"}
    job = last_job(session)
    assert [c.kind for c in job.request.controls] == ["depth", "normal"]
    assert not job.request.references and job.request.kind == "txt2img"
    check_normals(rgba(upload_of(job, job.request.controls[1].image))[..., :3])
    session.pump_until_idle(JOB_TIMEOUT)
    assert job.state.name == "DONE", job.progress_text


def scenario_controls_saved(module, url: str) -> None:
    """The Controls rows and the reference survive saving the .blend and opening it again;
    a reference whose file is gone is refused by name, before anything is sent."""
    scene = two_planes_scene()
    # Straight after a script placed the camera (nothing evaluated yet), its view is used.
    shot = module.passes.render_passes(scene, bpy.context.view_layer, SIZE, SIZE, ["normal"])
    check_normals(np.frombuffer(shot.normal, np.uint8).reshape(SIZE, SIZE, 4)[..., :3])
    assert shot.depth is None and shot.lines is None and shot.color is None
    image = reference_image()
    image.pack()
    values = dict(use_depth=True, control_scale=0.4, depth_start=0.2, depth_end=0.9,
                  control_model="tiny-adapter", use_normal=True, normal_scale=1.5,
                  normal_start=0.3, normal_end=0.7, normal_model="tiny-controlnet-normal",
                  use_lineart=True, lineart_scale=0.25, lineart_start=0.05, lineart_end=0.5,
                  lineart_model="my-lineart", use_reference=True, reference_weight=1.3,
                  reference_flavour="style")
    props = harness.settings(scene, **values)
    props.reference_image = image
    reopen(os.path.join(os.environ["ATELIER_SCENARIO_DIR"], "controls.blend"))
    props = bpy.context.scene.atelier
    for key, value in values.items():
        got = getattr(props, key)
        assert (abs(got - value) < 1e-6) if isinstance(value, float) else got == value, \
            (key, got, value)
    assert props.reference_image is not None and props.reference_image.name == REFERENCE
    assert props.normal_model_choice == "tiny-controlnet-normal"   # shown, not checked yet
    panel = module.settings.settings_from(props)
    assert module.settings.passes_to_send(panel) == ("depth", "normal", "lineart")

    # A large reference goes scaled down to 1024 px a side (a copy; the image is unchanged).
    big = bpy.data.images.new("Big", 2048, 16)
    props.reference_image = big
    images = {i.name for i in bpy.data.images}
    frame = module.passes.reference_upload(props)
    assert (frame.width, frame.height) == (1024, 8) and tuple(big.size) == (2048, 16)
    assert {i.name for i in bpy.data.images} == images

    # A view layer without line sets: Line Art draws with a temporary one, removed after.
    freestyle = bpy.context.view_layer.freestyle_settings
    for lineset in list(freestyle.linesets):
        freestyle.linesets.remove(lineset)
    styles = len(bpy.data.linestyles)
    props.use_reference = False
    harness.settings(bpy.context.scene, width=SIZE, height=SIZE)
    assert bpy.ops.atelier.render_to_image() == {"FINISHED"}   # waits: no daemon here
    job = last_job(harness.session(module))
    lines = next(c for c in job.request.controls if c.kind == "lineart")
    check_lines(rgba(upload_of(job, lines.image))[..., :3])
    assert len(freestyle.linesets) == 0 and len(bpy.data.linestyles) == styles
    harness.session(module).cancel_all()

    # A render engine without a Normal pass: said so, nothing sent.
    scene = bpy.context.scene
    scene.render.engine = "BLENDER_WORKBENCH"
    props.use_reference = False
    try:
        bpy.ops.atelier.render_to_image()
    except RuntimeError as exc:
        assert "BLENDER_WORKBENCH render engine gives no Normal pass" in str(exc), exc
    else:
        raise AssertionError("Render to Image with Workbench normals was sent")
    props.use_reference = True

    missing = bpy.data.images.new("Gone", 8, 8)
    missing.source = "FILE"
    missing.filepath = "//no-such-file.png"
    props.reference_image = missing
    try:
        bpy.ops.atelier.generate()
    except RuntimeError as exc:
        assert "reference image 'Gone' has no pixels" in str(exc), exc
    else:
        raise AssertionError("Generate with a missing reference file was sent")


SCENARIOS = {name[len("scenario_"):]: fn for name, fn in globals().items()
             if name.startswith("scenario_")}
