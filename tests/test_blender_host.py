"""The Blender add-on inside real Blender, against a real daemon on the tiny model.

Each case builds the add-on zip once, then starts Blender with a scenario from
tests/host/blender/scenarios.py: install the zip through
``preferences.addon_install`` into a throwaway BLENDER_USER_SCRIPTS, enable it,
run operators, assert on datablocks, in each Blender of benchmarks/blender_hosts.py
(Debian's 3.4, the bpy 4.2 and 5.0 wheels).

A missing Blender skips these tests on a workstation, and fails them under CI
(environment variable ``CI`` set), where all three must be installed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import NoReturn

import pytest

from benchmarks.blender_hosts import (BPY_HOSTS, HOST_SCRIPTS, HOSTS, MissingHost, host_command,
                                      host_env, run_in_host, window_command)
from blender_addon import build

SCENARIOS = HOST_SCRIPTS / "scenarios.py"
WINDOW = HOST_SCRIPTS / "window.py"
NEEDS_DAEMON = ("generate", "render", "project", "depth_model", "cancel", "extension", "sizes",
                "keep", "live", "upscale", "material", "asset_cancel")


def _host_command(host: str) -> list[str]:
    """The command that runs the scenario script in ``host``; fails or skips if it is missing."""
    try:
        return host_command(host, SCENARIOS)
    except MissingHost as missing:
        _missing(str(missing))


def _window_command() -> list[str]:
    try:
        return window_command(WINDOW)
    except MissingHost as missing:
        _missing(str(missing))


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


CASES = [(host, scenario) for host in HOSTS
         for scenario in ("generate", "render", "project", "depth_model", "cancel", "no_daemon",
                          "ui", "sizes", "keep", "live", "upscale", "material",
                          "asset_cancel")
         ] + [(host, "extension") for host in BPY_HOSTS]   # extensions exist from 4.2 on


@pytest.mark.parametrize("host, scenario", CASES)
def test_blender_scenario(host: str, scenario: str, addon_zip: Path, tmp_path: Path,
                          request: pytest.FixtureRequest) -> None:
    url = (request.getfixturevalue("daemon").url if scenario in NEEDS_DAEMON
           else _closed_port_url())
    _run_scenario(host, scenario, addon_zip, tmp_path, url,
                  install="extension" if scenario == "extension" else "legacy")


def _run_scenario(host: str, scenario: str, addon_zip: Path, tmp_path: Path, url: str,
                  install: str = "legacy") -> None:
    """Run tests/host/blender/scenarios.py's ``scenario`` in ``host`` against ``url``; it
    must exit 0 and say it passed."""
    proc = _run([*_host_command(host), "--", "--zip", str(addon_zip), "--url", url,
                 "--scenario", scenario, "--install", install], tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{host} {scenario} failed (exit {proc.returncode}):\n{output}"
    assert f"SCENARIO {scenario} PASSED" in output, output
    print("\n".join(line for line in output.splitlines()   # figures, shown with -s
                    if line.startswith(("TIMING", "COVERAGE", "SEAMS", "RERUN", "MEASURE"))))


@pytest.mark.parametrize("host", HOSTS)
def test_blender_pass_controls_and_reference(host: str, addon_zip: Path, tmp_path: Path,
                                             request: pytest.FixtureRequest) -> None:
    """Render to Image with the Depth, Normal and Line Art controls and a reference image:
    camera-space normals and Freestyle lines reach the daemon as it feeds them to the
    models, the depth control as before, the reference's pixels; Project Texture adds depth
    (tests/host/blender/control_scenarios.py, scenario_controls)."""
    _host_command(host)   # a missing host fails (CI) or skips before a daemon starts
    _run_scenario(host, "controls", addon_zip, tmp_path, request.getfixturevalue("daemon").url)


@pytest.mark.parametrize("host", HOSTS)
def test_blender_controls_survive_save_and_reopen(host: str, addon_zip: Path,
                                                  tmp_path: Path) -> None:
    """The Controls rows and the reference image come back with the .blend
    (scenario_controls_saved)."""
    _run_scenario(host, "controls_saved", addon_zip, tmp_path, _closed_port_url())


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("scenario", ["views", "views_cancel"])
def test_blender_texture_from_views(host: str, scenario: str, addon_zip: Path, tmp_path: Path,
                                    request: pytest.FixtureRequest) -> None:
    """Texture from Views (tests/host/blender/multiview_scenarios.py): a cube from 6 placed
    views is covered, a face no view sees stays empty, a face behind a wall gets no weight
    from that view, the front view's normal pass; Cancel leaves nothing behind."""
    _host_command(host)   # a missing host fails (CI) or skips before a daemon starts
    _run_scenario(host, scenario, addon_zip, tmp_path, request.getfixturevalue("daemon").url)
    if scenario == "views":
        _exact_passes_reach_the_daemon(tmp_path)


@pytest.mark.parametrize("host", HOSTS)
def test_blender_texture_from_views_settings_saved(host: str, addon_zip: Path,
                                                   tmp_path: Path) -> None:
    """Texture from Views' settings come back with the .blend (scenario_views_saved)."""
    _run_scenario(host, "views_saved", addon_zip, tmp_path, _closed_port_url())


def _exact_passes_reach_the_daemon(folder: Path) -> None:
    """The first view's passes as the add-on sent them (the scenario wrote the frames),
    decoded and planned as the daemon does: the front face, a plane facing the camera, is
    the normal (0, 0, 1) to 1e-3 in PROTOCOL.md 4.4's convention; its depth the distance."""
    import json

    import numpy as np

    from backend.pipelines.controls import job_controls
    from protocol.frames import PixelFormat, decode_frame
    from protocol.messages import ControlLayer, GenerateRequest
    expected = json.loads((folder / "sent_expected.json").read_text())
    normal = decode_frame((folder / "sent_normal.atf").read_bytes())
    depth = decode_frame((folder / "sent_depth.atf").read_bytes())
    assert (normal.format, depth.format) == (PixelFormat.FLOAT32X3, PixelFormat.FLOAT32)
    size = expected["size"]
    job = GenerateRequest(kind="txt2img", prompt="p", width=size, height=size, steps=2,
                          controls=[ControlLayer(kind="normal", image=normal.id)])
    image = job_controls(job, {normal.id: normal})[0].image   # (n + 1) / 2, floats
    middle = slice(size // 2 - 8, size // 2 + 8)
    arrived = image[middle, middle] * 2.0 - 1.0
    assert np.abs(arrived - (0.0, 0.0, 1.0)).max() < 1e-3, np.abs(arrived - (0, 0, 1)).max()
    z = np.frombuffer(depth.data, "<f4").reshape(size, size)[middle, middle]
    assert np.abs(z - expected["depth"]).max() < 1e-3, (z, expected["depth"])


def test_blender_window_reports_and_timers(addon_zip: Path, tmp_path: Path, daemon) -> None:
    """Blender 3.4 with a window under Xvfb: buttons report the daemon's answers and results
    arrive through the add-on's own timer (no test pumping)."""
    _run_window("window", addon_zip, tmp_path, daemon.url)


def _run_window(scenario: str, addon_zip: Path, tmp_path: Path, url: str) -> None:
    """Run a scenario of tests/host/blender/window.py in Blender 3.4 with a window."""
    proc = _run([*_window_command(), "--",
                 "--zip", str(addon_zip), "--url", url, "--scenario", scenario], tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{scenario} scenario failed (exit {proc.returncode}):\n{output}"
    assert f"SCENARIO {scenario} PASSED" in output, output


def test_blender_window_projects_from_the_view(addon_zip: Path, tmp_path: Path, daemon) -> None:
    """Blender 3.4 with a window under Xvfb: Project Texture and Render to Image from the
    3D Viewport's view (set to a known matrix); the projection UVs are where the viewport
    draws the vertices, and the temporary camera leaves nothing behind."""
    _run_window("view", addon_zip, tmp_path, daemon.url)


def test_blender_window_live_follows_the_view(addon_zip: Path, tmp_path: Path, daemon) -> None:
    """Blender 3.4 with a window under Xvfb: Live from the 3D Viewport's view on Blender's own
    timers and depsgraph: a turned view and an edit each send one job, the event loop's own
    redraws none, and the result shows in the open Image Editor."""
    _run_window("live", addon_zip, tmp_path, daemon.url)


def test_blender_window_redraws_only_what_shows_progress(addon_zip: Path, tmp_path: Path,
                                                         daemon) -> None:
    """Blender 3.4 with a window under Xvfb: a job's progress redraws the sidebar, not the
    3D Viewport's main region, and previews are written a few times a second at most."""
    _run_window("redraws", addon_zip, tmp_path, daemon.url)


@pytest.mark.parametrize("host", HOSTS)
def test_blender_loras_reach_the_daemon(host: str, addon_zip: Path, tmp_path: Path,
                                        start_daemon, lora_models_dir: Path) -> None:
    """A Generate with one LoRA row and a sampler preset reaches a daemon that has the LoRA,
    and its result carries both (scenario_loras)."""
    _host_command(host)   # a missing host fails (CI) or skips before a daemon starts
    daemon = start_daemon("--models-dir", str(lora_models_dir))
    _run_scenario(host, "loras", addon_zip, tmp_path, daemon.url)


@pytest.fixture(scope="module")
def upscaler_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's models folder with one upscaler, ``upscale_models/2x-tiny.safetensors``: a
    tiny random-weight Real-ESRGAN compact net where spandrel is installed, else a file the
    daemon lists but cannot run without spandrel."""
    import torch
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("upscaler-models")
    path = folder / "upscale_models" / "2x-tiny.safetensors"
    path.parent.mkdir()
    try:
        from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact
    except ImportError:
        save_file({"body.0.weight": torch.zeros(8, 3, 3, 3)}, str(path))
    else:
        net = SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return folder


@pytest.mark.parametrize("host", HOSTS)
def test_blender_upscaler_from_the_daemon(host: str, addon_zip: Path, tmp_path: Path,
                                          start_daemon, upscaler_models_dir: Path) -> None:
    """The Upscaler menu lists the daemon's upscaler after Lanczos; an Upscale with it runs,
    or, on a daemon without spandrel, fails saying so and leaves nothing
    (scenario_upscaler)."""
    _host_command(host)   # a missing host fails (CI) or skips before a daemon starts
    daemon = start_daemon("--models-dir", str(upscaler_models_dir))
    _run_scenario(host, "upscaler", addon_zip, tmp_path, daemon.url)


@pytest.mark.parametrize("host", HOSTS)
def test_blender_daemon_goes_away_mid_job(host: str, addon_zip: Path, tmp_path: Path,
                                          start_daemon) -> None:
    """The daemon is stopped, killed and restarted, and killed, while Blender waits for jobs
    (see scenario_daemon_goes_away): each job ends saying why, or Cancel ends it."""
    command = _host_command(host)
    daemon = start_daemon()
    port = str(daemon.port)
    cues = tmp_path / "cues"
    cues.mkdir()
    log = tmp_path / "blender.log"
    with log.open("w") as out:
        proc = subprocess.Popen([*command, "--", "--zip", str(addon_zip), "--url", daemon.url,
                                 "--scenario", "daemon_goes_away"], cwd=tmp_path,
                                env=host_env(tmp_path, ATELIER_CUE_DIR=str(cues)),
                                stdout=out, stderr=subprocess.STDOUT, text=True)
    done: list[str] = []
    try:
        while proc.poll() is None:
            for cue in sorted(p for p in cues.iterdir() if p.suffix != ".done"):
                if cue.name in done:
                    continue
                action = cue.read_text()
                if action == "stop":
                    daemon.stop()
                elif action == "kill":
                    daemon.proc.kill()   # SIGKILL: it can tell nobody
                    daemon.proc.wait()
                elif action == "start":   # Atelier's home: it spooled nothing of those jobs
                    daemon = start_daemon("--port", port)
                cue.with_name(cue.name + ".done").write_text("")
                done.append(cue.name)
            time.sleep(0.05)   # waiting for the scenario's cue, not timing anything
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    assert proc.returncode == 0, \
        f"{host} daemon_goes_away failed (exit {proc.returncode}):\n{output}"
    assert "SCENARIO daemon_goes_away PASSED" in output, output
    assert [name.split("-", 1)[1] for name in done] == ["stop", "start", "kill", "start",
                                                         "kill"], done


def _run(command: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return run_in_host(command, tmp_path)
