"""Model names stay inside the model roots (issue 11): the model folders, Atelier's home,
the Hugging Face cache, and the paths the operator gave the daemon. Whatever lies
elsewhere (or nowhere, or is no model) gets one and the same answer; files that would
hang or mislead the loader are refused before anything opens them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backend.app import create_daemon
from backend.cli import ws_url
from backend.models.catalog import list_models
from backend.models.ldm_keys import export_sd15_single_file
from backend.models.sources import resolve
from backend.models.store import ModelStore
from backend.pipelines.depth import DepthEstimator, find_depth_model
from backend.server import ServerConfig
from models_support import COMMIT, put_in_hf_cache, save_tiny_dpt, write_shaped_checkpoint
from protocol.client import AtelierClient
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import GenerateRequest, ModelLoaded

REPO = Path(__file__).resolve().parents[1]
SD15_KEYS = {"model.diffusion_model.input_blocks.0.0.weight": (32, 4, 3, 3),
             "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (1, 1)}


@pytest.fixture(scope="module")
def tiny_checkpoint(home, tmp_path_factory) -> Path:
    """The tiny model as one original-layout .safetensors file, outside every root."""
    store = ModelStore("cpu", torch.float32, home, [], hf_cache=home / "no-hf-cache")
    path = tmp_path_factory.mktemp("elsewhere") / "tiny-ldm.safetensors"
    return export_sd15_single_file(store.load("tiny").pipe, path)


@pytest.fixture
def layout(tmp_path, home):
    """A models folder and, beside it, things outside every root: a folder that looks like
    a model, a checkpoint, and a name that exists nowhere."""
    models = tmp_path / "roots" / "models"
    models.mkdir(parents=True)
    outside = tmp_path / "outside"
    (outside / "model").mkdir(parents=True)
    (outside / "model" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    write_shaped_checkpoint(outside / "secret.safetensors", SD15_KEYS)
    return models, outside


def _store(home: Path, *models_dirs: Path, allowed_paths=()) -> ModelStore:
    return ModelStore("cpu", torch.float32, home, list(models_dirs), hf_cache=home / "no-hf-cache",
                      allowed_paths=allowed_paths)


def _refusal(call, name: str) -> tuple[str, str]:
    """The (code, message with the name blanked out) a refusal of ``name`` gives."""
    with pytest.raises(ProtocolError) as err:
        call(name)
    assert err.value.field == "model"
    return err.value.code, err.value.message.replace(repr(name), "<name>").replace(name, "<name>")


def test_outside_the_roots_is_one_answer_whether_it_exists_or_not(home, layout):
    models, outside = layout
    store = _store(home, models)
    missing = _refusal(store.resolve, "no-such-model")
    assert missing[0] == ErrorCode.MODEL_NOT_FOUND
    for name in (str(outside / "model"), str(outside / "secret.safetensors"),
                 str(outside / "nothing.safetensors"), str(outside), "/etc", "/etc/passwd",
                 "/nonexistent", "~"):
        assert _refusal(store.resolve, name) == missing, name
        assert _refusal(store.load, name) == missing, name
    # the answer names no folder of this machine
    for root in (models, home, outside, Path.home()):
        assert str(root) not in missing[1]


def test_relative_traversal_and_odd_names_are_refused_alike(home, layout):
    models, outside = layout
    store = _store(home, models)
    missing = _refusal(store.resolve, "no-such-model")
    up = os.path.relpath(outside, models)            # ../../outside
    names = [f"{up}/secret.safetensors", f"{up}/model", "../" * 40 + "etc",
             "../" * 40 + "etc/passwd", "x" * 5000 + ".safetensors",   # too long for the OS
             "a\0b.safetensors"]
    for name in names:
        code, message = _refusal(store.resolve, name)
        assert code == missing[0], name
        assert message.replace(repr(name[:100] + "..."), "<name>") == missing[1], name


def test_a_symlink_inside_a_models_folder_leading_outside_is_refused(home, layout):
    models, outside = layout
    (models / "link.safetensors").symlink_to(outside / "secret.safetensors")
    (models / "linked-model").symlink_to(outside / "model")
    (models / "etc").symlink_to("/etc")
    store = _store(home, models)
    missing = _refusal(store.resolve, "no-such-model")
    for name in ("link.safetensors", "linked-model", "etc",
                 str(models / "link.safetensors"), str(models / "etc")):
        assert _refusal(store.resolve, name) == missing, name
    # shaped like a Hugging Face id: the answer for an id not in the cache
    assert _refusal(store.resolve, "etc/passwd") == _refusal(store.resolve, "no/such-model")
    # the listing shows what the link is, not where it leads
    catalog = list_models(home, [models], home / "no-hf-cache")
    assert "link.safetensors" not in {m.name for m in catalog.models}
    [problem] = catalog.problems
    assert problem.path == str(models / "link.safetensors") and str(outside) not in problem.message


def test_inside_the_roots_and_operator_paths_still_load(home, layout, tiny_checkpoint):
    models, _ = layout
    shutil.copy(tiny_checkpoint, models / "mine.safetensors")
    (models / "alias.safetensors").symlink_to(models / "mine.safetensors")   # a link within
    store = _store(home, models, allowed_paths=[tiny_checkpoint])
    assert store.load("mine.safetensors").family == "sd15"
    assert store.resolve(str(models / "alias.safetensors")).path == models / "mine.safetensors"
    assert store.resolve(str(home / "models" / "tiny")).kind == "diffusers"
    # outside the roots, but the operator named it on the command line
    assert store.load(str(tiny_checkpoint)).source.path == tiny_checkpoint
    other = tiny_checkpoint.with_name("copy.safetensors")
    shutil.copy(tiny_checkpoint, other)
    assert _refusal(store.resolve, str(other))[0] == ErrorCode.MODEL_NOT_FOUND


def test_a_daemon_may_load_the_paths_its_operator_gave(home, tiny_checkpoint):
    daemon = create_daemon(ServerConfig(port=0), model=str(tiny_checkpoint), device="cpu",
                           dtype="fp32", home=home, models_dirs=[], compile="off")
    store = daemon.models.store
    assert store.current.source.path == tiny_checkpoint
    # only what the operator named: not the folder around it
    assert _refusal(store.resolve, str(tiny_checkpoint.parent)) == _refusal(store.resolve, "nothing")
    store.release()


def test_pickles_are_refused_by_name_inside_the_roots_only(home, layout):
    models, outside = layout
    (models / "model.ckpt").write_bytes(b"never read")
    (outside / "model.ckpt").write_bytes(b"never read")
    store = _store(home, models)
    for name in ("model.ckpt", str(models / "model.ckpt"), "absent.pt"):
        code, message = _refusal(store.resolve, name)
        assert code == ErrorCode.MODEL_LOAD_FAILED and "pickle checkpoint" in message, name
    missing = _refusal(store.resolve, "no-such-model")
    assert _refusal(store.resolve, str(outside / "model.ckpt")) == missing
    assert _refusal(store.resolve, "/etc/absent.ckpt") == missing


FIFO_SCRIPT = """
import json, sys
from pathlib import Path
import torch
from backend.models.store import ModelStore
from protocol.errors import ProtocolError
models, home = Path(sys.argv[1]), Path(sys.argv[2])
store = ModelStore("cpu", torch.float32, home, [models], hf_cache=home / "no-hf-cache")
out = {}
for name in ("x.safetensors", str(models / "x.safetensors")):
    try:
        store.load(name)
        out[name] = None
    except ProtocolError as exc:
        out[name] = exc.code
from backend.models.sources import check_safetensors_file
try:
    check_safetensors_file(models / "x.safetensors")
except ProtocolError as exc:
    out["check"] = [exc.code, exc.message]
out["problems"] = [[p.path, p.message] for p in store.catalog().problems]
print(json.dumps(out))
"""


def test_a_fifo_named_like_a_checkpoint_is_refused_without_hanging(tmp_path):
    """Opening a FIFO for reading blocks until a writer comes, and safetensors holds the
    GIL while it waits: the whole process would freeze. Run in a subprocess so that a
    regression fails on the timeout instead of hanging the test run; nothing ever opens
    the FIFO's writing end."""
    models = tmp_path / "models"
    models.mkdir()
    os.mkfifo(models / "x.safetensors")
    done = subprocess.run([sys.executable, "-c", FIFO_SCRIPT, str(models), str(tmp_path / "home")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["x.safetensors"] == out[str(models / "x.safetensors")] == ErrorCode.MODEL_NOT_FOUND
    assert out["check"][0] == ErrorCode.MODEL_LOAD_FAILED and "not a regular file" in out["check"][1]
    assert out["problems"] == [[str(models / "x.safetensors"), out["check"][1]]]


@pytest.mark.parametrize("content, problem", [
    (b"", "0 bytes long"),
    (b"\x10\x00", "2 bytes long"),
    ((64).to_bytes(8, "little") + b"{}", "header claims 64 bytes"),              # truncated
    ((2 ** 62).to_bytes(8, "little") + b"{}" * 20, "header claims 4611686018427387904"),
    (b"not a safetensors file", "header claims"),
])
def test_a_checkpoint_with_an_impossible_header_gets_a_clear_error(home, tmp_path, content, problem):
    models = tmp_path / "models"
    models.mkdir()
    (models / "bad.safetensors").write_bytes(content)
    store = _store(home, models)
    with pytest.raises(ProtocolError) as err:
        store.load("bad.safetensors")
    assert err.value.code == ErrorCode.MODEL_LOAD_FAILED and err.value.field == "model"
    assert "bad.safetensors is not a usable safetensors file" in err.value.message
    assert problem in err.value.message
    [listed] = store.catalog().problems
    assert listed.path == str(models / "bad.safetensors") and problem in listed.message


def test_one_broken_model_folder_is_reported_and_the_others_listed(home, tmp_path):
    models = tmp_path / "models"
    (models / "good").mkdir(parents=True)
    write_shaped_checkpoint(models / "good" / "a.safetensors", SD15_KEYS)
    (models / "broken").mkdir()
    (models / "broken" / "model_index.json").write_text("{junk")
    (models / "listy").mkdir()
    (models / "listy" / "model_index.json").write_text("[1, 2]")
    cache = tmp_path / "hf"
    put_in_hf_cache(cache, "someone/broken", models / "broken")
    catalog = list_models(home, [models], cache)
    assert ("good/a.safetensors", "sd15") in {(m.name, m.family) for m in catalog.models}
    assert "tiny" in {m.name for m in catalog.models}
    by_path = {p.path: p.message for p in catalog.problems}
    snapshot = cache / "models--someone--broken" / "snapshots" / COMMIT
    assert set(by_path) == {str(models / "broken"), str(models / "listy"), str(snapshot)}
    assert "broken/model_index.json cannot be read as JSON" in by_path[str(models / "broken")]
    assert "not an object" in by_path[str(models / "listy")]

    # naming it to load, or in a job, fails the same documented way
    store = ModelStore("cpu", torch.float32, home, [models], hf_cache=cache)
    for name in ("broken", "someone/broken"):
        with pytest.raises(ProtocolError) as err:
            store.load(name)
        assert err.value.code == ErrorCode.MODEL_LOAD_FAILED, name


def _pickled_dpt(folder: Path) -> Path:
    """A depth model whose weights are only a pickle (pytorch_model.bin)."""
    save_tiny_dpt(folder)
    # transformers now saves only safetensors: turn the weights into the old pickle form
    weights = folder / "model.safetensors"
    torch.save(load_file(weights), folder / "pytorch_model.bin")
    weights.unlink()
    assert (folder / "pytorch_model.bin").is_file() and not list(folder.glob("*.safetensors"))
    return folder


def test_a_depth_estimator_with_only_pickle_weights_is_refused(tmp_path, monkeypatch):
    folder = _pickled_dpt(tmp_path / "dpt")
    unpickled = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: unpickled.append(a) or {})
    with pytest.raises(ProtocolError) as err:
        find_depth_model({"ATELIER_DEPTH_MODEL": str(folder)}, None)
    assert err.value.code == ErrorCode.MODEL_NOT_FOUND and err.value.field == "job.depth.estimate"
    assert "no .safetensors weights" in err.value.message
    assert "huggingface-cli download" in err.value.message
    with pytest.raises(ProtocolError) as err:
        DepthEstimator(folder)
    assert err.value.code == ErrorCode.MODEL_NOT_FOUND
    # a cached known estimator with pickle weights only is passed over, and said so
    cache = tmp_path / "hf"
    put_in_hf_cache(cache, "Intel/dpt-large", folder)
    with pytest.raises(ProtocolError) as err:
        find_depth_model({}, cache)
    assert "Intel/dpt-large is cached with .bin weights only" in err.value.message
    assert unpickled == []


def test_ipv6_hosts_get_brackets_in_the_printed_address():
    assert ws_url("::1", 7861) == "ws://[::1]:7861/"
    assert ws_url("127.0.0.1", 7861) == "ws://127.0.0.1:7861/"
    assert ws_url("localhost", 80) == "ws://localhost:80/"


def test_over_the_wire_existing_and_missing_paths_look_the_same(daemon):
    with AtelierClient(daemon.url, client_name="pytest-confinement") as client:
        client.wait_connected()
        answers = {}
        for name in ("/etc", "/nonexistent", "/etc/passwd"):
            with pytest.raises(ProtocolError) as err:
                client.call(ModelLoaded, lambda: client.load_model(name))
            answers[name] = (err.value.code, err.value.message.replace(repr(name), "<name>"))
        assert answers["/etc"] == answers["/nonexistent"] == answers["/etc/passwd"]
        assert answers["/etc"][0] == ErrorCode.MODEL_NOT_FOUND
        with pytest.raises(ProtocolError) as err:
            client.run_job(GenerateRequest(prompt="x", width=64, height=64, steps=1, model="/etc"),
                           timeout=60)
        assert (err.value.code, err.value.message.replace("'/etc'", "<name>")) == answers["/etc"]
