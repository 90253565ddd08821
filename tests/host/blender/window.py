"""Blender with a window (under xvfb-run): the add-on as an artist drives it.

Nothing here pumps the add-on: results must arrive through its own
``bpy.app.timers`` callback while Blender's event loop runs, and the
buttons' modal watchers must turn the daemon's answer into reports.

    xvfb-run -a blender --factory-startup --python window.py -- --zip Z --url U --scenario window

Blender's exit code does not follow a script that runs inside the event loop,
so this exits with ``os._exit``: 0 when every step passed, 1 otherwise.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from typing import Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bpy  # noqa: E402

import harness  # noqa: E402

STEP_TIMEOUT = 120.0


def _finish(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ui_context() -> dict:
    window = bpy.context.window_manager.windows[0]
    area = next(a for a in window.screen.areas if a.type == "VIEW_3D")
    region = next(r for r in area.regions if r.type == "WINDOW")
    return {"window": window, "area": area, "region": region}


def _click(operator) -> set:
    """Run an operator the way a button does (INVOKE_DEFAULT, with a window)."""
    with bpy.context.temp_override(**_ui_context()):
        return operator("INVOKE_DEFAULT")


def _reports() -> str:
    """Every report so far, as the Info editor lists them (copied through the clipboard)."""
    context = _ui_context()
    info = next(a for a in context["window"].screen.areas if a.type in {"INFO", "TIMELINE"}
                or a.ui_type == "TIMELINE")
    info.type = "INFO"
    region = next(r for r in info.regions if r.type == "WINDOW")
    with bpy.context.temp_override(window=context["window"], area=info, region=region):
        bpy.ops.info.select_all(action="SELECT")
        bpy.ops.info.report_copy()
    return bpy.context.window_manager.clipboard


def _wait(condition, what: str) -> Iterator[float]:
    deadline = time.monotonic() + STEP_TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        yield 0.1


def steps(module, url: str) -> Iterator[float]:
    session = harness.session(module)
    prefs = harness.preferences(module)
    scene = harness.empty_scene()
    harness.settings(scene, prompt="window test", steps=2, width=64, height=64,
                     random_seed=False, seed=11)

    # 1. No daemon: the button's report carries the reason and the command to start one.
    daemon_port, prefs.port = prefs.port, _closed_port()
    assert _click(bpy.ops.atelier.generate) == {"RUNNING_MODAL"}
    job = session.jobs[-1]
    yield from _wait(lambda: job.state.finished, "the failing job")
    yield from _wait(lambda: "atelier serve" in _reports(), "the error report")
    reports = _reports()
    error_lines = [line for line in reports.splitlines() if "atelier serve" in line]
    assert error_lines and str(prefs.port) in error_lines[-1], reports
    assert job.state.name == "FAILED"

    # 2. The daemon: the image arrives through the add-on's own timer, is shown in the
    # Image Editor, and is reported on the way out.
    window = bpy.context.window_manager.windows[0]
    editor = next(a for a in window.screen.areas if a.type == "PROPERTIES")
    editor.type = "IMAGE_EDITOR"
    prefs.port = daemon_port
    assert _click(bpy.ops.atelier.generate) == {"RUNNING_MODAL"}
    job = session.jobs[-1]
    yield from _wait(lambda: job.state.finished, "the generation")
    assert job.state.name == "DONE", job.progress_text
    assert bpy.data.images["window test 11"].size[:] == (64, 64)
    assert editor.spaces.active.image == bpy.data.images["window test 11"]
    yield from _wait(lambda: "Generate: done" in _reports(), "the done report")
    print("SCENARIO window PASSED on Blender", bpy.app.version_string)


def main() -> None:
    args = harness.parse_args()
    module = harness.install_and_enable(args.zip, args.url)
    running = steps(module, args.url)

    def tick() -> float | None:
        try:
            return next(running)
        except StopIteration:
            _finish(0)
        except BaseException:  # noqa: BLE001  the test's verdict: print it and fail
            traceback.print_exc()
            _finish(1)
        return None

    bpy.app.timers.register(tick, first_interval=0.5)


try:
    main()
except BaseException:  # noqa: BLE001  without this Blender would keep its window open
    traceback.print_exc()
    _finish(1)
