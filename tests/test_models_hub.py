"""``atelier models pull``: what is fetched from the hub, exercised against a loopback
stand-in for the hub, and what the loader then finds in the cache offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backend.models import hub
from backend.models.single_file import find_clip_tokenizer
from backend.models.store import ModelStore
from models_support.fake_hub import COMMIT, FakeHub
from protocol.errors import ErrorCode, ProtocolError

REPO = Path(__file__).resolve().parents[1]

# Runs pull() the way `atelier models pull` does: a fresh process, online, HF_ENDPOINT set.
PULL_SCRIPT = """
import json, sys
from pathlib import Path
from backend.models.hub import pull
from protocol.errors import ProtocolError
cache = Path(sys.argv[1])
for model_id in sys.argv[2:]:
    seen = []
    try:
        result = pull(model_id, lambda name, done, total: seen.append([name, done, total]),
                      hf_cache=cache)
        print(json.dumps({"id": model_id, "path": str(result.path), "files": result.files,
                          "bytes": result.bytes, "progress": seen}))
    except ProtocolError as exc:
        print(json.dumps({"id": model_id, "error": exc.code, "message": exc.message}))
"""


def _pull(endpoint: str, cache: Path, *model_ids: str) -> dict[str, dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=endpoint, HF_HUB_DISABLE_TELEMETRY="1", HF_TOKEN="")
    done = subprocess.run([sys.executable, "-c", PULL_SCRIPT, str(cache), *model_ids], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {r["id"]: r for r in results}


def test_pull_fetches_only_what_a_pipeline_loads_and_it_then_loads_offline(home, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(home / "models" / "tiny", repo)
    # what a real repo also carries and Atelier must leave on the hub
    (repo / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickle weights")
    (repo / "safety_checker").mkdir()
    (repo / "safety_checker" / "config.json").write_text("{}")
    (repo / "safety_checker" / "model.safetensors").write_bytes(b"big")
    (repo / "v1-5-pruned.safetensors").write_bytes(b"single-file copy")
    cache = tmp_path / "hub-cache"
    with FakeHub("atelier-test/tiny-sd", repo) as fake:
        result = _pull(fake.url, cache, "atelier-test/tiny-sd")["atelier-test/tiny-sd"]
        downloaded = fake.downloaded()
    assert "error" not in result, result
    assert "unet/diffusion_pytorch_model.safetensors" in downloaded
    assert "model_index.json" in downloaded and "tokenizer/vocab.json" in downloaded
    assert not {"unet/diffusion_pytorch_model.bin", "safety_checker/model.safetensors",
                "safety_checker/config.json", "v1-5-pruned.safetensors"} & downloaded
    assert sorted(result["files"]) == sorted(downloaded)
    assert result["path"].endswith(f"snapshots/{COMMIT}")
    assert result["progress"][-1][1] == result["progress"][-1][2] == result["bytes"] > 0
    # offline, in this process: the cache entry loads by id and lists
    store = ModelStore("cpu", torch.float32, home, [], hf_cache=cache)
    model = store.load("atelier-test/tiny-sd")
    assert model.source.kind == "hf_cache" and model.family == "sd15"
    reference = ModelStore("cpu", torch.float32, home, [], hf_cache=cache).load("tiny")
    assert torch.equal(model.pipe.unet.conv_in.weight, reference.pipe.unet.conv_in.weight)
    assert [m.name for m in hub.list_local(cache).models] == ["atelier-test/tiny-sd"]


def test_pull_of_the_clip_repo_fetches_only_the_tokenizer(home, tmp_path):
    repo = tmp_path / "clip"
    shutil.copytree(home / "models" / "tiny" / "tokenizer", repo)
    (repo / "config.json").write_text('{"model_type": "clip"}')
    (repo / "model.safetensors").write_bytes(b"weights the tokenizer does not need")
    (repo / "pytorch_model.bin").write_bytes(b"pickle")
    cache = tmp_path / "hub-cache"
    with FakeHub("openai/clip-vit-large-patch14", repo) as fake:
        result = _pull(fake.url, cache, "openai/clip-vit-large-patch14")
        downloaded = fake.downloaded()
    assert "error" not in result["openai/clip-vit-large-patch14"]
    assert downloaded == {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"}
    found = find_clip_tokenizer(home, cache)
    assert found is not None and (found / "vocab.json").is_file()
    assert hub.list_local(cache).models == []     # a tokenizer is not a model to list


def test_pull_of_the_t5_repo_fetches_only_its_tokenizer(home, tmp_path):
    """`atelier models pull google/t5-v1_1-xxl`, as the missing-tokenizer error advises,
    fetches the tokenizer files, not the 44 GB of weights; the loader then finds them."""
    from backend.models.dit_files import find_t5_tokenizer
    from backend.models.sources import ensure_tiny

    repo = tmp_path / "t5"
    shutil.copytree(ensure_tiny("tiny-flux", home / "models") / "tokenizer_2", repo)
    (repo / "config.json").write_text('{"model_type": "t5"}')
    (repo / "pytorch_model.bin").write_bytes(b"pickle")
    (repo / "model.safetensors").write_bytes(b"weights the tokenizer does not need")
    cache = tmp_path / "hub-cache"
    with FakeHub("google/t5-v1_1-xxl", repo) as fake:
        result = _pull(fake.url, cache, "google/t5-v1_1-xxl")
        downloaded = fake.downloaded()
    assert "error" not in result["google/t5-v1_1-xxl"]
    assert downloaded == {"tokenizer.json", "tokenizer_config.json"}    # what the repo has of them
    found = find_t5_tokenizer(tmp_path / "home", cache)
    assert found is not None and (found / "tokenizer.json").is_file()


def test_select_files_prefers_variants_and_refuses_pickle_only_components():
    listing = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
               "unet/diffusion_pytorch_model.fp16.safetensors", "vae/config.json",
               "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.fp16.safetensors",
               "text_encoder/flax_model.msgpack", "scheduler/scheduler_config.json"]
    plain = hub.select_files("a/b", listing)
    assert "unet/diffusion_pytorch_model.safetensors" in plain
    assert "unet/diffusion_pytorch_model.fp16.safetensors" not in plain
    assert "text_encoder/model.fp16.safetensors" in plain   # the only safetensors it has
    half = hub.select_files("a/b", listing, variant="fp16")
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in half
    assert "unet/diffusion_pytorch_model.safetensors" not in half
    assert "vae/diffusion_pytorch_model.safetensors" in half    # no fp16 file: plain weights
    assert not any(name.endswith(".msgpack") for name in plain + half)
    with pytest.raises(ProtocolError) as err:
        hub.select_files("a/b", ["model_index.json", "unet/config.json",
                                 "unet/diffusion_pytorch_model.bin"])
    assert err.value.code == ErrorCode.MODEL_NOT_FOUND and "unet has no .safetensors" in err.value.message


def test_cli_pull_shows_progress_and_the_daemon_then_serves_the_model(home, tmp_path):
    """`atelier models pull` end to end, then `atelier models list` finds it offline."""
    cache = tmp_path / "hub-cache"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HUB_CACHE=str(cache), HF_HUB_DISABLE_TELEMETRY="1", HF_TOKEN="")
    with FakeHub("atelier-test/tiny-sd", home / "models" / "tiny") as fake:
        env["HF_ENDPOINT"] = fake.url
        pulled = subprocess.run([sys.executable, "-m", "backend", "models", "pull",
                                 "atelier-test/tiny-sd"], cwd=REPO, env=env, capture_output=True,
                                text=True, timeout=300)
    assert pulled.returncode == 0, pulled.stderr
    assert "MiB" in pulled.stderr and "#" in pulled.stderr          # the progress bar
    assert f"snapshots/{COMMIT}" in pulled.stdout
    env.update(HF_HUB_OFFLINE="1")
    env.pop("HF_ENDPOINT")
    listed = subprocess.run([sys.executable, "-m", "backend", "models", "list", "--home",
                             str(home)], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "atelier-test/tiny-sd" in listed.stdout


def test_cli_pull_without_the_hub_fails_clearly(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HUB_CACHE=str(tmp_path), HF_ENDPOINT="http://127.0.0.1:9", HF_TOKEN="")
    pulled = subprocess.run([sys.executable, "-m", "backend", "models", "pull", "some/model"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert pulled.returncode == 2
    assert "some/model" in pulled.stderr
