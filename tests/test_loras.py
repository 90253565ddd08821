"""LoRAs, textual-inversion embeddings, few-step presets and v-prediction (issue 15, the
daemon's part), on the tiny models loaded through the real model store, with tiny random
LoRAs and embeddings built by backend/models/tiny_extras.py in users' file layouts."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from backend.generation import GenerationOutput
from backend.limits import ServerLimits
from backend.models.catalog import list_models
from backend.models.ldm_keys import export_sd15_single_file
from backend.models.prediction import Prediction, single_file_prediction
from backend.models.loras import resolve_lora
from backend.models.sources import ModelRoots, ensure_tiny
from backend.models.store import LoadedModel, ModelStore
from backend.models.tiny_extras import build_tiny_embedding, build_tiny_lora
from backend.pipelines.generator import DiffusionGenerator
from backend.pipelines.lora_tags import extract_lora_tags, settle_loras
from backend.pipelines.plan import ModelTraits, plan_generation
from backend.pipelines.presets import PRESETS, apply_preset
from protocol.codec import decode_message as decode, encode_message as encode
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import (LORAS_MAX, SAMPLER_PRESETS, GenerateRequest, LoraWeight, Submit)

SIZE = 64


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def models_dir(home: Path) -> Path:
    """A user's models folder: LoRAs in A1111's Lora and ComfyUI's loras folders, in both
    key layouts, for SD1.5 and SDXL, an embedding folder, and a v-prediction model."""
    folder = home / "user-models"
    tiny, tiny_xl = ensure_tiny("tiny", home / "models"), ensure_tiny("tiny-sdxl", home / "models")
    build_tiny_lora(folder / "Lora" / "style_peft.safetensors", tiny, "diffusers")
    build_tiny_lora(folder / "Lora" / "style_kohya.safetensors", tiny, "kohya", seed=31)
    build_tiny_lora(folder / "loras" / "xl_kohya.safetensors", tiny_xl, "kohya", seed=41)
    build_tiny_lora(folder / "loras" / "xl_peft.safetensors", tiny_xl, "diffusers", seed=51)
    build_tiny_embedding(folder / "embeddings" / "mystyle.safetensors")
    build_tiny_embedding(folder / "embeddings" / "xlstyle.safetensors", sdxl=True)
    # The tiny model as a diffusers folder trained for v-prediction with zero terminal SNR.
    vpred = folder / "tiny-vpred"
    shutil.copytree(tiny, vpred)
    config_file = vpred / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config.update(prediction_type="v_prediction", rescale_betas_zero_snr=True,
                  timestep_spacing="trailing")
    config_file.write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def store(home: Path, models_dir: Path) -> ModelStore:
    store = ModelStore("cpu", torch.float32, home, search_dirs=[models_dir],
                       hf_cache=home / "no-hf-cache")
    store.load("tiny")
    return store


@pytest.fixture(scope="module")
def generator(store: ModelStore) -> DiffusionGenerator:
    return DiffusionGenerator(store)


def job(**changes) -> GenerateRequest:
    return GenerateRequest(**{"prompt": "a red brick wall", "width": SIZE, "height": SIZE,
                              "steps": 3, "seed": 7, "scheduler": "euler", **changes})


def run(generator: DiffusionGenerator, request: GenerateRequest) -> GenerationOutput:
    return generator.generate(request, {}, lambda *_: None, lambda: False)


def pixels(output: GenerationOutput) -> bytes:
    return output.images[0].pixels.rgba


def weights_digest(model: LoadedModel) -> str:
    """SHA-256 of every UNet and text-encoder tensor, by name."""
    digest = hashlib.sha256()
    for module in (model.pipe.unet, model.pipe.text_encoder):
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------ inline tags (pure)

def test_inline_tags_are_read_and_stripped():
    found = extract_lora_tags("a castle <lora:detail:0.8>, at dusk <LORA:sub/film>")
    assert found.text == "a castle , at dusk"
    assert found.loras == (LoraWeight("detail", 0.8), LoraWeight("sub/film", 1.0))
    assert extract_lora_tags("no tags <here>").text == "no tags <here>"


@pytest.mark.parametrize("prompt, code", [
    ("<lora:x:heavy>", ErrorCode.INVALID_FIELD),
    ("<lora::0.5>", ErrorCode.INVALID_FIELD),
    ("<lora:x:0.5:0.2>", ErrorCode.INVALID_FIELD),
    ("<lora:x:9>", ErrorCode.LIMIT_EXCEEDED),
])
def test_bad_inline_tags_name_the_prompt(prompt, code):
    with pytest.raises(ProtocolError) as info:
        extract_lora_tags(prompt)
    assert (info.value.code, info.value.field) == (code, "job.prompt")


def test_settling_merges_tags_after_the_list_and_checks_limits():
    settled = settle_loras(job(prompt="wall <lora:b:0.5>", loras=[LoraWeight("a", 1.0)]))
    assert settled.prompt == "wall" and [l.name for l in settled.loras] == ["a", "b"]
    assert settle_loras(settled) == settled                    # settling twice changes nothing
    with pytest.raises(ProtocolError) as info:
        settle_loras(job(prompt="<lora:a>", loras=[LoraWeight("a")]))
    assert info.value.field == "job.prompt"
    with pytest.raises(ProtocolError) as info:
        settle_loras(job(loras=[LoraWeight("a"), LoraWeight("a", 0.5)]))
    assert info.value.field == "job.loras[1].name"
    many = " ".join(f"<lora:l{i}>" for i in range(LORAS_MAX + 1))
    with pytest.raises(ProtocolError) as info:
        settle_loras(job(prompt=many))
    assert info.value.code == ErrorCode.LIMIT_EXCEEDED


def test_protocol_carries_loras_and_presets_with_bounds():
    submit = Submit(job=job(loras=[LoraWeight("detail", -1.5)], sampler_preset="lightning_4"))
    assert decode(encode(submit)) == submit
    wire = json.loads(encode(submit))
    wire["job"]["loras"][0]["weight"] = 4.5
    with pytest.raises(ProtocolError) as info:
        decode(json.dumps(wire))
    assert (info.value.code, info.value.field) == (ErrorCode.LIMIT_EXCEEDED, "job.loras[0].weight")
    wire["job"]["loras"] = [{"name": f"l{i}"} for i in range(LORAS_MAX + 1)]
    with pytest.raises(ProtocolError) as info:
        decode(json.dumps(wire))
    assert info.value.field == "job.loras"


# ------------------------------------------------------------------ presets (pure)

def test_presets_set_scheduler_steps_guidance_and_spacing():
    assert tuple(PRESETS) == SAMPLER_PRESETS
    plan = plan_generation(job(sampler_preset="lightning_4", steps=30, guidance=7.0), {},
                           ServerLimits(), ModelTraits(), fresh_seed=0)
    assert (plan.request.scheduler, plan.request.steps, plan.request.guidance) == ("euler", 4, 1.0)
    assert dict(plan.scheduler_config) == {"timestep_spacing": "trailing"}
    assert apply_preset(plan.request).request == plan.request          # idempotent
    assert apply_preset(job()).request == job()


def test_a_preset_job_runs_its_steps(generator):
    steps = []
    out = generator.generate(job(sampler_preset="turbo_1"), {}, lambda s, t, _: steps.append(t),
                             lambda: False)
    assert steps == [1] and out.params.steps == 1 and out.params.sampler_preset == "turbo_1"
    again = run(generator, out.params)
    assert pixels(again) == pixels(out)


# ------------------------------------------------------------------ LoRAs

def test_loras_change_the_image_reproducibly_and_leave_the_model_untouched(store, generator):
    store.use_default()
    loads = store.weight_loads
    before = weights_digest(store.active)
    plain = pixels(run(generator, job()))
    by_layout = {}
    for name in ("style_peft", "style_kohya"):
        first = pixels(run(generator, job(loras=[LoraWeight(name, 0.8)])))
        assert first != plain, f"{name} changed nothing"
        assert pixels(run(generator, job(loras=[LoraWeight(name, 0.8)]))) == first
        by_layout[name] = first
    assert by_layout["style_peft"] != by_layout["style_kohya"]
    both = pixels(run(generator, job(loras=[LoraWeight("style_peft", 0.8),
                                            LoraWeight("style_kohya", 0.5)])))
    assert both not in (plain, *by_layout.values())
    # Inline tags are the same LoRA at the same weight.
    inline = run(generator, job(prompt="a red brick wall <lora:style_kohya:0.8>"))
    assert pixels(inline) == by_layout["style_kohya"]
    assert inline.params.prompt == "a red brick wall"
    assert inline.params.loras == [LoraWeight("style_kohya", 0.8)]
    # Without LoRAs: the model's own modules and bit-identical weights, and its pixels.
    assert pixels(run(generator, job())) == plain
    assert weights_digest(store.active) == before
    assert not store.active.loras.active
    assert store.weight_loads == loads                    # no model was read again


def test_a_lora_of_another_family_fails_the_job_not_the_model(store, generator):
    store.use_default()
    for name in ("xl_kohya", "xl_peft"):
        with pytest.raises(ProtocolError) as info:
            run(generator, job(loras=[LoraWeight("style_peft"), LoraWeight(name)]))
        assert (info.value.code, info.value.field) == (ErrorCode.INVALID_FIELD, "loras[1].name")
        assert "sdxl" in info.value.message
    assert pixels(run(generator, job())) == pixels(run(generator, job()))


@pytest.mark.parametrize("name, code", [
    ("missing", ErrorCode.MODEL_NOT_FOUND),
    ("../../etc/passwd", ErrorCode.MODEL_NOT_FOUND),
    ("/etc/hostname", ErrorCode.MODEL_NOT_FOUND),
    ("mystyle", ErrorCode.MODEL_NOT_FOUND),          # not in a LoRA folder or a root
    ("embeddings/mystyle", ErrorCode.INVALID_FIELD),  # a file, but no LoRA
    ("style.ckpt", ErrorCode.MODEL_LOAD_FAILED),
])
def test_lora_names_resolve_inside_the_roots_only(store, generator, name, code):
    store.use_default()
    with pytest.raises(ProtocolError) as info:
        run(generator, job(loras=[LoraWeight(name)]))
    assert (info.value.code, info.value.field) == (code, "loras[0].name")
    assert "user-models" not in info.value.message     # no path of this machine


def test_sdxl_loras_in_both_layouts(store, generator):
    try:
        store.use("tiny-sdxl")
        plain = pixels(run(generator, job(model="tiny-sdxl")))
        for name in ("xl_kohya", "xl_peft"):
            with_lora = pixels(run(generator, job(model="tiny-sdxl", loras=[LoraWeight(name)])))
            assert with_lora != plain
        assert pixels(run(generator, job(model="tiny-sdxl"))) == plain
        with pytest.raises(ProtocolError) as info:
            run(generator, job(model="tiny-sdxl", loras=[LoraWeight("style_kohya")]))
        assert info.value.field == "loras[0].name"
    finally:
        store.use_default()


# ------------------------------------------------------------------ embeddings

def test_an_embedding_is_used_by_its_file_name(store, generator):
    store.use_default()
    plain = pixels(run(generator, job(prompt="a red brick wall")))
    styled = pixels(run(generator, job(prompt="a red brick wall mystyle")))
    assert "mystyle" in store.active.embeddings and styled != plain
    assert pixels(run(generator, job(prompt="a red brick wall mystyle"))) == styled
    # The SDXL embedding is for the other family: left out, the word stays a word.
    run(generator, job(prompt="xlstyle"))
    assert "xlstyle" in store.active.embeddings
    assert "xlstyle" not in store.active.pipe.tokenizer.get_vocab()


def test_an_sdxl_embedding_fills_both_text_encoders(store, generator):
    try:
        plain = pixels(run(generator, job(model="tiny-sdxl", prompt="a wall")))
        styled = pixels(run(generator, job(model="tiny-sdxl", prompt="a wall xlstyle")))
        model = store.active
        assert styled != plain
        assert "xlstyle" in model.pipe.tokenizer.get_vocab()
        assert "xlstyle" in model.pipe.tokenizer_2.get_vocab()
    finally:
        store.use_default()


# ------------------------------------------------------------------ catalog

def test_list_models_reports_loras_and_embeddings_with_kind_and_family(home, models_dir):
    catalog = list_models(home, [models_dir], home / "no-hf-cache")
    found = {(m.name, m.kind, m.family) for m in catalog.models}
    assert {("style_peft", "lora", "sd15"), ("style_kohya", "lora", "sd15"),
            ("xl_kohya", "lora", "sdxl"), ("xl_peft", "lora", "sdxl"),
            ("mystyle", "embedding", "sd15"), ("xlstyle", "embedding", "sdxl"),
            ("tiny-vpred", "checkpoint", "sd15"), ("tiny", "checkpoint", "sd15"),
            ("tiny-controlnet", "controlnet", "controlnet"),
            ("tiny-adapter", "t2i_adapter", "t2i_adapter")} <= found
    assert not catalog.problems


def test_list_models_reports_the_loras_and_embeddings_in_atelier_home(home, tmp_path):
    """Jobs find LoRAs and embeddings under $ATELIER_HOME; the list must offer them too,
    without walking the rest of the home (the spool, the tiny models' weights)."""
    tiny = ensure_tiny("tiny", home / "models")
    build_tiny_lora(tmp_path / "loras" / "home_lora.safetensors", tiny, "diffusers")
    build_tiny_lora(tmp_path / "Lora" / "sub" / "home_kohya.safetensors", tiny, "kohya", seed=3)
    build_tiny_embedding(tmp_path / "embeddings" / "homestyle.safetensors")
    build_tiny_lora(tmp_path / "spool" / "not_listed.safetensors", tiny, "diffusers")
    catalog = list_models(tmp_path, [], tmp_path / "no-hf-cache")
    found = {(m.name, m.kind, m.family) for m in catalog.models if m.source != "tiny"}
    assert found == {("home_lora", "lora", "sd15"), ("sub/home_kohya", "lora", "sd15"),
                     ("homestyle", "embedding", "sd15")}
    assert not catalog.problems
    roots = ModelRoots.of(tmp_path, [], tmp_path / "no-hf-cache")
    assert resolve_lora("home_lora", roots, "loras[0].name").path.name == "home_lora.safetensors"
    # A models folder that is the home's own LoRA folder is not listed twice.
    twice = list_models(tmp_path, [tmp_path / "loras"], tmp_path / "no-hf-cache")
    assert [m.name for m in twice.models].count("home_lora") == 1


# ------------------------------------------------------------------ v-prediction

def test_a_v_prediction_folder_samples_as_v_prediction(store, generator):
    try:
        vpred = run(generator, job(model="tiny-vpred"))
        model = store.active
        assert model.prediction == Prediction("v_prediction", zero_terminal_snr=True)
        assert model.prediction.scheduler_config() == {
            "prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
            "timestep_spacing": "trailing"}
        assert pixels(vpred) != pixels(run(generator, job(model="tiny")))
    finally:
        store.use_default()


def test_single_files_say_v_prediction_by_key_or_yaml(store, tmp_path):
    plain = export_sd15_single_file(store.current.pipe, tmp_path / "plain.safetensors")
    assert single_file_prediction(plain) == Prediction()
    tensors = load_file(str(plain))
    tensors.update(v_pred=torch.tensor([]), ztsnr=torch.tensor([]))
    save_file(tensors, str(tmp_path / "noob.safetensors"))
    assert single_file_prediction(tmp_path / "noob.safetensors") == Prediction("v_prediction", True)
    (tmp_path / "plain.yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n")
    assert single_file_prediction(plain) == Prediction("v_prediction", False)


def test_loras_on_a_model_with_fused_attention_and_a_prompt_cache(home, models_dir, generator):
    """Fused q/k/v projections would bypass LoRA layers: they are split while LoRAs are on
    and fused again after; cached prompt embeddings are not a LoRA'd text encoder's."""
    from backend.models.accel import FUSE_QKV, AccelOptions

    store = ModelStore("cpu", torch.float32, home, search_dirs=[models_dir],
                       hf_cache=home / "no-hf-cache",
                       accel=AccelOptions(sdpa=True, fuse_qkv=True, prompt_cache_size=4))
    fast = DiffusionGenerator(store)
    store.load("tiny")
    assert FUSE_QKV in store.active.accel.applied
    plain = pixels(run(fast, job()))
    with_lora = run(fast, job(loras=[LoraWeight("style_peft", 0.8)]))
    reference = run(generator, job(loras=[LoraWeight("style_peft", 0.8)]))
    diff = torch.tensor(list(pixels(with_lora))) - torch.tensor(list(pixels(reference)))
    assert diff.abs().max() <= 2          # the plain store's LoRA image, within rounding
    assert pixels(run(fast, job())) == plain
    assert not store.active.loras.unfused


# ------------------------------------------------------------------ over the wire

def test_the_daemon_announces_and_runs_it(daemon):
    from protocol.client import AtelierClient, JobDone

    with AtelierClient(daemon.url, client_name="pytest-loras") as client:
        client.wait_connected()
        welcome = client.welcome
        assert {"lora", "embeddings", "sampler_presets"} <= set(welcome.capabilities)
        assert welcome.sampler_presets == list(SAMPLER_PRESETS)
        with pytest.raises(ProtocolError) as info:
            client.run_job(job(prompt="a wall <lora:nowhere:0.5>"), (), timeout=120)
        assert (info.value.code, info.value.field) == (ErrorCode.MODEL_NOT_FOUND,
                                                       "job.loras[0].name")
        done = client.run_job(job(sampler_preset="lcm_4"), (), timeout=120)
        assert isinstance(done, JobDone) and done.result.params.steps == 4
