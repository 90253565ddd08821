"""The model store keeps serving: a failed load keeps the previous model, a job naming a
model leaves the default alone, recently used models stay resident within a budget, and
the device cache is freed after an out-of-memory job. Real tiny models, on the CPU."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import pytest
import torch

from backend.app import StoreService
from backend.generation import GenerationOutput
from backend.models import store as store_module
from backend.models.accel import AccelOptions
from backend.models.store import LoadedModel, ModelStore
from backend.pipelines.generator import DiffusionGenerator
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import GenerateRequest

SIZE = 64


def _store(home: Path, search_dirs: tuple[Path, ...] = (), **options) -> ModelStore:
    return ModelStore("cpu", torch.float32, home, search_dirs=list(search_dirs),
                      hf_cache=home / "no-hf-cache", **options)


def _job(model: Optional[str] = None) -> GenerateRequest:
    return GenerateRequest(prompt="a red brick wall", width=SIZE, height=SIZE, steps=2, seed=7,
                           scheduler="euler", model=model)


def _run(generator: DiffusionGenerator, model: Optional[str] = None) -> GenerationOutput:
    return generator.generate(_job(model), {}, lambda *_: None, lambda: False)


@pytest.fixture(scope="module")
def broken_folder(atelier_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny model with every config but no UNet weights."""
    folder = tmp_path_factory.mktemp("broken-models") / "tiny-without-unet"
    shutil.copytree(_store(atelier_home).resolve("tiny").path, folder)
    for weights in (folder / "unet").glob("*.safetensors"):
        weights.unlink()
    return folder


def test_a_model_without_unet_weights_fails_and_the_previous_keeps_serving(atelier_home, broken_folder):
    store = _store(atelier_home, (broken_folder.parent,))
    generator = DiffusionGenerator(store)
    tiny = store.load("tiny")
    name = str(broken_folder)
    with pytest.raises(ProtocolError) as loading:
        store.load(name)
    assert store.current is tiny and store.active is tiny and tiny.pipe is not None
    assert _run(generator).model == "tiny"
    assert loading.value.code == ErrorCode.MODEL_LOAD_FAILED and loading.value.field == "model"
    assert loading.value.message.startswith(f"could not load {name}: ")
    # A job naming the same model fails the same way, and the default still serves.
    with pytest.raises(ProtocolError) as job:
        _run(generator, name)
    assert (job.value.code, job.value.field) == (loading.value.code, loading.value.field)
    assert _run(generator).model == "tiny"
    assert store.resident() == ["tiny"]


def test_a_failed_warm_up_brings_the_previous_model_back(atelier_home):
    store = _store(atelier_home)
    generator = DiffusionGenerator(store)
    tiny = store.load("tiny")

    def warm_up(model: LoadedModel) -> int:
        if model.name == "tiny-sdxl":
            raise RuntimeError("warm-up broke")
        return generator.warm_up(model)

    store.warm_up = warm_up
    with pytest.raises(ProtocolError) as err:
        store.use("tiny-sdxl")
    assert err.value.code == ErrorCode.MODEL_LOAD_FAILED
    assert err.value.message == "could not load tiny-sdxl: RuntimeError: warm-up broke"
    assert store.active is tiny and store.resident() == ["tiny"]
    assert _run(generator).model == "tiny"


def test_a_job_naming_a_model_leaves_the_default_to_everyone_else(atelier_home):
    store = _store(atelier_home)
    generator = DiffusionGenerator(store)
    tiny = store.load("tiny")
    pipe = tiny.pipe
    assert _run(generator, "tiny-sdxl").model == "tiny-sdxl"
    assert store.current is tiny and StoreService(store).current_name() == "tiny"
    assert _run(generator).model == "tiny"                # another client's job, naming none
    assert store.active is tiny and tiny.pipe is pipe
    assert store.weight_loads == 2                        # tiny was not read again


def test_switching_back_and_forth_within_the_budget_reads_each_model_once(atelier_home):
    store = _store(atelier_home)
    generator = DiffusionGenerator(store)
    store.load("tiny")
    for _ in range(2):
        assert _run(generator, "tiny-sdxl").model == "tiny-sdxl"
        store.use("tiny-depth")                           # it runs only depth jobs
        assert _run(generator).model == "tiny"
    assert store.weight_loads == 3
    assert store.resident() == ["tiny-sdxl", "tiny-depth", "tiny"]


def test_beyond_the_budget_the_least_recently_used_model_is_released(atelier_home):
    sizes = {name: _store(atelier_home).load(name).nbytes()
             for name in ("tiny", "tiny-sdxl", "tiny-depth")}
    two_largest = sum(sorted(sizes.values())[1:])        # any two fit, all three do not
    store = _store(atelier_home, resident_bytes=two_largest)
    tiny = store.load("tiny")
    sdxl = store.use("tiny-sdxl")
    store.use("tiny-depth")
    assert store.resident() == ["tiny-sdxl", "tiny-depth"]
    assert tiny.released and tiny.pipe is None and not sdxl.released
    # The default was pushed out: the next job naming no model reads it again.
    assert StoreService(store).current_name() == "tiny"
    again = store.use_default()
    assert again.name == "tiny" and store.current is again and store.weight_loads == 4
    assert store.resident() == ["tiny-depth", "tiny"] and sdxl.released


def test_the_active_model_stays_even_beyond_the_budget(atelier_home):
    store = _store(atelier_home, resident_bytes=1)
    store.load("tiny")
    sdxl = store.use("tiny-sdxl")
    assert store.resident() == ["tiny-sdxl"] and store.active is sdxl and not sdxl.released


def test_low_memory_mode_keeps_only_the_active_model(atelier_home):
    # On the CPU the offload itself is skipped, but the mode's budget still holds.
    store = _store(atelier_home, accel=AccelOptions(cpu_offload=True))
    tiny = store.load("tiny")
    store.use("tiny-sdxl")
    assert store.resident() == ["tiny-sdxl"] and tiny.released


def test_controlnets_are_checked_and_kept_per_model(atelier_home):
    store = _store(atelier_home)
    store.load("tiny")
    controlnet = store.controlnet("tiny-controlnet")
    store.use("tiny-sdxl")
    with pytest.raises(ProtocolError) as err:             # built for the SD1.5 UNet's width
        store.controlnet("tiny-controlnet")
    assert err.value.code == ErrorCode.UNSUPPORTED and err.value.field == "control.model"
    sdxl_controlnet = store.controlnet("tiny-sdxl-controlnet")
    assert store.pipeline("txt2img", controlnet="tiny-sdxl-controlnet").controlnet is sdxl_controlnet
    store.use_default()
    assert store.controlnet("tiny-controlnet") is controlnet
    assert store.active is not None and store.active.controlnets == {"tiny-controlnet": controlnet}


def test_after_an_out_of_memory_job_the_cache_is_freed_and_the_next_job_runs(atelier_home, monkeypatch):
    store = _store(atelier_home)
    generator = DiffusionGenerator(store)
    unet = store.load("tiny").pipe.unet

    def out_of_memory(*_):
        raise torch.OutOfMemoryError("x")

    hook = unet.register_forward_pre_hook(out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        _run(generator)
    hook.remove()
    freed: list[str] = []
    monkeypatch.setattr(store_module, "free_device_cache", freed.append)
    StoreService(store).after_out_of_memory()
    assert freed == ["cpu"]
    output = _run(generator)
    assert output.model == "tiny" and len(output.images) == 1
