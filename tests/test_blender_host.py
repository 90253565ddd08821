"""The Blender add-on inside real Blender, against a real daemon on the tiny model.

Each case builds the add-on zip once, then starts Blender with a scenario from
tests/host/blender/scenarios.py: install the zip through
``preferences.addon_install`` into a throwaway BLENDER_USER_SCRIPTS, enable it,
run operators, assert on datablocks. Two Blenders:

- ``blender-3.4``: Debian's ``blender`` binary (``--background --factory-startup``);
- ``bpy-4.2``: the ``bpy`` wheel in its own Python 3.11 venv; found through
  ``ATELIER_BPY_PYTHON``, else ``.venv-bpy/bin/python`` in the repository (what
  scripts/setup-bpy.sh makes), else ``/work/venv-bpy/bin/python``.

A missing Blender skips these tests on a workstation, and fails them under CI
(environment variable ``CI`` set), where both must be installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import NoReturn, Optional

import pytest

from blender_addon import build

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = REPO / "tests" / "host" / "blender" / "scenarios.py"
WINDOW = REPO / "tests" / "host" / "blender" / "window.py"
RUN_TIMEOUT = 300
NEEDS_DAEMON = ("generate", "render", "project", "depth_model", "cancel", "extension")


def _bpy_python() -> Optional[str]:
    for candidate in (os.environ.get("ATELIER_BPY_PYTHON"), REPO / ".venv-bpy" / "bin" / "python",
                      Path("/work/venv-bpy/bin/python")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return None


def _host_command(host: str) -> list[str]:
    """The command that runs the scenario script in ``host``; fails or skips if it is missing."""
    if host == "blender-3.4":
        blender = shutil.which("blender")
        if blender is not None:
            return [blender, "--background", "--factory-startup", "--python-exit-code", "1",
                    "--python", str(SCENARIOS)]
        missing = "Debian's blender is not installed (apt-get install blender python3-numpy)"
    else:
        python = _bpy_python()
        if python is not None:
            return [python, str(SCENARIOS)]
        missing = ("no Python with the bpy 4.2 wheel (run scripts/setup-bpy.sh, or set "
                   "ATELIER_BPY_PYTHON)")
    _missing(missing)


def _missing(what: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the Blender host tests: {what}")
    pytest.skip(what)


@pytest.fixture(scope="session")
def addon_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build.build(tmp_path_factory.mktemp("addon-zip"))


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"ws://127.0.0.1:{port}/"   # nothing listens once the socket is closed


CASES = [(host, scenario) for host in ("blender-3.4", "bpy-4.2")
         for scenario in ("generate", "render", "project", "depth_model", "cancel", "no_daemon",
                          "ui")
         ] + [("bpy-4.2", "extension")]   # extensions exist from Blender 4.2 on


@pytest.mark.parametrize("host, scenario", CASES)
def test_blender_scenario(host: str, scenario: str, addon_zip: Path, tmp_path: Path,
                          request: pytest.FixtureRequest) -> None:
    command = _host_command(host)
    url = (request.getfixturevalue("daemon").url if scenario in NEEDS_DAEMON
           else _closed_port_url())
    proc = _run([*command, "--", "--zip", str(addon_zip), "--url", url, "--scenario", scenario,
                 "--install", "extension" if scenario == "extension" else "legacy"], tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{host} {scenario} failed (exit {proc.returncode}):\n{output}"
    assert f"SCENARIO {scenario} PASSED" in output, output


def test_blender_window_reports_and_timers(addon_zip: Path, tmp_path: Path, daemon) -> None:
    """Blender 3.4 with a window under Xvfb: buttons report the daemon's answers and results
    arrive through the add-on's own timer (no test pumping)."""
    _run_window("window", addon_zip, tmp_path, daemon.url)


def _run_window(scenario: str, addon_zip: Path, tmp_path: Path, url: str) -> None:
    """Run a scenario of tests/host/blender/window.py in Blender 3.4 with a window."""
    blender, xvfb = shutil.which("blender"), shutil.which("xvfb-run")
    if blender is None or xvfb is None:
        _missing("blender and xvfb-run are needed (apt-get install blender xvfb)")
    proc = _run([xvfb, "-a", blender, "--factory-startup", "--python", str(WINDOW), "--",
                 "--zip", str(addon_zip), "--url", url, "--scenario", scenario], tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{scenario} scenario failed (exit {proc.returncode}):\n{output}"
    assert f"SCENARIO {scenario} PASSED" in output, output


def test_blender_window_projects_from_the_view(addon_zip: Path, tmp_path: Path, daemon) -> None:
    """Blender 3.4 with a window under Xvfb: Project Texture and Render to Image from the
    3D Viewport's view (set to a known matrix); the projection UVs are where the viewport
    draws the vertices, and the temporary camera leaves nothing behind."""
    _run_window("view", addon_zip, tmp_path, daemon.url)


@pytest.mark.parametrize("host", ["blender-3.4", "bpy-4.2"])
def test_blender_daemon_stopped_mid_job(host: str, addon_zip: Path, tmp_path: Path,
                                        fresh_daemon) -> None:
    """The daemon is stopped while Blender waits for a job: a message, no crash, and
    Cancel cleans up (see scenario_daemon_stops)."""
    command = _host_command(host)
    signal = tmp_path / "stop-daemon"
    proc = subprocess.Popen([*command, "--", "--zip", str(addon_zip), "--url", fresh_daemon.url,
                             "--scenario", "daemon_stops"], cwd=tmp_path,
                            env=_env(tmp_path, ATELIER_SIGNAL_FILE=str(signal)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while not signal.exists() and proc.poll() is None:
            time.sleep(0.05)   # waiting for the scenario's cue, not timing anything
        fresh_daemon.stop()
        output, _ = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert signal.exists(), f"the scenario ended before asking to stop the daemon:\n{output}"
    assert proc.returncode == 0, f"{host} daemon_stops failed (exit {proc.returncode}):\n{output}"
    assert "SCENARIO daemon_stops PASSED" in output, output


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    # Everything Blender writes for a user stays in this test's folder.
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp_path / "user-resources"),
           "BLENDER_USER_SCRIPTS": str(tmp_path / "user-scripts"),
           "BLENDER_USER_CONFIG": str(tmp_path / "user-config"),
           "BLENDER_USER_EXTENSIONS": str(tmp_path / "user-extensions"), **extra}
    env.pop("PYTHONPATH", None)   # the add-on must work from its zip alone
    return env


def _run(command: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=RUN_TIMEOUT)
