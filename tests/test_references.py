"""Reference images (IP-Adapter, PROTOCOL.md 4.6) on the tiny models, with the tiny
IP-Adapters and CLIP image encoder the project builds, found in a user's ComfyUI folders
(``ipadapter/``, ``clip_vision/``) and in an h94/IP-Adapter layout in the HF cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from backend.generation import GenerationOutput
from backend.models.catalog import list_models
from backend.models.sources import ensure_tiny
from backend.models.store import ModelStore
from backend.models.tiny_references import build_tiny_image_encoder, build_tiny_ip_adapter
from backend.pipelines.generator import DiffusionGenerator
from backend.pipelines.plan import ModelTraits
from backend.pipelines.references import flavour_scale, style_block
from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import FrameKind, ImageFrame, PixelFormat, new_id
from protocol.messages import ControlLayer, GenerateRequest, ReferenceImage, Region
from tests.models_support import put_in_hf_cache

SIZE = 64
SD15_ADAPTER = "tiny-ip-adapter_sd15"
SDXL_ADAPTER = "tiny-ip-adapter_sdxl"
PLUS_ADAPTER = "tiny-ip-adapter_sd15_plus"
HF_ADAPTER = "h94/IP-Adapter/models/ip-adapter_sd15"


def picture(seed: int, width: int = 48, height: int = 40, alpha: int = 255) -> ImageFrame:
    rgba = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    rgba[..., 3] = alpha
    return ImageFrame(FrameKind.UPLOAD, PixelFormat.RGBA8, 0, width, height, new_id(), rgba.tobytes())


def gray(value: int) -> ImageFrame:
    return ImageFrame(FrameKind.UPLOAD, PixelFormat.GRAY8, 0, SIZE, SIZE, new_id(),
                      bytes([value]) * SIZE * SIZE)


RED, BLUE = picture(1), picture(2)
UPLOADS = {frame.id: frame for frame in (RED, BLUE)}


@pytest.fixture(scope="module")
def hf_cache(atelier_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF cache holding h94/IP-Adapter's layout: ``models/ip-adapter_sd15.safetensors``
    (a tiny adapter of its own weights) beside ``models/image_encoder/`` (a folder)."""
    repo = tmp_path_factory.mktemp("h94-repo")
    build_tiny_ip_adapter(repo / "models" / "ip-adapter_sd15.safetensors",
                          ensure_tiny("tiny", atelier_home / "models"), seed=77)
    build_tiny_image_encoder(repo / "models" / "image_encoder")
    cache = tmp_path_factory.mktemp("hf-cache")
    put_in_hf_cache(cache, "h94/IP-Adapter", repo)
    return cache


@pytest.fixture(scope="module")
def store(atelier_home: Path, reference_models_dir: Path, hf_cache: Path) -> ModelStore:
    store = ModelStore("cpu", torch.float32, atelier_home, search_dirs=[reference_models_dir],
                       hf_cache=hf_cache)
    store.load("tiny")
    return store


@pytest.fixture(scope="module")
def generator(store: ModelStore) -> DiffusionGenerator:
    return DiffusionGenerator(store)


def job(*references: ReferenceImage, **changes) -> GenerateRequest:
    return GenerateRequest(**{"prompt": "a red brick wall", "width": SIZE, "height": SIZE,
                              "steps": 3, "seed": 7, "scheduler": "euler",
                              "references": list(references), **changes})


def ref(frame: ImageFrame = RED, **changes) -> ReferenceImage:
    return ReferenceImage(**{"image": frame.id, "weight": 0.8, "model": SD15_ADAPTER, **changes})


def run(generator: DiffusionGenerator, request: GenerateRequest,
        uploads: dict[str, ImageFrame] = UPLOADS) -> GenerationOutput:
    return generator.generate(request, uploads, lambda *_: None, lambda: False)


def pixels(generator: DiffusionGenerator, request: GenerateRequest,
           uploads: dict[str, ImageFrame] = UPLOADS) -> bytes:
    return run(generator, request, uploads).images[0].pixels.rgba


def failure(generator: DiffusionGenerator, request: GenerateRequest,
            uploads: dict[str, ImageFrame] = UPLOADS) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        run(generator, request, uploads)
    return info.value


# ------------------------------------------------------------------ pixels

def test_a_reference_steers_and_weight_zero_is_no_reference(generator):
    plain = pixels(generator, job())
    steered = pixels(generator, job(ref()))
    assert steered != plain
    assert pixels(generator, job(ref())) == steered                 # reproducible
    assert pixels(generator, job(ref(weight=0.0))) == plain         # byte for byte
    assert pixels(generator, job(ref(), ref(BLUE, weight=0.0))) == steered
    assert pixels(generator, job(ref(weight=0.3))) not in (plain, steered)


def test_two_references_compose_each_with_its_own_weight(generator):
    red, blue = pixels(generator, job(ref())), pixels(generator, job(ref(BLUE)))
    both = pixels(generator, job(ref(), ref(BLUE)))
    assert len({red, blue, both}) == 3
    assert pixels(generator, job(ref(), ref(BLUE, weight=0.4))) not in (red, blue, both)


def test_style_acts_on_the_style_block_only_and_differs_from_content(generator, store):
    unet = store.active.pipe.unet
    assert style_block(unet) == (0, 1, 3)          # the tiny UNet's lowest-resolution up block
    assert flavour_scale(unet, "style", 0.8) == {"up": {"block_0": [0.0, 0.8, 0.0]}}
    plain, content = pixels(generator, job()), pixels(generator, job(ref()))
    style = pixels(generator, job(ref(flavour="style")))
    assert len({plain, content, style}) == 3


def test_the_model_is_as_before_after_a_reference_job(generator, store):
    unet = store.active.pipe.unet
    before = dict(unet.attn_processors)
    plain = pixels(generator, job())
    pixels(generator, job(ref(), ref(BLUE, flavour="style")))
    assert pixels(generator, job()) == plain
    assert dict(unet.attn_processors) == before     # the same processor objects
    assert unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type is None


def test_compiled_unet_matches_eager_and_plain_jobs_keep_their_graphs(atelier_home,
                                                                      reference_models_dir,
                                                                      generator):
    from backend.models.accel import AccelOptions
    from models_support import CompileCounter

    graphs = CompileCounter()      # dynamo's capture and guards; counts each compile
    options = AccelOptions(fuse_qkv=True, compile_unet=True, compile_backend=graphs)
    store = ModelStore("cpu", torch.float32, atelier_home, [reference_models_dir],
                       hf_cache=atelier_home / "no-hf-cache", accel=options)
    store.load("tiny")
    compiled = DiffusionGenerator(store)
    plain = pixels(compiled, job())
    assert pixels(compiled, job(ref())) == pixels(generator, job(ref()))
    after_reference = len(graphs)
    assert pixels(compiled, job(ref())) == pixels(generator, job(ref()))
    assert pixels(compiled, job()) == plain == pixels(generator, job())
    # the same references again, and plain jobs after them, compile nothing new
    assert len(graphs) == after_reference


def test_references_with_every_kind_controls_regions_tiling_caching_and_batches(generator):
    init = picture(5, SIZE, SIZE)
    uploads = {**UPLOADS, init.id: init}
    mask = gray(255)
    half = ImageFrame(FrameKind.UPLOAD, PixelFormat.GRAY8, 0, SIZE, SIZE, new_id(),
                      (bytes([255]) * (SIZE // 2) + bytes(SIZE // 2)) * SIZE)
    uploads.update({mask.id: mask, half.id: half})
    cases = [dict(kind="img2img", init_image=init.id, strength=0.7),
             dict(kind="inpaint", init_image=init.id, mask=mask.id, strength=0.9),
             dict(controls=[ControlLayer(kind="canny", image=init.id, preprocess=True)]),
             dict(tiling="both"), dict(batch_size=2), dict(cache_interval=2, steps=4),
             dict(regions=[Region(mask=half.id, prompt="a blue sky")]),
             dict(sampler_preset="lcm_4")]
    for case in cases:
        plain = run(generator, job(**case), uploads)
        steered = run(generator, job(ref(), **case), uploads)
        for a, b in zip(plain.images, steered.images):
            assert a.pixels.rgba != b.pixels.rgba, case
    # Image 1 of a batch is the job with seed + 1, within a level of rounding (as without
    # references: batched matmuls round differently)
    batch = run(generator, job(ref(), batch_size=2), uploads).images[1].pixels.rgba
    single = run(generator, job(ref(), seed=8), uploads).images[0].pixels.rgba
    difference = np.abs(np.frombuffer(batch, np.uint8).astype(int) -
                        np.frombuffer(single, np.uint8).astype(int))
    assert difference.max() <= 1


def test_a_plus_adapter_reads_the_encoders_hidden_states(generator, store):
    plain, steered = pixels(generator, job()), pixels(generator, job(ref()))
    plus = pixels(generator, job(ref(model=PLUS_ADAPTER)))
    assert plus not in (plain, steered)
    assert pixels(generator, job(ref(model=PLUS_ADAPTER), ref(BLUE))) not in (plus, steered)
    loaded = [a for a in store.active.references.adapters.values() if a.file.name == PLUS_ADAPTER]
    assert loaded[0].file.hidden_states and loaded[0].tokens == 16


def test_sdxl_runs_its_own_adapter_by_default(generator):
    plain = pixels(generator, job(model="tiny-sdxl"))
    steered = pixels(generator, job(ref(model=None), model="tiny-sdxl"))
    named = pixels(generator, job(ref(model=SDXL_ADAPTER), model="tiny-sdxl"))
    assert steered == named != plain
    assert pixels(generator, job(ref(model=SDXL_ADAPTER, flavour="style"),
                                 model="tiny-sdxl")) not in (plain, named)
    assert pixels(generator, job(model="tiny-sdxl")) == plain


def test_an_adapter_in_the_hf_cache_reads_with_the_encoder_beside_it(generator, store):
    plain = pixels(generator, job())
    cached = pixels(generator, job(ref(model=HF_ADAPTER)))
    default = pixels(generator, job(ref(model=None)))      # the first of the defaults
    assert cached == default and cached not in (plain, pixels(generator, job(ref())))
    folders = {p.name for p in store.active.references.encoders}
    assert {"image_encoder", "tiny-clip-vision.safetensors"} <= folders


def test_loaded_adapters_are_bounded_per_model(store, reference_models_dir, tmp_path):
    import shutil

    from backend.models.ip_adapters import MAX_LOADED_ADAPTERS, ReferenceModels, find_adapter
    from backend.models.sources import ModelRoots

    shutil.copytree(reference_models_dir / "clip_vision", tmp_path / "clip_vision")
    for i in range(MAX_LOADED_ADAPTERS + 1):
        (tmp_path / "ipadapter").mkdir(exist_ok=True)
        shutil.copy(reference_models_dir / "ipadapter" / f"{SD15_ADAPTER}.safetensors",
                    tmp_path / "ipadapter" / f"copy{i}.safetensors")
    roots = ModelRoots.of(tmp_path, [], tmp_path / "no-cache")
    loaded = ReferenceModels()
    unet = store.use("tiny").pipe.unet
    for i in [0, 1, 2, 3, 0, 4]:      # 0 used again before the fifth arrives
        loaded.load(find_adapter(f"copy{i}", roots, tmp_path, "f"), unet, roots, tmp_path,
                    "cpu", torch.float32, "f")
    assert [path.stem for path in loaded.adapters] == ["copy2", "copy3", "copy0", "copy4"]
    assert len(loaded.encoders) == 1


# ------------------------------------------------------------------ errors

def test_errors_name_the_reference_field(generator):
    unknown = ReferenceImage(image=new_id())
    error = failure(generator, job(ref(), unknown))
    assert (error.code, error.field) == (ErrorCode.UNKNOWN_UPLOAD, "job.references[1].image")
    with pytest.raises(ProtocolError) as info:      # at submit, before any model
        generator.check(job(unknown), UPLOADS)
    assert info.value.field == "job.references[0].image"
    mask = gray(128)       # a mask is not a picture
    with pytest.raises(ProtocolError) as info:
        generator.check(job(ref(mask)), {mask.id: mask})
    assert (info.value.code, info.value.field) == (ErrorCode.INVALID_FIELD, "job.references[0].image")
    error = failure(generator, job(ref(model="nowhere")))
    assert (error.code, error.field) == (ErrorCode.MODEL_NOT_FOUND, "job.references[0].model")
    error = failure(generator, job(ref(), ref(model=SDXL_ADAPTER)))
    assert (error.code, error.field) == (ErrorCode.INVALID_FIELD, "job.references[1].model")
    assert "sdxl" in error.message
    error = failure(generator, job(ref(model="ip-adapter_sd15.bin")))
    assert (error.code, error.field) == (ErrorCode.MODEL_LOAD_FAILED, "job.references[0].model")
    error = failure(generator, job(ref(), model="tiny-depth", kind="img2img",
                                   init_image=RED.id, width=48, height=40))
    assert (error.code, error.field) == (ErrorCode.UNSUPPORTED, "job.references")


@pytest.mark.parametrize("kind", ["upscale", "texture_set", "preprocess"])
def test_kinds_without_a_diffusion_job_of_their_own_refuse_references(kind):
    from backend.limits import ServerLimits
    from backend.pipelines.asset_plan import plan_texture_set, plan_upscale
    from backend.pipelines.plan import plan_preprocess

    request = job(ref(), kind=kind, init_image=RED.id, width=48, height=40,
                  controls=[ControlLayer(kind="canny", image=RED.id, preprocess=True)]
                  if kind == "preprocess" else [])
    check = {"upscale": lambda: plan_upscale(request, UPLOADS, ServerLimits(), ModelTraits(), 0),
             "texture_set": lambda: plan_texture_set(request, UPLOADS, 0),
             "preprocess": lambda: plan_preprocess(request, UPLOADS, ServerLimits())}[kind]
    with pytest.raises(ProtocolError) as info:
        check()
    assert (info.value.code, info.value.field) == (ErrorCode.INVALID_FIELD, "job.references")


def test_missing_adapter_or_encoder_says_what_to_fetch(atelier_home, tmp_path):
    adapter_only = tmp_path / "models"
    build_tiny_ip_adapter(adapter_only / "ipadapter" / f"{SD15_ADAPTER}.safetensors",
                          ensure_tiny("tiny", atelier_home / "models"))
    for folders, what in (([], "IP-Adapter"), ([adapter_only], "image encoder")):
        bare = ModelStore("cpu", torch.float32, atelier_home, search_dirs=folders,
                          hf_cache=tmp_path / "empty-cache")
        bare.load("tiny")
        error = failure(DiffusionGenerator(bare), job(ref(model=None)))
        assert (error.code, error.field) == (ErrorCode.MODEL_NOT_FOUND, "job.references[0].model")
        assert what in error.message and "atelier models pull h94/IP-Adapter" in error.message


def test_pull_fetches_one_adapter_and_its_encoder_and_it_then_serves(atelier_home, tmp_path):
    from models_support.fake_hub import FakeHub
    from test_models_hub import _pull

    repo = tmp_path / "repo"
    build_tiny_ip_adapter(repo / "models" / "ip-adapter_sd15.safetensors",
                          ensure_tiny("tiny", atelier_home / "models"))
    build_tiny_image_encoder(repo / "models" / "image_encoder")
    (repo / "models" / "image_encoder" / "pytorch_model.bin").write_bytes(b"pickle")
    (repo / "models" / "ip-adapter_sd15.bin").write_bytes(b"pickle")
    for name in ("sdxl_models/ip-adapter_sdxl.safetensors",
                 "sdxl_models/ip-adapter_sdxl_vit-h.safetensors",
                 "sdxl_models/image_encoder/config.json",
                 "sdxl_models/image_encoder/model.safetensors"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(b"{}")
    cache = tmp_path / "hub-cache"
    encoder = {"models/image_encoder/config.json", "models/image_encoder/model.safetensors"}
    with FakeHub("h94/IP-Adapter", repo) as fake:
        result = _pull(fake.url, cache, HF_ADAPTER, "h94/IP-Adapter/models/nothing")
        assert fake.downloaded() == {"models/ip-adapter_sd15.safetensors", *encoder}
        # SDXL's ViT-H adapters come with the ViT-H encoder, not the bigG one beside them
        _pull(fake.url, tmp_path / "other-cache", "h94/IP-Adapter/sdxl_models/ip-adapter_sdxl_vit-h")
        assert fake.downloaded() == {"models/ip-adapter_sd15.safetensors",
                                     "sdxl_models/ip-adapter_sdxl_vit-h.safetensors", *encoder}
    assert result["h94/IP-Adapter/models/nothing"]["error"] == "model_not_found"
    store = ModelStore("cpu", torch.float32, atelier_home, search_dirs=[], hf_cache=cache)
    store.load("tiny")
    generator = DiffusionGenerator(store)
    assert pixels(generator, job(ref(model=None))) != pixels(generator, job())


def test_the_cli_sends_references(tmp_path):
    import PIL.Image

    from backend.cli import _parser, request_from_args

    picture = tmp_path / "painting.png"
    PIL.Image.new("RGB", (40, 30), (200, 80, 20)).save(picture)
    args = _parser().parse_args(["generate", "-p", "a house", "--reference", str(picture),
                                 "--reference", f"style={picture}@1.2"])
    job, uploads = request_from_args(args)
    assert job.references == [ReferenceImage(image=uploads[0].id),
                              ReferenceImage(image=uploads[1].id, weight=1.2, flavour="style")]
    with pytest.raises(SystemExit):
        _parser().parse_args(["generate", "--reference", f"{picture}@heavy"])


# ------------------------------------------------------------------ listing and the wire

def test_list_models_shows_adapters_with_their_family(atelier_home, reference_models_dir, hf_cache):
    catalog = list_models(atelier_home, [reference_models_dir], hf_cache)
    adapters = {m.name: m.family for m in catalog.models if m.kind == "ip_adapter"}
    assert adapters == {SD15_ADAPTER: "sd15", PLUS_ADAPTER: "sd15", SDXL_ADAPTER: "sdxl",
                        HF_ADAPTER: "sd15"}
    listed = {Path(m.path).name for m in catalog.models if m.path}
    assert "tiny-clip-vision.safetensors" not in listed and not catalog.problems


def test_adapters_in_atelier_home_and_a1111s_controlnet_folder(reference_models_dir, tmp_path):
    import shutil

    from backend.models.ip_adapters import find_adapter
    from backend.models.sources import ModelRoots

    home, a1111 = tmp_path / "home", tmp_path / "a1111-models"
    for folder, name in ((home / "ipadapter", "mine"), (a1111 / "ControlNet", "ip-adapter_sd15")):
        folder.mkdir(parents=True)
        shutil.copy(reference_models_dir / "ipadapter" / f"{SD15_ADAPTER}.safetensors",
                    folder / f"{name}.safetensors")
    (a1111 / "ControlNet" / "ip-adapter_sdxl.pth").write_bytes(b"pickle")
    catalog = list_models(home, [a1111], tmp_path / "no-cache")
    assert {m.name for m in catalog.models if m.kind == "ip_adapter"} == {"mine", "ip-adapter_sd15"}
    roots = ModelRoots.of(home, [a1111], tmp_path / "no-cache")
    assert find_adapter("mine", roots, tmp_path, "f").path.parent.name == "ipadapter"
    assert find_adapter("ip-adapter_sd15", roots, tmp_path, "f").family == "sd15"
    with pytest.raises(ProtocolError) as info:
        find_adapter("ip-adapter_sdxl.pth", roots, tmp_path, "f")
    assert info.value.code == ErrorCode.MODEL_LOAD_FAILED and "pickle" in info.value.message


def test_the_daemon_announces_and_runs_references(start_daemon, reference_models_dir):
    from protocol.client import AtelierClient, JobDone
    from protocol.messages import Models

    daemon = start_daemon("--models-dir", str(reference_models_dir))
    with AtelierClient(daemon.url, client_name="pytest-references") as client:
        client.wait_connected()
        assert "reference" in client.welcome.capabilities
        models = client.call(Models, client.list_models, timeout=60)
        assert {(m.name, m.kind, m.family) for m in models.models} >= {
            (SD15_ADAPTER, "ip_adapter", "sd15"), (SDXL_ADAPTER, "ip_adapter", "sdxl")}
        request = job(ref(model=None))
        done = client.run_job(request, [RED], timeout=120)
        assert isinstance(done, JobDone) and done.result.params.references == request.references
        plain = client.run_job(job(), (), timeout=120)
        assert done.images[0].data != plain.images[0].data
        with pytest.raises(ProtocolError) as info:
            client.run_job(job(ref(model="nowhere")), [RED], timeout=120)
        assert (info.value.code, info.value.field) == (ErrorCode.MODEL_NOT_FOUND,
                                                       "job.references[0].model")
