"""``atelier cluster serve`` as a user runs it: the console command in a process of its own,
starting its own Ray (own temp dir, so apart from the session's ``cluster`` fixture), one
job through the protocol client, then SIGTERM: a prompt, clean exit that leaves none of its
Ray processes behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from benchmarks.daemon_process import DaemonProcess
from benchmarks.local_cluster import free_port
from protocol.client import AtelierClient
from protocol.events import JobDone
from protocol.messages import GenerateRequest

ATELIER = Path(sys.executable).with_name("atelier")      # the console script pip installed
STARTUP_S = 75.0
EXIT_S = 20.0


class ClusterCommand(DaemonProcess):
    """``atelier cluster serve`` on ``port`` with Ray's files under ``ray_tmp``: one worker
    and one gateway on fractions of a CPU. Every process it starts inherits ``RAY_TMPDIR``,
    which is how ``own_processes`` tells them from anyone else's."""

    def __init__(self, home: Path, ray_tmp: Path, port: int):
        super().__init__(home, env={"RAY_TMPDIR": str(ray_tmp)}, new_session=True)
        self.env.pop("RAY_ADDRESS", None)      # would make the command join that cluster
        self.marker = f"RAY_TMPDIR={ray_tmp}".encode()
        self.args = [str(ATELIER), "cluster", "serve", "--model", "tiny", "--home", str(home),
                     "--device", "cpu", "--port", str(port), "--min-workers", "1",
                     "--gateways", "1", "--worker-gpus", "0", "--worker-cpus", "0.25",
                     "--gateway-cpus", "0.1", "--num-cpus", "1"]

    def own_processes(self) -> list[int]:
        """Live processes (zombies aside) whose environment carries this command's marker."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:          # gone meanwhile, or not ours to read
                continue
            if state != "Z" and self.marker in environ.split(b"\0"):
                found.append(int(entry.name))
        return found

    def kill_leftovers(self) -> None:
        for pid in self.own_processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def tiny_home(atelier_home: Path) -> Path:
    """The session's Atelier home (the ``cluster`` fixture's too) with the tiny model in it."""
    from backend.models.sources import ensure_tiny

    ensure_tiny("tiny", atelier_home / "models")
    return atelier_home


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """A short path: Ray's unix sockets live under it, and their names have a length limit."""
    path = Path(tempfile.mkdtemp(prefix="atl-ray-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# "command": what `kill PID`, docker stop or Kubernetes send. "group": SIGTERM to the command
# and the Ray processes it started at once (systemd's default, `kill -- -PGID`), where a
# graceful Serve shutdown used to wait half a minute for a controller beyond reach.
@pytest.mark.parametrize("target", ["command", "group"])
def test_cluster_serve_runs_a_job_and_exits_cleanly_on_sigterm(tiny_home: Path, ray_tmp: Path,
                                                               target: str):
    assert ATELIER.exists(), f"no console script at {ATELIER}: pip install -e '.[cluster]'"
    command = ClusterCommand(tiny_home, ray_tmp, free_port())
    try:
        command.start(timeout=STARTUP_S)
        assert command.url == f"ws://127.0.0.1:{command.port}/"
        running = command.own_processes()      # gcs, raylet, replicas...: the check sees them
        assert len(running) >= 4, running

        with AtelierClient(command.url, reconnect=False) as client:
            client.wait_connected(timeout=15)
            assert client.welcome.model == "tiny" and client.welcome.device == "cpu"
            done = client.run_job(GenerateRequest(prompt="a brick wall", width=64, height=64,
                                                  steps=3, seed=5), timeout=60)
        assert isinstance(done, JobDone)
        assert [(i.width, i.height, i.seed) for i in done.result.images] == [(64, 64, 5)]
        assert len(done.images[0].data) == 64 * 64 * 4

        assert command.proc is not None
        sent = time.monotonic()
        if target == "group":
            os.killpg(command.proc.pid, signal.SIGTERM)
        else:
            command.proc.send_signal(signal.SIGTERM)
        try:
            code = command.proc.wait(timeout=EXIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {EXIT_S:g} s after SIGTERM:\n" + "".join(command.log))
        exit_s = time.monotonic() - sent
        assert code == 0, "".join(command.log)
        deadline = time.monotonic() + 10       # its Ray processes go with it, at once or soon
        while command.own_processes() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert command.own_processes() == [], "Ray processes left behind"
        print(f"cluster serve: SIGTERM to the {target}, exit in {exit_s:.1f} s")
    finally:
        command.stop()
        command.kill_leftovers()
