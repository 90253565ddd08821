"""Texture from Views (issue 13) in real Blender against a real daemon on the tiny model:
a texture from 6 views of a UV sphere (4 orbit views, top, bottom), and for how long at a
time the add-on held Blender's main thread.

    python -m benchmarks.texture_views [--hosts blender-3.4 bpy-4.2 bpy-5.0] [--no-window]
        [--view-size 256] [--texture 2048] [--pass-size 1] [--home DIR]

Each Blender runs tests/host/blender/multiview_scenarios.py's ``views_measure`` in
background mode (press, per-view daemon and Blender seconds, longest step and pump, the
first view's pass render); then Blender 3.4 with a window under Xvfb
(tests/host/blender/window.py ``views``) runs the same through the add-on's own timer,
with the gaps between the window's redraws. The lines the scenarios print (MEASURE ...,
VIEWS WINDOW ...) are the report. Figures, not a test: nothing here fails on a number.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from benchmarks.blender_hosts import (HOST_SCRIPTS, HOSTS, MissingHost, host_command,
                                      run_in_host, window_command)
from benchmarks.daemon_process import DaemonProcess
from blender_addon import build


def _figures(name: str, command: list[str], folder: Path, prefix: str, passed: str,
             sizes: dict[str, str]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    proc = run_in_host(command, folder, **sizes)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0 or passed not in output:
        raise RuntimeError(f"{name}: the scenario failed (exit {proc.returncode}):\n"
                           f"{output[-4000:]}")
    return [line for line in output.splitlines() if line.startswith(prefix)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", nargs="+", choices=HOSTS, default=list(HOSTS))
    parser.add_argument("--no-window", action="store_true",
                        help="skip the run in Blender 3.4's window under Xvfb")
    parser.add_argument("--view-size", type=int, default=256, help="each view's side, px")
    parser.add_argument("--texture", type=int, default=2048, help="the texture's side, px")
    parser.add_argument("--pass-size", choices=("1", "2", "4"), default="1",
                        help="the depth and normal passes at 1/N of the view's side")
    parser.add_argument("--home", type=Path, default=None,
                        help="the daemon's Atelier home (default: a new temporary folder)")
    args = parser.parse_args(argv)
    sizes = {"ATELIER_VIEWS_SIZE": str(args.view_size),
             "ATELIER_VIEWS_TEXTURE": str(args.texture),
             "ATELIER_VIEWS_PASSES": args.pass_size}
    with tempfile.TemporaryDirectory(prefix="atelier-views-") as scratch:
        work = Path(scratch)
        addon_zip = build.build(work / "zip")
        daemon = DaemonProcess(args.home or work / "home").start()
        try:
            for host in args.hosts:
                try:
                    command = host_command(host, HOST_SCRIPTS / "scenarios.py")
                except MissingHost as missing:
                    print(f"{host}: skipped, {missing}")
                    continue
                lines = _figures(host, [*command, "--", "--zip", str(addon_zip), "--url",
                                        daemon.url, "--scenario", "views_measure",
                                        "--install", "legacy"],
                                 work / host, "MEASURE", "SCENARIO views_measure PASSED", sizes)
                print(f"== {host}, background mode", *lines, sep="\n", flush=True)
            if not args.no_window:
                try:
                    command = window_command(HOST_SCRIPTS / "window.py")
                except MissingHost as missing:
                    print(f"window: skipped, {missing}")
                    return 0
                lines = _figures("window", [*command, "--", "--zip", str(addon_zip), "--url",
                                            daemon.url, "--scenario", "views"],
                                 work / "window", "VIEWS WINDOW", "SCENARIO views PASSED", sizes)
                print("== blender-3.4, a window under Xvfb", *lines, sep="\n", flush=True)
        finally:
            daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
