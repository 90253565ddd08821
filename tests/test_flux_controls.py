"""Flux ControlNets and Flux/SD3 LoRAs on the tiny transformer models: a tiny Flux
ControlNet and tiny LoRAs (backend/models/tiny_dit_extras.py) written as the files users
have (ComfyUI's models/controlnet and models/loras) and loaded through the same store.

64x64 images and 3 steps: each job takes a few tenths of a second on a CPU.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.generation import GenerationOutput
from backend.models.sources import ensure_tiny
from backend.models.store import ModelStore
from backend.models.tiny_dit_extras import (build_tiny_dit_lora, build_tiny_flux_controlnet,
                                            build_tiny_sd3_controlnet, build_tiny_sd3_two_blocks)
from backend.pipelines.dit import RolledTransformer
from backend.pipelines.generator import DiffusionGenerator
from backend.pipelines.pixels import pixels_to_array
from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import FrameKind, ImageFrame, PixelFormat, new_id
from protocol.messages import (ControlLayer, ControlSettings, DepthInput, GenerateRequest,
                               LoraWeight)

SIZE = 64
JOB = dict(prompt="a red stone wall", width=SIZE, height=SIZE, steps=3, guidance=3.5, seed=7)
FLUX_CONTROLNET = "controlnet/flux-depth.safetensors"
SD3_CONTROLNET = "controlnet/sd3-depth.safetensors"
FLUX_UNION = "controlnet/flux-union.safetensors"
SD3_TWO_BLOCKS = "sd3-two-blocks"     # SD3's last block takes no residual: the tiny one has one


@pytest.fixture(scope="module")
def models_dir(home: Path) -> Path:
    folder = home / "user-models"
    flux, sd3 = ensure_tiny("tiny-flux", home / "models"), ensure_tiny("tiny-sd3", home / "models")
    build_tiny_flux_controlnet(folder / FLUX_CONTROLNET, flux)
    build_tiny_flux_controlnet(folder / FLUX_UNION, flux, num_mode=10)
    build_tiny_sd3_controlnet(folder / SD3_CONTROLNET, sd3)
    build_tiny_sd3_two_blocks(folder / SD3_TWO_BLOCKS, sd3)
    build_tiny_dit_lora(folder / "loras" / "flux_peft.safetensors", flux)
    build_tiny_dit_lora(folder / "loras" / "flux_kohya.safetensors", flux, "kohya")
    build_tiny_dit_lora(folder / "loras" / "sd3_peft.safetensors", sd3)
    return folder


@pytest.fixture(scope="module")
def store(home: Path, models_dir: Path) -> ModelStore:
    store = ModelStore("cpu", torch.float32, home, search_dirs=[models_dir],
                       hf_cache=home / "no-hf-cache")
    store.load("tiny-flux")
    return store


@pytest.fixture(scope="module")
def generator(store: ModelStore) -> DiffusionGenerator:
    return DiffusionGenerator(store)


def _run(generator: DiffusionGenerator, uploads=(), **job) -> GenerationOutput:
    request = GenerateRequest(**{**JOB, **job})
    return generator.generate(request, {u.id: u for u in uploads}, lambda *_: None, lambda: False)


def _rgba(output: GenerationOutput) -> np.ndarray:
    return pixels_to_array(output.images[0].pixels)


def _gray(values: np.ndarray) -> ImageFrame:
    return ImageFrame(FrameKind.UPLOAD, PixelFormat.GRAY8, 0, values.shape[1], values.shape[0],
                      new_id(), values.astype(np.uint8).tobytes())


def _rgba_upload(seed: int) -> ImageFrame:
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    return ImageFrame(FrameKind.UPLOAD, PixelFormat.RGBA8, 0, SIZE, SIZE, new_id(),
                      pixels.tobytes())


DEPTH = _gray(np.tile(np.linspace(0, 255, SIZE), (SIZE, 1)))
INIT = _rgba_upload(5)


def _depth(model: str = FLUX_CONTROLNET, **settings) -> list[ControlLayer]:
    return [ControlLayer(kind="depth", image=DEPTH.id, model=model, **settings)]


def _digest(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------ controls on Flux

def test_the_flux_controlnet_file_is_listed_as_a_depth_controlnet(store):
    listed = {info.name: info for info in store.available()}[FLUX_CONTROLNET]
    assert (listed.kind, listed.control_kind) == ("controlnet", "depth")


@pytest.mark.parametrize("kind", ["txt2img", "img2img", "inpaint"])
def test_a_depth_control_steers_every_job_kind_and_reproduces(generator, kind):
    init = _rgba_upload(1)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:48, 16:48] = 255
    frame = _gray(mask)
    job = {"txt2img": {}, "img2img": dict(init_image=init.id, strength=0.8),
           "inpaint": dict(init_image=init.id, mask=frame.id, strength=1.0,
                           context_padding=8)}[kind]
    uploads = [DEPTH, init, frame]
    plain = _rgba(_run(generator, uploads, kind=kind, **job))
    controlled = _rgba(_run(generator, uploads, kind=kind, controls=_depth(), **job))
    again = _rgba(_run(generator, uploads, kind=kind, controls=_depth(), **job))
    weaker = _rgba(_run(generator, uploads, kind=kind, controls=_depth(scale=0.3), **job))
    assert controlled.tobytes() == again.tobytes()
    assert controlled.tobytes() != plain.tobytes()
    assert weaker.tobytes() not in (plain.tobytes(), controlled.tobytes())
    other_seed = _rgba(_run(generator, uploads, kind=kind, controls=_depth(), **{**job, "seed": 8}))
    assert other_seed.tobytes() != controlled.tobytes()
    if kind == "inpaint":
        original = np.frombuffer(init.data, np.uint8).reshape(SIZE, SIZE, 4)
        assert controlled[mask == 0].tobytes() == original[mask == 0].tobytes()


def test_an_sd3_controlnet_steers_txt2img_and_reproduces(store, generator):
    job = dict(model=SD3_TWO_BLOCKS, guidance=4.5)
    plain = _rgba(_run(generator, **job))
    controlled = _rgba(_run(generator, [DEPTH], controls=_depth(SD3_CONTROLNET), **job))
    again = _rgba(_run(generator, [DEPTH], controls=_depth(SD3_CONTROLNET), **job))
    other_seed = _rgba(_run(generator, [DEPTH], controls=_depth(SD3_CONTROLNET), **job, seed=8))
    assert controlled.tobytes() == again.tobytes()
    assert plain.tobytes() not in (controlled.tobytes(), other_seed.tobytes())
    assert other_seed.tobytes() != controlled.tobytes()
    store.use_default()


def test_a_union_controlnet_runs_each_kind_in_its_mode(generator):
    """A union ControlNet (one file, a mode per kind) runs depth, canny and pose in their
    modes, which steer differently; a kind it has no mode for is refused on that kind."""
    def union(kind: str) -> bytes:
        layer = ControlLayer(kind=kind, image=DEPTH.id, model=FLUX_UNION, preprocess=False)
        return _rgba(_run(generator, [DEPTH], controls=[layer])).tobytes()

    by_kind = {kind: union(kind) for kind in ("depth", "canny", "pose")}
    assert len(set(by_kind.values())) == 3
    assert union("depth") == by_kind["depth"]
    with pytest.raises(ProtocolError) as err:
        union("lineart")
    assert (err.value.code, err.value.field) == (ErrorCode.UNSUPPORTED, "job.controls[0].kind")
    assert "no lineart mode" in err.value.message


def test_a_flux_controlnet_folder_loads_as_the_file_does(store, generator, models_dir):
    from diffusers import FluxControlNetModel
    from safetensors.torch import load_file

    folder = models_dir / "controlnet" / "flux-depth-folder"
    if not folder.is_dir():
        net = FluxControlNetModel.from_config(FluxControlNetModel.load_config(
            str(store.resolve("tiny-flux").path / "transformer")), num_layers=1,
            num_single_layers=1)
        net.load_state_dict(load_file(str(models_dir / FLUX_CONTROLNET)))
        net.save_pretrained(str(folder), safe_serialization=True)
    from_folder = _rgba(_run(generator, [DEPTH], controls=_depth("controlnet/flux-depth-folder")))
    assert from_folder.tobytes() == _rgba(_run(generator, [DEPTH], controls=_depth())).tobytes()


def test_a_dev_controlnet_runs_beside_a_model_without_guidance_embedding(store, models_dir):
    """FLUX.1-dev ControlNets are used with schnell too: the ControlNet keeps its own
    guidance embedding (read from the file), the transformer has none."""
    import json
    import shutil

    folder = models_dir / "schnell"
    if not folder.is_dir():
        shutil.copytree(store.resolve("tiny-flux").path, folder)
        config = folder / "transformer" / "config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "guidance_embeds": False}))
    schnell = DiffusionGenerator(store)
    out = _rgba(_run(schnell, [DEPTH], model="schnell", guidance=0.0, controls=_depth()))
    assert out.tobytes() != _rgba(_run(schnell, model="schnell", guidance=0.0)).tobytes()
    store.use_default()


def test_the_old_depth_form_runs_through_the_same_controlnet(generator):
    new = _rgba(_run(generator, [DEPTH], controls=_depth()))
    old = _rgba(_run(generator, [DEPTH], depth=DepthInput(upload=DEPTH.id, convention="normalized"),
                     control=ControlSettings(model=FLUX_CONTROLNET)))
    assert old.shape == new.shape and old.tobytes() != _rgba(_run(generator)).tobytes()


@pytest.mark.parametrize("model, pull", [
    ("tiny-flux", "Shakker-Labs/FLUX.1-dev-ControlNet-Depth"),
    ("tiny-sd3", "stabilityai/stable-diffusion-3.5-large-controlnet-depth")])
def test_depth_without_a_depth_controlnet_says_how_to_get_one(store, generator, model, pull):
    with pytest.raises(ProtocolError) as err:
        _run(generator, [DEPTH], model=model, controls=[ControlLayer(kind="depth", image=DEPTH.id)])
    assert (err.value.code, err.value.field) == (ErrorCode.MODEL_NOT_FOUND, "job.controls[0].model")
    assert f"atelier models pull {pull}" in err.value.message
    store.use_default()


@pytest.mark.parametrize("job, code, field, words", [
    # an SD1.5 ControlNet on Flux
    (dict(controls=_depth("tiny-controlnet")), ErrorCode.INVALID_FIELD, "job.controls[0].model",
     "SD1.5/SDXL"),
    # two controls: SD3's ControlNet pipeline takes one ControlNet
    (dict(controls=_depth(SD3_CONTROLNET) * 2, model=SD3_TWO_BLOCKS), ErrorCode.UNSUPPORTED,
     "job.controls[1]", "one control"),
    # a Flux ControlNet on SD3, an SD3 one on Flux
    (dict(controls=_depth(), model="tiny-sd3"), ErrorCode.INVALID_FIELD, "job.controls[0].model",
     "ControlNet for Flux models"),
    (dict(controls=_depth(SD3_CONTROLNET)), ErrorCode.INVALID_FIELD, "job.controls[0].model",
     "ControlNet for SD3 models"),
    # SD3 has a ControlNet pipeline for txt2img only
    (dict(controls=_depth(SD3_CONTROLNET), model=SD3_TWO_BLOCKS, kind="img2img",
          init_image=INIT.id),
     ErrorCode.UNSUPPORTED, "kind", "(it runs: txt2img)"),
    # a Flux ControlNet on SD1.5
    (dict(controls=_depth(), model="tiny"), ErrorCode.INVALID_FIELD, "job.controls[0].model",
     "Flux or SD3"),
    # LoRAs of another family, both ways
    (dict(loras=[LoraWeight("flux_peft", 0.8)], model="tiny"), ErrorCode.INVALID_FIELD,
     "loras[0].name", "made for flux"),
    (dict(loras=[LoraWeight("sd3_peft", 0.8)]), ErrorCode.INVALID_FIELD, "loras[0].name",
     "made for sd3"),
    (dict(loras=[LoraWeight("flux_kohya", 0.8)], model="tiny-sd3"), ErrorCode.INVALID_FIELD,
     "loras[0].name", "made for flux"),
])
def test_wrong_family_combinations_fail_on_their_field(store, generator, job, code, field, words):
    with pytest.raises(ProtocolError) as err:
        _run(generator, [DEPTH, INIT], **job)
    assert (err.value.code, err.value.field) == (code, field), err.value.message
    assert words in err.value.message
    store.use_default()


def _canny(**settings) -> list[ControlLayer]:
    return [ControlLayer(kind="canny", image=DEPTH.id, model=FLUX_UNION, preprocess=False,
                         **settings)]


@pytest.mark.parametrize("kind", ["txt2img", "inpaint"])
def test_several_controls_on_flux_steer_together(generator, kind):
    """A depth ControlNet and a union ControlNet's canny mode on one Flux job (a
    FluxMultiControlNetModel): the pair steers otherwise than either alone, and than the
    pair with the second's scale changed, and reproduces. (Scale 0 is not the first alone
    to the byte: the pipeline encodes each control image with the job's generator, so a
    second one moves the noise drawn after it.)"""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:48, 16:48] = 255
    frame = _gray(mask)
    job = {"txt2img": {}, "inpaint": dict(init_image=INIT.id, mask=frame.id, strength=1.0,
                                          context_padding=8)}[kind]
    uploads = [DEPTH, INIT, frame]

    def run(controls: list[ControlLayer]) -> bytes:
        return _rgba(_run(generator, uploads, kind=kind, controls=controls, **job)).tobytes()

    both = run(_depth() + _canny())
    assert both == run(_depth() + _canny())
    assert both not in (run(_depth()), run(_canny()), run([]))
    assert run(_depth() + _canny(scale=0.3)) not in (both, run(_depth()))
    # one union ControlNet serving two kinds, each in its mode
    assert run(_canny() + [ControlLayer(kind="pose", image=DEPTH.id, model=FLUX_UNION,
                                        preprocess=False)]) not in (both, run(_canny()))


# ------------------------------------------------------------------ tiling with a control

@pytest.mark.parametrize("controls", [_depth(), _depth() + _canny()], ids=["one", "two"])
def test_a_tiled_job_with_controls_reproduces_and_differs(generator, controls):
    tiled = _rgba(_run(generator, [DEPTH], tiling="x", controls=controls))
    again = _rgba(_run(generator, [DEPTH], tiling="x", controls=controls))
    assert tiled.tobytes() == again.tobytes()
    assert tiled.tobytes() != _rgba(_run(generator, [DEPTH], controls=controls)).tobytes()
    assert tiled.tobytes() != _rgba(_run(generator, [DEPTH], tiling="x")).tobytes()


@pytest.mark.parametrize("model, controlnet_names, residuals", [
    ("tiny-flux", (FLUX_CONTROLNET,), ("controlnet_block_samples", "controlnet_single_block_samples")),
    ("tiny-flux", (FLUX_CONTROLNET, FLUX_UNION),
     ("controlnet_block_samples", "controlnet_single_block_samples")),
    (SD3_TWO_BLOCKS, (SD3_CONTROLNET,), ("block_controlnet_hidden_states",))],
    ids=["flux", "flux-set", "sd3"])
def test_the_transformer_gets_residuals_of_its_own_rolled_latent(store, generator, monkeypatch,
                                                                model, controlnet_names, residuals):
    """What a tiled step's transformer receives lines up: the ControlNets' residuals it is
    handed (a set's summed) are the ControlNets' output on the very latent (and control
    latents) it sees, rolled by its offset, so the control moves with the picture across
    the seam."""
    store.use(model)
    nets = [store.controlnet(name) for name in controlnet_names]
    seen: list[dict] = []
    inputs: list[list[dict]] = [[] for _ in nets]
    real_forward = RolledTransformer.forward

    def spy(self, hidden_states, *args, **kwargs):
        if self.transformer is store.active.pipe.transformer:
            seen.append(dict(self=self, latent=hidden_states, kwargs=kwargs))
        return real_forward(self, hidden_states, *args, **kwargs)

    def recorder(calls: list[dict]):
        return lambda _module, _args, kwargs: calls.append(dict(kwargs))

    monkeypatch.setattr(RolledTransformer, "forward", spy)
    handles = [net.register_forward_pre_hook(recorder(calls), with_kwargs=True)
               for net, calls in zip(nets, inputs)]
    controls = [layer for name in controlnet_names
                for layer in (_canny() if name == FLUX_UNION else _depth(name))]
    try:
        _run(generator, [DEPTH], model=model, tiling="both", controls=controls)
    finally:
        for handle in handles:
            handle.remove()
        store.use_default()
    assert all(len(calls) == len(seen) == JOB["steps"] for calls in inputs)
    rolled = seen[0]["self"]
    assert any(offset != (0, 0) for offset in rolled.offsets)
    for step, call in enumerate(seen):
        dx, dy = rolled.offsets[step]
        outputs = []
        with torch.no_grad():
            for net, calls in zip(nets, inputs):
                given = calls[step]
                outputs.append(net(**{**given, **{
                    name: rolled.roll(given[name], dx, dy)
                    for name in ("hidden_states", "controlnet_cond")}}))
        handed = call["kwargs"]
        for index, name in enumerate(residuals):
            made = [sum(parts) for parts in zip(*(output[index] for output in outputs))]
            # what the transformer runs on: the residuals it was handed, rolled as its latent
            inside = [rolled.roll_tokens(r, dx, dy) for r in handed[name]]
            assert len(inside) == len(made) >= 1
            assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(inside, made)), step


# ------------------------------------------------------------------ LoRAs on Flux and SD3

@pytest.mark.parametrize("model, loras", [("tiny-flux", ("flux_peft", "flux_kohya")),
                                          ("tiny-sd3", ("sd3_peft",))])
def test_loras_apply_with_their_weight_and_leave_the_model_as_it_was(store, generator, model,
                                                                    loras):
    transformer = store.use(model).pipe.transformer
    before = _digest(transformer)
    plain = _rgba(_run(generator, model=model)).tobytes()
    for name in loras:
        full = _rgba(_run(generator, model=model, loras=[LoraWeight(name, 0.8)])).tobytes()
        half = _rgba(_run(generator, model=model, loras=[LoraWeight(name, 0.3)])).tobytes()
        zero = _rgba(_run(generator, model=model, loras=[LoraWeight(name, 0.0)])).tobytes()
        assert full != plain and half not in (plain, full), name
        assert zero == plain, f"{name} at weight 0 changed pixels"
        assert _rgba(_run(generator, model=model, loras=[LoraWeight(name, 0.8)])).tobytes() == full
    # the next job without LoRAs: the model's own modules and weights, the same bytes
    assert _rgba(_run(generator, model=model)).tobytes() == plain
    assert _digest(store.active.pipe.transformer) == before
    assert not store.active.loras.active
    store.use_default()


def test_a_flux_lora_and_a_control_together(generator):
    both = _rgba(_run(generator, [DEPTH], controls=_depth(), loras=[LoraWeight("flux_kohya", 0.8)]))
    control = _rgba(_run(generator, [DEPTH], controls=_depth()))
    assert both.tobytes() != control.tobytes()


# ------------------------------------------------------------------ over the websocket

def test_a_flux_job_with_a_control_and_a_lora_over_the_daemon(start_daemon, models_dir):
    """A client names the user's Flux ControlNet and LoRA files; the daemon lists them with
    their families, runs the job, and fails a wrong-family ControlNet on its field."""
    from protocol.client import AtelierClient, make_upload
    from protocol.events import JobDone
    from protocol.messages import Models

    daemon = start_daemon("--model", "tiny-flux", "--models-dir", str(models_dir))
    with AtelierClient(daemon.url, client_name="test_flux_controls") as client:
        client.wait_connected()
        listed = {m.name: m for m in client.call(Models, client.list_models, timeout=60).models}
        assert (listed[FLUX_CONTROLNET].kind, listed["flux_kohya"].family) == ("controlnet", "flux")
        def job(depth) -> GenerateRequest:
            return GenerateRequest(**JOB, loras=[LoraWeight("flux_kohya", 0.8)], controls=[
                ControlLayer(kind="depth", image=depth.id, model=FLUX_CONTROLNET)])

        # (the daemon's default levers fuse the VAE's attention: the LoRA goes on regardless)
        depth, depth_again = (make_upload(PixelFormat.GRAY8, SIZE, SIZE, DEPTH.data)
                              for _ in range(2))
        done = client.run_job(job(depth), [depth], timeout=120)
        assert isinstance(done, JobDone), done
        again = client.run_job(job(depth_again), [depth_again], timeout=120)
        assert again.images[0].data == done.images[0].data
        wrong = make_upload(PixelFormat.GRAY8, SIZE, SIZE, DEPTH.data)
        with pytest.raises(ProtocolError) as err:
            client.run_job(GenerateRequest(**JOB, controls=[ControlLayer(
                kind="depth", image=wrong.id, model=SD3_CONTROLNET)]), [wrong], timeout=120)
        assert (err.value.code, err.value.field) == (ErrorCode.INVALID_FIELD,
                                                     "job.controls[0].model")


def test_a_controlnet_of_every_block_counts_as_the_transformer_does():
    """The FLOPs figure of a Flux ControlNet (benchmarks/controlnet_flops.py) on the
    transformer benchmark's footing: one with all of FLUX.1-dev's blocks costs what the
    transformer does plus its output projection per block (width x width on every image
    token); its input projection of the control latents offsets the transformer's own
    output projection."""
    from benchmarks.controlnet_flops import controlnet_cost
    from benchmarks.transformer_flops import step_cost

    whole = step_cost("flux1-dev", 512)["tflop_per_step"]
    same_blocks = controlnet_cost(19, 38, None, side=512)["tflop_per_step"]
    tokens, width = (512 // 16) ** 2, 3072
    outputs = 2 * tokens * width * width * (19 + 38) / 1e12
    assert abs(same_blocks - whole - outputs) < 0.005 * whole
    assert controlnet_cost(5, 10, 10, side=512)["tflop_per_step"] < 0.35 * whole


# ------------------------------------------------------------------ FLUX.1-Depth/Canny-dev

def test_a_flux_depth_dev_model_reads_its_control_image_on_every_job_kind(store, generator):
    """FLUX.1-Depth/Canny-dev's transformer reads the control image's latents beside the
    picture's (FluxControlPipeline and kin, no ControlNet): a job's one depth or canny
    control is that image. It reproduces, another image steers otherwise, img2img and
    inpaint run (inpaint keeping every unmasked pixel), tiling reproduces and differs,
    and a job leaving steps and guidance out runs Depth-dev's card: 30 steps, guidance 10."""
    other = _gray(np.tile(np.linspace(255, 0, SIZE), (SIZE, 1)))
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:48, 16:48] = 255
    frame = _gray(mask)
    uploads = [DEPTH, other, INIT, frame]
    job = dict(model="tiny-flux-control", controls=[ControlLayer(kind="depth", image=DEPTH.id)])

    def run(**changes) -> bytes:
        return _rgba(_run(generator, uploads, **{**job, **changes})).tobytes()

    first = run()
    assert store.active.family == "flux_control"
    assert type(store.pipeline("txt2img")).__name__ == "FluxControlPipeline"
    assert first == run()
    assert first != run(controls=[ControlLayer(kind="depth", image=other.id)])
    # canny (Canny-dev's kind) on a colour picture: its edges are the control image
    edges = run(controls=[ControlLayer(kind="canny", image=INIT.id, preprocess=True)])
    assert edges not in (first, run(controls=[ControlLayer(kind="depth", image=INIT.id)]))
    assert run(kind="img2img", init_image=INIT.id, strength=0.7) != first
    inpainted = _rgba(_run(generator, uploads, **job, kind="inpaint", init_image=INIT.id,
                           mask=frame.id, strength=1.0, context_padding=8))
    original = np.frombuffer(INIT.data, np.uint8).reshape(SIZE, SIZE, 4)
    assert inpainted[mask == 0].tobytes() == original[mask == 0].tobytes()
    tiled = run(tiling="x")
    assert tiled == run(tiling="x") and tiled != first
    defaults = _run(generator, uploads, **job, steps=None, guidance=None)
    assert (defaults.params.steps, defaults.params.guidance) == (30, 10.0)
    store.use_default()


@pytest.mark.parametrize("controls, field, words", [
    ([], "job.controls", "needs a control image"),
    ([ControlLayer(kind="depth", image=DEPTH.id, scale=0.5)], "job.controls[0].scale", "no ControlNet"),
    ([ControlLayer(kind="depth", image=DEPTH.id, end=0.5)], "job.controls[0].end", "no ControlNet"),
    ([ControlLayer(kind="depth", image=DEPTH.id, model=FLUX_CONTROLNET)], "job.controls[0].model",
     "no ControlNet"),
    ([ControlLayer(kind="lineart", image=DEPTH.id)], "job.controls[0].kind", "depth or canny"),
    (_depth(None) * 2, "job.controls[1]", "one control"),
])
def test_a_flux_depth_dev_job_refuses_what_its_transformer_cannot_take(store, generator, controls,
                                                                      field, words):
    with pytest.raises(ProtocolError) as err:
        _run(generator, [DEPTH], model="tiny-flux-control", controls=controls)
    assert (err.value.code, err.value.field) == (ErrorCode.UNSUPPORTED, field), err.value.message
    assert words in err.value.message
    store.use_default()
