"""Control layers: the built-in preprocessors, several controls per job on real tiny
pipelines (ControlNets per kind built by the project, loaded through the store), the
errors that name a control's field, and the preprocess job over the websocket."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from backend.generation import GenerationOutput
from backend.models.control_models import kind_of_model
from backend.models.store import ModelStore
from backend.pipelines.generator import DiffusionGenerator
from backend.pipelines.preprocess import (canny, canny_edges, lineart, normal_from_height,
                                          normal_from_picture, scribble, soft_edge)
from backend.pipelines.tiling import TileAxes, wrapped_convolutions
from protocol.client import AtelierClient, make_upload
from protocol.errors import ErrorCode, ProtocolError
from protocol.events import JobDone
from protocol.frames import FrameKind, ImageFrame, PixelFormat, new_id
from protocol.messages import (CONTROLS_MAX, ControlLayer, ControlSettings, DepthInput,
                               GenerateRequest)

SIZE = 64
JOB = dict(prompt="a stone wall", width=SIZE, height=SIZE, steps=3, seed=11, scheduler="euler")
BUILT_IN_KINDS = ("normal", "lineart", "scribble", "softedge", "canny")


def _square(side: int = SIZE, low: int = 16, high: int = 48) -> np.ndarray:
    picture = np.zeros((side, side, 3), np.uint8)
    picture[low:high, low:high] = 255
    return picture


def _rgba_frame(rgb: np.ndarray) -> ImageFrame:
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    return ImageFrame(FrameKind.UPLOAD, PixelFormat.RGBA8, 0, rgb.shape[1], rgb.shape[0],
                      new_id(), rgba.tobytes())


def _gray_frame(grey: np.ndarray) -> ImageFrame:
    return ImageFrame(FrameKind.UPLOAD, PixelFormat.GRAY8, 0, grey.shape[1], grey.shape[0],
                      new_id(), grey.astype(np.uint8).tobytes())


def _control_picture(seed: int) -> np.ndarray:
    """Some shapes to make control images of: a disc and a bar on a gradient."""
    y, x = np.mgrid[:SIZE, :SIZE]
    picture = (x * 2).astype(np.uint8)[..., None].repeat(3, axis=2)
    rng = np.random.default_rng(seed)
    cx, cy = rng.integers(16, 48, 2)
    picture[(x - cx) ** 2 + (y - cy) ** 2 < 120] = 255
    picture[40:46, 5:60] = 20
    return picture


# ------------------------------------------------------------------ preprocessors

def test_canny_of_a_square_is_its_outline():
    edges = canny_edges(_square())
    ys, xs = np.nonzero(edges)
    # every edge pixel lies on the square's border (one pixel either side of it)
    on_border = ((np.abs(xs - 15.5) <= 1) | (np.abs(xs - 47.5) <= 1) |
                 (np.abs(ys - 15.5) <= 1) | (np.abs(ys - 47.5) <= 1))
    assert on_border.all()
    assert ((xs >= 14) & (xs <= 49) & (ys >= 14) & (ys <= 49)).all()
    # and the outline is closed along each side (corners may round off)
    for i in range(18, 46):
        assert edges[i, 14:18].any() and edges[i, 46:50].any(), i
        assert edges[14:18, i].any() and edges[46:50, i].any(), i
    assert not edges[20:44, 20:44].any()                 # nothing inside
    image = canny(_square())
    assert image.shape == (SIZE, SIZE, 3) and set(np.unique(image)) == {0.0, 1.0}


def test_soft_edge_scribble_and_lineart_of_a_flat_image_are_flat():
    flat = np.full((SIZE, SIZE, 3), 137, np.uint8)
    for make in (soft_edge, scribble, lineart, canny):
        image = make(flat)
        assert image.shape == (SIZE, SIZE, 3) and np.all(image == 0.0), make.__name__
    edges = soft_edge(_square())
    assert edges.max() == pytest.approx(1.0)
    assert edges[32, 32].max() < 0.01 and edges[32, 16].max() > 0.3     # centre vs border


def test_normals_follow_the_documented_convention():
    """+X right, +Y up, +Z towards the camera, (n + 1) / 2: flat faces the camera, and a
    height rising to the right (or to the top) tilts the normal left (or down)."""
    flat = normal_from_height(np.full((16, 16), 0.4, np.float32))
    assert np.allclose(flat, [0.5, 0.5, 1.0], atol=1e-6)
    ramp = np.tile(np.linspace(0, 1, SIZE, dtype=np.float32), (SIZE, 1))
    right = normal_from_height(ramp)[32, 32]
    assert right[0] < 0.45 and right[1] == pytest.approx(0.5, abs=1e-5) and right[2] > 0.5
    rising_up = normal_from_height(np.ascontiguousarray(ramp.T[::-1]))[32, 32]  # row 0 highest
    assert rising_up[1] < 0.45 and rising_up[0] == pytest.approx(0.5, abs=1e-5)
    encoded = normal_from_picture(_control_picture(1)) * 2 - 1
    assert np.allclose(np.linalg.norm(encoded, axis=-1), 1.0, atol=1e-5)


def test_preprocessors_wrap_on_tiled_axes():
    """A picture whose left and right halves differ has an edge at the wrap seam only when
    the x axis wraps."""
    picture = np.zeros((SIZE, SIZE, 3), np.uint8)
    picture[:, :SIZE // 2] = 255
    plain, wrapped = canny_edges(picture), canny_edges(picture, axes=TileAxes(True, False))
    assert not plain[:, [0, -1]].any() and wrapped[:, [0, -1]].any()
    assert np.array_equal(plain[:, 2:-2], wrapped[:, 2:-2])


def test_control_model_names_say_their_kind():
    assert kind_of_model("lllyasviel/control_v11p_sd15_lineart") == "lineart"
    assert kind_of_model("lllyasviel/control_v11p_sd15_openpose") == "pose"
    assert kind_of_model("TencentARC/t2i-adapter-canny-sdxl-1.0") == "canny"
    assert kind_of_model("/models/ControlNet/my_controlnet.safetensors") is None
    assert kind_of_model("tiny-sdxl-controlnet-normal") == "normal"
    assert kind_of_model("tiny-controlnet") == "depth"


# ------------------------------------------------------------------ jobs on tiny models

def _run(generator: DiffusionGenerator, job: GenerateRequest, *uploads: ImageFrame) -> GenerationOutput:
    return generator.generate(job, {u.id: u for u in uploads}, lambda *a: None, lambda: False)


def _image(output: GenerationOutput, index: int = 0) -> np.ndarray:
    pixels = output.images[index].pixels
    return np.frombuffer(pixels.rgba, np.uint8).reshape(pixels.height, pixels.width, 4)


def _differs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b).mean())


@pytest.fixture(scope="module")
def sd15(atelier_home):
    store = ModelStore("cpu", torch.float32, atelier_home, search_dirs=[],
                       hf_cache=atelier_home / "no-hf-cache")
    store.load("tiny")
    return store, DiffusionGenerator(store)


@pytest.fixture(scope="module")
def pictures():
    return {kind: _rgba_frame(_control_picture(seed)) for seed, kind in
            enumerate(("depth",) + BUILT_IN_KINDS)}


def _layer(kind: str, frame: ImageFrame, **settings) -> ControlLayer:
    return ControlLayer(kind=kind, image=frame.id, preprocess=kind != "depth", **settings)


def test_each_control_kind_changes_the_pixels_and_scale_zero_is_none(sd15, pictures):
    _, generator = sd15
    plain = _image(_run(generator, GenerateRequest(**JOB)))
    seen = []
    for kind, frame in pictures.items():
        controlled = _image(_run(generator, GenerateRequest(**JOB, controls=[_layer(kind, frame)]), frame))
        assert _differs(controlled, plain) > 1.0, kind
        seen.append(controlled)
        off = _run(generator, GenerateRequest(**JOB, controls=[_layer(kind, frame, scale=0.0)]), frame)
        assert np.array_equal(_image(off), plain), kind
    # each kind's ControlNet reads its own image its own way
    assert all(_differs(a, b) > 1.0 for i, a in enumerate(seen) for b in seen[i + 1:])


def test_two_controls_compose(sd15, pictures):
    _, generator = sd15
    canny_frame, normal_frame = pictures["canny"], pictures["normal"]
    one = _image(_run(generator, GenerateRequest(**JOB, controls=[_layer("canny", canny_frame)]),
                      canny_frame))
    other = _image(_run(generator, GenerateRequest(**JOB, controls=[_layer("normal", normal_frame)]),
                        normal_frame))
    both_job = GenerateRequest(**JOB, controls=[_layer("canny", canny_frame),
                                                _layer("normal", normal_frame)])
    both = _image(_run(generator, both_job, canny_frame, normal_frame))
    assert _differs(both, one) > 1.0 and _differs(both, other) > 1.0
    # one of the two at scale 0 leaves exactly the other
    muted = dataclasses.replace(both_job, controls=[_layer("canny", canny_frame),
                                                    _layer("normal", normal_frame, scale=0.0)])
    assert np.array_equal(_image(_run(generator, muted, canny_frame, normal_frame)), one)


def test_the_old_depth_field_is_the_first_control(sd15, pictures):
    """``depth`` + ``control`` run as a depth control layer would: the same pixels; and
    they combine with ``controls``."""
    _, generator = sd15
    near = np.tile(np.linspace(0, 255, SIZE).astype(np.uint8), (SIZE, 1))
    depth = _gray_frame(near)
    old = GenerateRequest(**JOB, depth=DepthInput(upload=depth.id, convention="normalized"),
                          control=ControlSettings(scale=0.7, end=0.8))
    new = GenerateRequest(**JOB, controls=[ControlLayer(kind="depth", image=depth.id, scale=0.7,
                                                        end=0.8)])
    assert np.array_equal(_image(_run(generator, old, depth)), _image(_run(generator, new, depth)))
    canny_frame = pictures["canny"]
    mixed = dataclasses.replace(old, controls=[_layer("canny", canny_frame)])
    both = _image(_run(generator, mixed, depth, canny_frame))
    assert _differs(both, _image(_run(generator, old, depth))) > 1.0


def test_controls_with_img2img_and_inpaint(sd15, pictures):
    _, generator = sd15
    init = _rgba_frame(_control_picture(9))
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:48, 8:40] = 255
    mask_frame = _gray_frame(mask)
    # no image: preprocess the init image itself
    controls = [ControlLayer(kind="softedge", preprocess=True), _layer("canny", pictures["canny"])]
    img2img = GenerateRequest(**JOB, kind="img2img", init_image=init.id, strength=0.7)
    plain = _image(_run(generator, img2img, init))
    controlled = _image(_run(generator, dataclasses.replace(img2img, controls=controls),
                             init, pictures["canny"]))
    assert _differs(controlled, plain) > 1.0
    inpaint = GenerateRequest(**JOB, kind="inpaint", init_image=init.id, mask=mask_frame.id,
                              controls=controls)
    after = _image(_run(generator, inpaint, init, mask_frame, pictures["canny"]))
    before = np.frombuffer(init.data, np.uint8).reshape(SIZE, SIZE, 4)
    assert np.array_equal(after[mask == 0], before[mask == 0])
    assert not np.array_equal(after[mask == 255], before[mask == 255])


def test_a_control_adapter_and_controlnets_mix(sd15, pictures):
    _, generator = sd15
    depth, lines = pictures["depth"], pictures["lineart"]
    adapter_only = GenerateRequest(**JOB, controls=[_layer("depth", depth, model="tiny-adapter")])
    mixed = dataclasses.replace(adapter_only, controls=[_layer("depth", depth, model="tiny-adapter"),
                                                        _layer("lineart", lines)])
    a = _image(_run(generator, adapter_only, depth))
    b = _image(_run(generator, mixed, depth, lines))
    assert _differs(a, b) > 1.0
    assert not sd15[0].current.pipe.unet._forward_pre_hooks   # the adapter hook is gone


def test_multi_controlnet_wraps_on_tiled_axes(sd15, pictures):
    """Rolled noise and rolled control images give the rolled image only when both
    ControlNets of the MultiControlNetModel wrap with the UNet and the VAE."""
    store, _ = sd15
    multi = store.controlnet_set(["tiny-controlnet-canny", "tiny-controlnet-normal"])
    pipe = store.current.pipeline("txt2img", multi)
    width, height, k = 96, 64, 2
    noise = torch.randn(1, 4, height // 8, width // 8, generator=torch.Generator().manual_seed(2))
    rng = np.random.default_rng(4)
    images = [torch.from_numpy(rng.random((1, 3, height, width), np.float32)) for _ in range(2)]

    def generate(latents, conditions, modules):
        with wrapped_convolutions(modules, TileAxes(x=True, y=False)):
            return pipe("a stone wall", latents=latents, image=conditions, num_inference_steps=2,
                        width=width, height=height, output_type="pt",
                        controlnet_conditioning_scale=[1.0, 1.0]).images

    def roll_error(modules) -> float:
        image = generate(noise, images, modules)
        rolled = generate(torch.roll(noise, k, dims=3),
                          [torch.roll(c, 8 * k, dims=3) for c in images], modules)
        return (torch.roll(image, 8 * k, dims=3) - rolled).abs().max().item()

    assert roll_error([pipe.unet, pipe.vae, pipe.controlnet]) < 1e-4
    assert roll_error([pipe.unet, pipe.vae]) > 1e-2


def test_a_tiled_job_with_controls_runs_and_make_seamless_takes_them(sd15, pictures):
    _, generator = sd15
    canny_frame = pictures["canny"]
    tiled = _run(generator, GenerateRequest(**JOB, tiling="both", controls=[_layer("canny", canny_frame),
                                                                            _layer("normal", canny_frame)]),
                 canny_frame)
    assert tiled.tiling == "both"
    init = _rgba_frame(_control_picture(3))
    seamless = GenerateRequest(**JOB, kind="make_seamless", init_image=init.id, tiling="x",
                               seam_width=16, controls=[ControlLayer(kind="canny", preprocess=True)])
    assert len(_run(generator, seamless, init).images) == 1


def test_controls_fail_on_their_own_fields(sd15, pictures):
    store, generator = sd15
    frame = pictures["canny"]

    def refused(*layers: ControlLayer, uploads=(frame,)) -> ProtocolError:
        with pytest.raises(ProtocolError) as err:
            _run(generator, GenerateRequest(**JOB, controls=list(layers)), *uploads)
        return err.value

    # a ControlNet made for SDXL on an SD1.5 model
    err = refused(_layer("canny", frame), _layer("canny", frame, model="tiny-sdxl-controlnet-canny"))
    assert (err.code, err.field) == (ErrorCode.INVALID_FIELD, "job.controls[1].model")
    # a control model of another kind
    err = refused(_layer("lineart", frame, model="tiny-controlnet-canny"))
    assert (err.code, err.field) == (ErrorCode.INVALID_FIELD, "job.controls[0].model")
    assert "canny" in err.message and "lineart" in err.message
    # not a control model at all
    err = refused(_layer("canny", frame, model="tiny"))
    assert (err.code, err.field) == (ErrorCode.INVALID_FIELD, "job.controls[0].model")
    # an adapter of another family
    err = refused(_layer("depth", frame, model="tiny-sdxl-adapter"))
    assert (err.code, err.field) == (ErrorCode.INVALID_FIELD, "job.controls[0].model")
    # pose: no detector here, and no pose ControlNet on this machine
    err = refused(_layer("pose", frame))
    assert (err.code, err.field) == (ErrorCode.MODEL_NOT_FOUND, "job.controls[0].preprocess")
    err = refused(ControlLayer(kind="pose", image=frame.id))
    assert err.code == ErrorCode.MODEL_NOT_FOUND and err.field == "job.controls[0].model"
    assert "atelier models pull lllyasviel/control_v11p_sd15_openpose" in err.message
    # windows, images and counts
    err = refused(_layer("canny", frame, start=0.9, end=0.1))
    assert err.field == "job.controls[0].end"
    err = refused(ControlLayer(kind="canny", image="0" * 32))
    assert (err.code, err.field) == (ErrorCode.UNKNOWN_UPLOAD, "job.controls[0].image")
    err = refused(ControlLayer(kind="canny", preprocess=True))      # txt2img: no init to use
    assert err.field == "job.controls[0].image"
    err = refused(*[_layer("canny", frame)] * (CONTROLS_MAX + 1))
    assert (err.code, err.field) == (ErrorCode.LIMIT_EXCEEDED, "job.controls")
    assert not store.current.pipe.unet._forward_pre_hooks


def test_sdxl_takes_several_controls(atelier_home, pictures):
    store = ModelStore("cpu", torch.float32, atelier_home, search_dirs=[],
                       hf_cache=atelier_home / "no-hf-cache")
    store.load("tiny-sdxl")
    generator = DiffusionGenerator(store)
    canny_frame, lines = pictures["canny"], pictures["lineart"]
    plain = _image(_run(generator, GenerateRequest(**JOB)))
    one = _image(_run(generator, GenerateRequest(**JOB, controls=[_layer("canny", canny_frame)]),
                      canny_frame))
    two = _image(_run(generator, GenerateRequest(**JOB, controls=[
        _layer("canny", canny_frame), _layer("lineart", lines)]), canny_frame, lines))
    assert _differs(one, plain) > 1.0 and _differs(two, one) > 1.0
    with pytest.raises(ProtocolError) as err:
        _run(generator, GenerateRequest(**JOB, controls=[
            _layer("canny", canny_frame, model="tiny-controlnet-canny")]), canny_frame)
    assert (err.value.code, err.value.field) == (ErrorCode.INVALID_FIELD, "job.controls[0].model")


# ------------------------------------------------------------------ over the websocket

def test_preprocess_job_over_the_websocket_returns_the_control_image(daemon):
    picture = _square()
    upload = make_upload(PixelFormat.RGB8, SIZE, SIZE, picture.tobytes())
    job = GenerateRequest(kind="preprocess", width=SIZE, height=SIZE,
                          controls=[ControlLayer(kind="canny", image=upload.id, preprocess=True)])
    with AtelierClient(daemon.url, client_name="test_controls") as client:
        client.wait_connected()
        capabilities = set(client.welcome.capabilities)
        done = client.run_job(job, [upload], timeout=120)
    assert {"multi_control", "preprocess", "control:canny", "control:normal", "control:lineart",
            "control:scribble", "control:softedge", "control:depth"} <= capabilities
    assert isinstance(done, JobDone), done
    frame = done.images[0]
    assert (frame.width, frame.height) == (SIZE, SIZE)
    pixels = np.frombuffer(frame.data, np.uint8).reshape(SIZE, SIZE, 4)
    assert np.array_equal(pixels[..., 0] > 0, canny_edges(picture))


def test_a_job_with_two_controls_over_the_websocket(daemon):
    lines = make_upload(PixelFormat.RGB8, SIZE, SIZE, _control_picture(5).tobytes())
    drawing = 255 - _square()          # dark lines on white, as painted
    sketch = make_upload(PixelFormat.RGB8, SIZE, SIZE, drawing.tobytes())
    job = GenerateRequest(**JOB, tiling="x", controls=[
        ControlLayer(kind="softedge", image=lines.id, preprocess=True, scale=0.8, end=0.9),
        ControlLayer(kind="scribble", image=sketch.id, invert=True)])
    with AtelierClient(daemon.url, client_name="test_controls") as client:
        client.wait_connected()
        done = client.run_job(job, [lines, sketch], timeout=120)
        assert isinstance(done, JobDone), done
        assert done.result.params.controls == job.controls
        with pytest.raises(ProtocolError) as err:
            client.run_job(dataclasses.replace(job, controls=[
                ControlLayer(kind="canny", image=lines.id, model="tiny-sdxl-controlnet-canny")]),
                [lines], timeout=120)
    assert (err.value.code, err.value.field) == ("invalid_field", "job.controls[0].model")


def test_control_cost_benchmark_reports(atelier_home):
    from benchmarks.controls import full_size_flops, tiny_step_costs
    tiny = tiny_step_costs(atelier_home, repeat=1, steps=3)
    assert set(tiny) == {"0 controlnet", "1 controlnet", "2 controlnet", "3 controlnet",
                         "4 controlnet", "1 t2i-adapter"}
    assert tiny["0 controlnet"]["relative"] == 1.0
    # each ControlNet adds its own forward to every step; an adapter adds none
    flops = [tiny[f"{n} controlnet"]["flop_per_step"] for n in range(5)]
    assert all(b > a for a, b in zip(flops, flops[1:]))
    assert tiny["1 t2i-adapter"]["flop_relative"] == pytest.approx(1.0, abs=0.01)
    full = full_size_flops("sd15")
    # the UNet's count matches the generation benchmark's (0.80 TFLOP a forward at 64x64)
    assert full["unet_tflop_per_step"] == pytest.approx(1.61, rel=0.02)
    assert 0.2 < full["controlnet_relative"] < 0.6 and full["adapter_tflop_per_job"] > 0


def test_models_list_says_which_kind_each_control_model_reads(atelier_home, tmp_path):
    from backend.models.catalog import list_models
    named = tmp_path / "models" / "ControlNet" / "control_v11p_sd15_lineart"
    named.parent.mkdir(parents=True)
    import shutil
    from backend.models.sources import ensure_tiny
    shutil.copytree(ensure_tiny("tiny-controlnet-canny", atelier_home / "models"), named)
    models = {m.name: m for m in list_models(atelier_home, [tmp_path / "models"],
                                             tmp_path / "no-hf-cache").models}
    assert models["tiny-controlnet-canny"].control_kind == "canny"
    assert models["tiny-adapter"].control_kind == "depth"
    assert models["tiny"].control_kind is None
    lineart = [m for m in models.values() if m.name.endswith("control_v11p_sd15_lineart")]
    assert len(lineart) == 1 and lineart[0].kind == "controlnet"
    assert lineart[0].control_kind == "lineart"


def test_a_batch_with_controls_is_its_single_jobs(sd15, pictures):
    """Image i of a batch is the single job with seed + i, controls included."""
    _, generator = sd15
    canny_frame, normal_frame = pictures["canny"], pictures["normal"]
    controls = [_layer("canny", canny_frame), _layer("normal", normal_frame, start=0.3)]
    batch = _run(generator, GenerateRequest(**{**JOB, "batch_size": 2}, controls=controls),
                 canny_frame, normal_frame)
    second = _run(generator, GenerateRequest(**{**JOB, "seed": JOB["seed"] + 1}, controls=controls),
                  canny_frame, normal_frame)
    assert np.array_equal(_image(batch, 1), _image(second))


def test_sd2_depth_takes_one_depth_control_layer(atelier_home, pictures):
    store = ModelStore("cpu", torch.float32, atelier_home, search_dirs=[],
                       hf_cache=atelier_home / "no-hf-cache")
    store.load("tiny-depth")
    generator = DiffusionGenerator(store)
    near = _gray_frame(np.tile(np.linspace(0, 255, SIZE).astype(np.uint8), (SIZE, 1)))
    old = GenerateRequest(**JOB, depth=DepthInput(upload=near.id, convention="normalized"))
    new = GenerateRequest(**JOB, controls=[ControlLayer(kind="depth", image=near.id)])
    assert np.array_equal(_image(_run(generator, old, near)), _image(_run(generator, new, near)))
    with pytest.raises(ProtocolError) as err:
        _run(generator, GenerateRequest(**JOB, controls=[_layer("canny", pictures["canny"])]),
             pictures["canny"])
    assert (err.value.code, err.value.field) == (ErrorCode.UNSUPPORTED, "job.controls[0].kind")


def test_the_cli_sends_controls(tmp_path):
    import PIL.Image
    from backend.cli import _parser, request_from_args
    picture = tmp_path / "square.png"
    PIL.Image.fromarray(_square(side=32, low=8, high=24)).save(picture)
    args = _parser().parse_args(["generate", "--kind", "preprocess",
                                 "--control-from", f"canny={picture}"])
    job, uploads = request_from_args(args)
    assert (job.kind, job.width, job.height) == ("preprocess", 32, 32)
    assert job.controls == [ControlLayer(kind="canny", image=uploads[0].id, preprocess=True)]
    args = _parser().parse_args(["generate", "--control", f"lineart={picture}@0.6",
                                 "--control-from", f"softedge={picture}"])
    job, uploads = request_from_args(args)
    assert [(c.kind, c.scale, c.preprocess) for c in job.controls] == [
        ("lineart", 0.6, False), ("softedge", 1.0, True)]
    assert [c.image for c in job.controls] == [u.id for u in uploads]
    with pytest.raises(SystemExit):
        _parser().parse_args(["generate", "--control", f"sketch={picture}"])


def _normals_frame(normals: np.ndarray) -> ImageFrame:
    return make_upload(PixelFormat.FLOAT32X3, normals.shape[1], normals.shape[0],
                       np.ascontiguousarray(normals, "<f4").tobytes())


def test_float32x3_normals_reach_the_control_image_exactly():
    """A FLOAT32X3 normal map (PROTOCOL.md 4.4) is encoded by the daemon as (n + 1) / 2
    with no rounding: (0, 0, 1) arrives as (0.5, 0.5, 1.0) to float precision, an oblique
    normal likewise, and no surface (0, 0, 0) stays black; the frame goes over the wire."""
    from backend.pipelines.controls import job_controls
    from protocol.frames import decode_frame, encode_frame
    normals = np.zeros((SIZE, SIZE, 3), np.float32)
    normals[:, :32] = (0.0, 0.0, 1.0)
    tilted = np.array([0.3, -0.2, 0.0], np.float32)
    tilted[2] = np.sqrt(1.0 - tilted[0] ** 2 - tilted[1] ** 2)
    normals[:, 32:48] = tilted
    frame = decode_frame(encode_frame(_normals_frame(normals)))
    assert frame.format == PixelFormat.FLOAT32X3
    job = GenerateRequest(kind="txt2img", **JOB,
                          controls=[ControlLayer(kind="normal", image=frame.id)])
    image = job_controls(job, {frame.id: frame})[0].image
    back = image * 2.0 - 1.0
    assert np.abs(back[:, :32] - (0.0, 0.0, 1.0)).max() < 1e-6
    assert np.abs(back[:, 32:48] - tilted).max() < 1e-6
    assert (image[:, 48:] == 0.0).all()


def test_float32x3_images_are_refused_where_they_do_not_fit():
    normals = np.zeros((SIZE, SIZE, 3), np.float32)
    frame = _normals_frame(normals)
    from backend.pipelines.controls import job_controls
    for layer, field in ((ControlLayer(kind="canny", image=frame.id), "job.controls[0].image"),
                         (ControlLayer(kind="normal", image=frame.id, preprocess=True),
                          "job.controls[0].preprocess")):
        job = GenerateRequest(kind="txt2img", **JOB, controls=[layer])
        with pytest.raises(ProtocolError) as caught:
            job_controls(job, {frame.id: frame})
        assert caught.value.code == ErrorCode.INVALID_FIELD and caught.value.field == field
    with pytest.raises(ProtocolError, match="float32x3 2x2 needs 48 bytes"):
        make_upload(PixelFormat.FLOAT32X3, 2, 2, b"\0" * 16)
