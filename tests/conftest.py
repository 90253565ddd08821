"""Shared fixtures: a real daemon on loopback running the tiny model, in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
# No test may reach the network: the hub client stays offline unless a test says otherwise.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tiny models gain nothing from a second thread, and daemons, Blender and Krita run beside
# pytest: one torch thread each (set before anything imports torch; subprocesses inherit it).
os.environ.setdefault("OMP_NUM_THREADS", "1")


class DaemonProcess:
    """``python -m backend serve`` on a free loopback port; ``url`` once it is ready."""

    READY = re.compile(r"ready on (ws://\S+)")

    def __init__(self, home: Path, *extra: str, env: dict[str, str] | None = None):
        self.home = home
        self.args = [sys.executable, "-m", "backend", "serve", "--model", "tiny", "--port", "0",
                     "--home", str(home), *extra]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.url: str | None = None
        self.log: list[str] = []

    def start(self, timeout: float = 120.0) -> "DaemonProcess":
        self.proc = subprocess.Popen(self.args, cwd=REPO, env=self.env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        found = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.log.append(line)
                match = self.READY.search(line)
                if match and not found.is_set():
                    self.url = match.group(1)
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("daemon did not start:\n" + "".join(self.log))
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def port(self) -> int:
        assert self.url is not None
        return int(self.url.rstrip("/").rsplit(":", 1)[1])


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


@pytest.fixture
def fresh_daemon(start_daemon) -> DaemonProcess:
    """A daemon of the test's own, for tests that stop it or need an empty queue."""
    return start_daemon()
