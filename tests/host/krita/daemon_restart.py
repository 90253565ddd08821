"""The daemon dies under a running job, inside real Krita (see tests/test_krita_host.py).

    kritarunner -s daemon_restart RESULTS.json PLUGIN.zip DAEMON_URL SIGNALS_DIR

The test outside owns the daemons. To have one killed (SIGKILL) or killed and another
started on the same port with another home, a scenario writes ``N-kill.request`` or
``N-restart.request`` into SIGNALS_DIR and waits for the test to rename it to
``N-....done``. Every scenario writes what it saw into RESULTS.json.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any, Callable
from urllib.parse import urlparse

from PyQt5.QtCore import QCoreApplication

from atelier_scenarios import (ORIGINALS, WAIT_S, Run, clear_selection, install, layer_stack,
                               make_document, pump_until)

PREVIEW = "[Atelier preview]"


class Signals:
    def __init__(self, folder: str):
        self.folder = folder
        self.count = 0

    def ask(self, what: str, controller: Any, pump: bool) -> None:
        """Ask the test to ``kill`` or ``restart`` the daemon; wait until it has. With
        ``pump`` the docker's events are handled meanwhile, as its timer would."""
        self.count += 1
        name = os.path.join(self.folder, f"{self.count}-{what}")
        with open(name + ".request", "w"):
            pass
        deadline = time.monotonic() + WAIT_S
        while not os.path.exists(name + ".done"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the test did not {what} the daemon")
            if pump:
                QCoreApplication.processEvents()
                controller.pump()
            time.sleep(0.02)


def pump_for(controller: Any, seconds: float, errors: list[str]) -> None:
    """Pump like the docker's timer for ``seconds``, keeping what it raised."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        QCoreApplication.processEvents()
        try:
            controller.pump()
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        time.sleep(0.01)


def __main__(args: list[str]) -> None:
    results_path, zip_path, daemon_url, signals_dir = args[:4]
    run = Run(results_path)
    run.scenario("setup", lambda: {"imported": install(zip_path)})
    if not run.results["setup"]["ok"]:
        return
    from atelier_krita.controller import ConnectionSettings, Controller
    from atelier_krita.docker import AtelierPanel
    from atelier_krita.geometry import ResolutionRange
    from atelier_krita.host import KritaDocument

    doc = make_document()
    url = urlparse(daemon_url)
    controller = Controller(lambda: KritaDocument(doc),
                            connection=ConnectionSettings(url.hostname, url.port),
                            resolution=ResolutionRange(32, 96))
    panel = AtelierPanel(controller)
    panel.timer.stop()
    try:
        scenarios(run, controller, panel, doc, Signals(signals_dir))
    finally:
        controller.close()
        panel.timer.stop()
        del panel
        gc.collect()


def scenarios(run: Run, controller: Any, panel: Any, doc: Any, signals: Signals) -> None:
    from atelier_krita.jobs import JobSettings, Mode

    slow = JobSettings(prompt="interrupted", steps=150, seed=8, previews=True)

    def docker_state() -> dict[str, Any]:
        panel.refresh()
        return {"busy": controller.busy, "message": controller.message,
                "modes_enabled": panel.generate_button.isEnabled(),
                "cancel_enabled": panel.cancel_button.isEnabled(),
                "history": controller.history[0].outcome if len(controller.history) else None}

    def running(before: list[dict[str, Any]]) -> Callable[[], bool]:
        """True once the job has shown a step preview in its own layer."""
        known = {entry["id"] for entry in before}
        return lambda: controller.progress[0] >= 2 and any(
            node.uniqueId().toString() not in known for node in doc.rootNode().childNodes())

    def restart() -> dict[str, Any]:
        controller.connect()
        pump_until(controller, lambda: controller.connected, "the connection")
        clear_selection(doc)
        before = layer_stack(doc)
        out: dict[str, Any] = {"started": controller.start(Mode.GENERATE, slow)}
        pump_until(controller, running(before), "the first steps")
        out["during"] = [entry["name"] for entry in layer_stack(doc)]
        signals.ask("restart", controller, pump=True)
        pump_until(controller, lambda: not controller.busy, "the end of the lost job")
        out.update(docker_state())
        out["canvas_untouched"] = layer_stack(doc) == before
        out["connected"] = controller.connected
        return out

    run.scenario("restart", restart)

    def cancel_before_accepted() -> dict[str, Any]:
        """Cancel pressed while the daemon is gone and never answered the submit."""
        pump_until(controller, lambda: controller.connected, "the connection")
        before = layer_stack(doc)
        out: dict[str, Any] = {"started": controller.start(Mode.GENERATE, slow)}
        signals.ask("kill", controller, pump=False)
        panel.cancel_button.click()
        out["busy_after_click"] = controller.busy
        errors: list[str] = []
        pump_for(controller, 2.0, errors)
        out.update(docker_state())
        out["errors"] = errors
        out["canvas_untouched"] = layer_stack(doc) == before
        return out

    run.scenario("cancel_before_accepted", cancel_before_accepted)

    def cancel_unreachable() -> dict[str, Any]:
        """Cancel pressed while a running job's daemon is gone."""
        signals.ask("restart", controller, pump=True)
        pump_until(controller, lambda: controller.connected, "the new daemon")
        before = layer_stack(doc)
        out: dict[str, Any] = {"started": controller.start(Mode.GENERATE, slow)}
        pump_until(controller, running(before), "the first steps")
        signals.ask("kill", controller, pump=True)
        pump_until(controller, lambda: not controller.connected, "noticing the daemon is gone")
        panel.cancel_button.click()
        out["busy_after_click"] = controller.busy
        errors: list[str] = []
        pump_for(controller, 1.0, errors)
        out.update(docker_state())
        out["errors"] = errors
        out["canvas_untouched"] = layer_stack(doc) == before
        out["originals"] = sorted(e["name"] for e in layer_stack(doc) if e["name"] in ORIGINALS)
        return out

    run.scenario("cancel_unreachable", cancel_unreachable)
