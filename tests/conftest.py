"""Shared fixtures: a real daemon on loopback running the tiny model, in a subprocess."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from benchmarks.daemon_process import DaemonProcess

REPO = Path(__file__).resolve().parents[1]
# No test may reach the network: the hub client stays offline unless a test says otherwise.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tiny models gain nothing from a second thread, and daemons, Blender and Krita run beside
# pytest: one torch thread each (set before anything imports torch; subprocesses inherit it).
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def atelier_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Atelier home per test session, so the tiny model is built once."""
    return tmp_path_factory.mktemp("atelier-home")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Atelier home of the test module's own, with the tiny model built in it."""
    from backend.models.sources import ensure_tiny

    home = tmp_path_factory.mktemp("atelier-home")
    ensure_tiny("tiny", home / "models")
    return home


@pytest.fixture(scope="session")
def daemon(atelier_home: Path) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(atelier_home).start()
    yield proc
    proc.stop()


@pytest.fixture
def start_daemon(atelier_home: Path) -> Iterator:
    """Start daemons of the test's own (extra ``serve`` options allowed); stopped afterwards."""
    started: list[DaemonProcess] = []

    def start(*extra: str) -> DaemonProcess:
        proc = DaemonProcess(atelier_home, *extra).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="module")
def lora_models_dir(atelier_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's models folder holding one tiny SD1.5 LoRA, ``Lora/tiny_style.safetensors``
    (the daemon fixture's models folder has none): serve it with ``--models-dir``."""
    from backend.models.sources import ensure_tiny
    from backend.models.tiny_extras import build_tiny_lora

    folder = tmp_path_factory.mktemp("user-models")
    build_tiny_lora(folder / "Lora" / "tiny_style.safetensors",
                    ensure_tiny("tiny", atelier_home / "models"))
    return folder


@pytest.fixture
def fresh_daemon(start_daemon) -> DaemonProcess:
    """A daemon of the test's own, for tests that stop it or need an empty queue."""
    return start_daemon()


@pytest.fixture(scope="session")
def reference_models_dir(atelier_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's ComfyUI models folder for reference images: tiny IP-Adapters for the tiny
    SD1.5 (plain and plus) and SDXL models in ``ipadapter/`` and the tiny CLIP image encoder as one file in
    ``clip_vision/``: serve it with ``--models-dir``."""
    from backend.models.sources import ensure_tiny
    from backend.models.tiny_references import build_tiny_image_encoder, build_tiny_ip_adapter

    folder = tmp_path_factory.mktemp("reference-models")
    for base, name in (("tiny", "tiny-ip-adapter_sd15"), ("tiny-sdxl", "tiny-ip-adapter_sdxl")):
        build_tiny_ip_adapter(folder / "ipadapter" / f"{name}.safetensors",
                              ensure_tiny(base, atelier_home / "models"))
    build_tiny_ip_adapter(folder / "ipadapter" / "tiny-ip-adapter_sd15_plus.safetensors",
                          ensure_tiny("tiny", atelier_home / "models"), plus=True)
    build_tiny_image_encoder(folder / "clip_vision" / "tiny-clip-vision.safetensors",
                             single_file=True)
    return folder


@pytest.fixture(scope="session")
def cluster(atelier_home: Path, tmp_path_factory: pytest.TempPathFactory):
    """One Atelier cluster for the whole session (Ray in this process, 2 worker and 2
    gateway replicas on fractions of this machine's CPUs), serving ``tiny`` and ``tiny-b``."""
    from benchmarks.local_cluster import LocalCluster, second_model_dir

    models = second_model_dir(atelier_home, tmp_path_factory.mktemp("cluster-models"))
    started = LocalCluster(atelier_home, models).start()
    yield started
    started.stop()
