"""Scenarios run inside real Krita by ``kritarunner`` (see tests/test_krita_host.py).

    kritarunner -s atelier_scenarios RESULTS.json PLUGIN.zip DAEMON_URL DEAD_URL [ONLY]

ONLY (comma-separated names of ``docker_scenarios.ALL``) runs setup, connect and just
those, for a daemon of their own (one with a LoRA, say).

Installs the plugin zip with Krita's own importer (the code behind Tools > Scripts >
Import Python Plugin from File), builds documents with layers and selections, and
drives the plugin's docker panel and controller against a real daemon. Krita's exit
code is always 0, so every scenario writes what it saw (or its traceback) into the
results file and pytest judges it.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import importlib.util
import json
import os
import sys
import time
import traceback
from dataclasses import replace
from typing import Any, Callable
from urllib.parse import urlparse

from krita import Krita, Selection
from PyQt5.QtCore import QCoreApplication

WIDTH, HEIGHT = 203, 157          # odd sizes: the plugin scales to the model and back
WAIT_S = 120.0                    # generous; only guards against a hang
ORIGINALS = ("Background", "colour", "square", "depth", "depth_rows")


def importer_module() -> Any:
    """Krita's plugin importer module, loaded from the file (not as an extension)."""
    for base in sys.path:
        path = os.path.join(base, "plugin_importer", "plugin_importer.py")
        if os.path.isfile(path):
            spec = importlib.util.spec_from_file_location("krita_plugin_importer", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    raise RuntimeError("Krita's plugin_importer is not on sys.path")


def install(zip_path: str) -> str:
    resources = Krita.instance().getAppDataLocation()
    imported = importer_module().PluginImporter(zip_path, resources, lambda plugin: True).import_all()
    pykrita = os.path.join(resources, "pykrita")
    sys.path.insert(0, pykrita)
    return ",".join(p["name"] for p in imported)


def pump_until(controller: Any, done: Callable[[], bool], what: str,
               failed: Callable[[], bool] = lambda: False) -> None:
    deadline = time.monotonic() + WAIT_S
    while not done():
        QCoreApplication.processEvents()
        controller.pump()
        if failed():
            raise RuntimeError(f"{what} failed: {controller.connection_text}; "
                               f"{controller.message}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}; last message: {controller.message!r}")
        time.sleep(0.01)


def b64(data: bytes) -> str:
    return base64.b64encode(bytes(data)).decode()


def sha(data: bytes) -> str:
    return hashlib.sha256(bytes(data)).hexdigest()


def layer_stack(doc: Any) -> list[dict[str, Any]]:
    doc.waitForDone()
    out = []
    for node in doc.rootNode().childNodes():
        rect = node.bounds()
        out.append({"id": node.uniqueId().toString(), "name": node.name(), "type": node.type(),
                    "bounds": [rect.x(), rect.y(), rect.width(), rect.height()],
                    "sha": sha(node.pixelData(0, 0, WIDTH, HEIGHT))})
    return out


def node_by_id(doc: Any, uid: str) -> Any:
    return next(node for node in doc.rootNode().childNodes()
                if node.uniqueId().toString() == uid)


def paint(doc: Any, name: str, pixel: Callable[[int, int], tuple[int, int, int, int]]) -> Any:
    """A paint layer filled from ``pixel(x, y) -> (r, g, b, a)``."""
    node = doc.createNode(name, "paintlayer")
    doc.rootNode().addChildNode(node, None)
    data = bytearray(WIDTH * HEIGHT * 4)
    for y in range(HEIGHT):
        for x in range(WIDTH):
            r, g, b, a = pixel(x, y)
            i = (y * WIDTH + x) * 4
            data[i:i + 4] = bytes((b, g, r, a))
    node.setPixelData(bytes(data), 0, 0, WIDTH, HEIGHT)
    return node


def make_document() -> Any:
    doc = Krita.instance().createDocument(WIDTH, HEIGHT, "atelier-test", "RGBA", "U8", "", 72.0)
    paint(doc, "colour", lambda x, y: (x % 256, y % 256, (x * y) % 256, 255))
    paint(doc, "square", lambda x, y: (200, 30, 30, 255) if 60 <= x < 120 and 50 <= y < 100
          else (0, 0, 0, 0))
    paint(doc, "depth", lambda x, y: (x, x, x, 255))                 # near on the right
    paint(doc, "depth_rows", lambda x, y: (y + 40, y + 40, y + 40, 255))   # near at the bottom
    for name in ("depth", "depth_rows"):
        doc.nodeByName(name).setVisible(False)
    doc.refreshProjection()
    doc.waitForDone()
    return doc


def _choose_text(combo: Any, text: str) -> None:
    index = combo.findText(text)
    if index < 0:
        raise LookupError(f"no {text!r} among the combo box's items")
    combo.setCurrentIndex(index)


def select_rect(doc: Any, x: int, y: int, w: int, h: int) -> None:
    selection = Selection()
    selection.select(x, y, w, h, 255)
    doc.setSelection(selection)


def select_disc(doc: Any, cx: int, cy: int, r: int) -> bytes:
    """A round selection; returns the canvas-sized mask that was set."""
    mask = bytes(255 if (x - cx) ** 2 + (y - cy) ** 2 <= r * r else 0
                 for y in range(HEIGHT) for x in range(WIDTH))
    selection = Selection()
    selection.setPixelData(mask, 0, 0, WIDTH, HEIGHT)
    doc.setSelection(selection)
    return mask


def clear_selection(doc: Any) -> None:
    selection = Selection()
    selection.select(0, 0, 0, 0, 255)
    doc.setSelection(selection)


class Run:
    def __init__(self, results_path: str):
        self.results_path = results_path
        self.results: dict[str, Any] = {}

    def scenario(self, name: str, body: Callable[[], dict[str, Any]]) -> None:
        started = time.monotonic()
        try:
            record = {"ok": True, **body()}
        except Exception:
            record = {"ok": False, "error": traceback.format_exc()}
        record["seconds"] = round(time.monotonic() - started, 2)
        self.results[name] = record
        self.save()

    def save(self) -> None:
        with open(self.results_path + ".part", "w") as handle:
            json.dump(self.results, handle)
        os.replace(self.results_path + ".part", self.results_path)


def __main__(args: list[str]) -> None:
    results_path, zip_path, daemon_url, dead_url = args[:4]
    only = [name for name in (args[4] if len(args) > 4 else "").split(",") if name]
    run = Run(results_path)
    state: dict[str, Any] = {}

    def setup() -> dict[str, Any]:
        state["imported"] = install(zip_path)
        import atelier_krita
        from atelier_krita.protocol import _websocket
        state["doc"] = make_document()
        return {"imported": state["imported"], "package": atelier_krita.__file__,
                "websocket_module": _websocket.connect.__module__,
                "stack": layer_stack(state["doc"])}

    run.scenario("setup", setup)
    if not run.results["setup"]["ok"]:
        return

    from atelier_krita.controller import ConnectionSettings, Controller
    from atelier_krita.docker import AtelierPanel
    from atelier_krita.geometry import ResolutionRange
    from atelier_krita.host import KritaDocument
    from atelier_krita.jobs import JobSettings

    doc = state["doc"]
    url = urlparse(daemon_url)
    controller = Controller(lambda: KritaDocument(doc),
                            connection=ConnectionSettings(url.hostname, url.port),
                            resolution=ResolutionRange(32, 96))
    panel = AtelierPanel(controller)
    panel.timer.stop()   # the scenarios pump themselves, one step at a time
    base = JobSettings(prompt="a lighthouse at dusk", steps=3, seed=1234, mask_grow=4,
                       mask_feather=3, previews=True)

    try:
        run_with_daemon(run, controller, panel, base, url, dead_url, only)
    finally:
        controller.close()
        panel.timer.stop()
        # Free the panel's Qt objects now: left to interpreter shutdown, after Krita's
        # QApplication is gone, their destruction crashes kritarunner.
        del panel
        gc.collect()


def run_with_daemon(run: Run, controller: Any, panel: Any, base: Any, url: Any,
                    dead_url: str, only: list[str]) -> None:
    from atelier_krita.controller import ConnectionSettings, Controller
    from atelier_krita.geometry import ResolutionRange
    from atelier_krita.host import KritaDocument
    from atelier_krita.jobs import JobSettings, Mode, Workflow

    doc = controller.document().native

    def originals() -> dict[str, str]:
        return {entry["name"]: entry["sha"] for entry in layer_stack(doc)
                if entry["name"] in ORIGINALS}

    def new_layers(before: list[dict[str, Any]]) -> list[dict[str, Any]]:
        known = {entry["id"] for entry in before}
        return [entry for entry in layer_stack(doc) if entry["id"] not in known]

    def run_job(mode: Any, settings: Any) -> dict[str, Any]:
        before = layer_stack(doc)
        started = controller.start(mode, settings)
        if started:
            pump_until(controller, lambda: not controller.busy, f"the {mode.value} job")
        return {"started": started, "message": controller.message, "new": new_layers(before)}

    def connect() -> dict[str, Any]:
        panel.host_edit.setText(url.hostname)
        panel.port_spin.setValue(url.port)
        panel.connect_button.click()
        pump_until(controller, lambda: controller.connected and controller.models, "connection",
                   failed=lambda: "atelier serve" in controller.connection_text)
        panel.refresh()
        return {"status": controller.connection_text,
                "models": [m.name for m in controller.models],
                "conditioners": [m.name for m in controller.models
                                 if m.family in ("controlnet", "t2i_adapter")],
                "model_combo": [panel.model_combo.itemText(i)
                                for i in range(panel.model_combo.count())],
                "depth_combo": [panel.depth_combo.itemText(i)
                                for i in range(panel.depth_combo.count())]}

    run.scenario("connect", connect)
    if not run.results["connect"]["ok"]:
        return
    import docker_scenarios
    context = docker_scenarios.Context(controller, panel, doc, base)
    if only:
        for name in only:
            run.scenario(name, lambda name=name: docker_scenarios.ALL[name](context))
        return
    run.scenario("fresh_panel", lambda: docker_scenarios.fresh_panel(context))

    def generate_canvas() -> dict[str, Any]:
        clear_selection(doc)
        before = layer_stack(doc)
        panel.show_settings(base)
        panel.max_side_spin.setValue(96)
        panel.choose_workflow(Workflow.GENERATE)
        panel.generate_button.click()      # through the docker's own button
        pump_until(controller, lambda: not controller.busy, "generate")
        layers = new_layers(before)
        return {"message": controller.message, "new": layers,
                "history": [entry.summary() for entry in controller.history],
                "history_rows": panel.history_list.count()}

    run.scenario("generate_canvas", generate_canvas)

    def rerun_from_history() -> dict[str, Any]:
        before = layer_stack(doc)
        panel.refresh()
        panel.history_list.setCurrentRow(0)
        panel.prompt_edit.setPlainText("something else")
        panel.recall_button.click()                      # fields back to the job's settings
        recalled = panel.prompt_edit.toPlainText()
        panel.rerun_button.click()
        pump_until(controller, lambda: not controller.busy, "the re-run")
        return {"recalled": recalled, "message": controller.message, "new": new_layers(before),
                "first": run.results["generate_canvas"].get("new", [])}

    run.scenario("rerun", rerun_from_history)

    def step_cache() -> dict[str, Any]:
        """The docker's Step cache field, set like a painter would, through Generate."""
        clear_selection(doc)
        spin = panel.cache_spin
        field = {"min": spin.minimum(), "max": spin.maximum(), "value": spin.value(),
                 "text": spin.text(), "tooltip": spin.toolTip()}
        before = layer_stack(doc)
        panel.show_settings(base)
        panel.max_side_spin.setValue(96)
        spin.setValue(2)
        panel.choose_workflow(Workflow.GENERATE)
        panel.generate_button.click()
        pump_until(controller, lambda: not controller.busy, "generate with step caching")
        sent = controller.sent_request
        entry = controller.history[0]
        spin.setValue(1)
        panel.refresh()
        panel.history_list.setCurrentRow(0)
        panel.recall_button.click()
        recalled = spin.value()
        panel.show_settings(base)        # later scenarios start from the defaults again
        return {"field": field, "message": controller.message, "new": new_layers(before),
                "sent": sent.cache_interval if sent is not None else None,
                "sent_steps": sent.steps if sent is not None else None,
                "history": entry.settings.cache_interval, "recalled": recalled,
                "reset": spin.value(),
                "first": run.results["generate_canvas"].get("new", [])}

    run.scenario("step_cache", step_cache)

    def generate_selection() -> dict[str, Any]:
        select_rect(doc, 31, 40, 61, 45)
        return run_job(Mode.GENERATE, base)

    run.scenario("generate_selection", generate_selection)

    def fill() -> dict[str, Any]:
        before = originals()
        mask = select_disc(doc, 100, 75, 22)
        out = run_job(Mode.FILL, base)
        node = node_by_id(doc, out["new"][0]["id"]) if out["new"] else None
        out["pixels"] = b64(node.pixelData(0, 0, WIDTH, HEIGHT)) if node else ""
        out["selection"] = b64(mask)
        out["originals"] = (before, originals())
        out["sent"] = {role: [frame.width, frame.height]
                       for role, frame in controller.sent_inputs.items()}
        return out

    run.scenario("fill", fill)

    def refine() -> dict[str, Any]:
        clear_selection(doc)
        return run_job(Mode.REFINE, JobSettings(prompt="oil painting", steps=4, seed=5,
                                                strength=0.5, previews=False))

    run.scenario("refine", refine)


    def seamless() -> dict[str, Any]:
        clear_selection(doc)
        return run_job(Mode.SEAMLESS, JobSettings(prompt="stone wall", steps=3, seed=9,
                                                  tiling="both", strength=0.6, previews=False))

    run.scenario("seamless", seamless)

    def large_canvas() -> dict[str, Any]:
        """A 4k document: scaled down to the model and back onto the exact canvas, with
        the Qt-thread time the plugin spends on it measured."""
        width, height = 3840, 2160
        big = Krita.instance().createDocument(width, height, "4k", "RGBA", "U8", "", 72.0)
        layer = big.createNode("pattern", "paintlayer")
        big.rootNode().addChildNode(layer, None)
        row = bytes(range(256)) * (width * 4 // 256)
        layer.setPixelData(row * height, 0, 0, width, height)
        big.refreshProjection()
        big.waitForDone()
        known = {node.uniqueId().toString() for node in big.rootNode().childNodes()}
        worker = Controller(lambda: KritaDocument(big), connection=controller.connection,
                            resolution=ResolutionRange(32, 96))
        worker.connect()
        pump_until(worker, lambda: worker.connected, "the 4k connection")
        started = time.perf_counter()
        ok = worker.start(Mode.REFINE, JobSettings(prompt="4k", steps=2, seed=8, strength=0.5,
                                                   previews=False))
        start_s = time.perf_counter() - started
        pump_s = 0.0
        deadline = time.monotonic() + WAIT_S
        while ok and worker.busy and time.monotonic() < deadline:
            QCoreApplication.processEvents()
            tick = time.perf_counter()
            worker.pump()
            pump_s += time.perf_counter() - tick
            time.sleep(0.01)
        sent = {role: [f.width, f.height] for role, f in worker.sent_inputs.items()}
        new = [node for node in big.rootNode().childNodes()
               if node.uniqueId().toString() not in known]
        out = {"started": ok, "message": worker.message, "sent": sent,
               "new": [[n.name(), n.bounds().x(), n.bounds().y(), n.bounds().width(),
                        n.bounds().height()] for n in new],
               "start_s": round(start_s, 3), "result_s": round(pump_s, 3)}
        worker.close()
        big.close()
        return out

    run.scenario("large_canvas", large_canvas)

    def batch() -> dict[str, Any]:
        clear_selection(doc)
        before = layer_stack(doc)
        controller.start(Mode.GENERATE, JobSettings(prompt="two moons", steps=2, seed=11,
                                                    batch_size=2, previews=False))
        pump_until(controller, lambda: not controller.busy, "the batch job")
        shown = {"count": controller.batch_size, "layers": new_layers(before)}
        controller.select_result(1)
        shown["second"] = new_layers(before)
        panel.refresh()
        shown["apply_enabled"] = panel.apply_button.isEnabled()
        panel.apply_button.click()
        shown["applied"] = new_layers(before)
        shown["message"] = controller.message
        return shown

    run.scenario("batch", batch)

    def batch_layer_deleted() -> dict[str, Any]:
        """The painter deletes the preview layer while picking: the next pick shows in a
        new one, and Apply keeps that."""
        clear_selection(doc)
        before = layer_stack(doc)
        controller.start(Mode.GENERATE, JobSettings(prompt="three suns", steps=2, seed=41,
                                                    batch_size=2, previews=False))
        pump_until(controller, lambda: not controller.busy, "the batch job")
        (shown,) = new_layers(before)
        node_by_id(doc, shown["id"]).remove()
        out: dict[str, Any] = {"deleted": new_layers(before)}
        controller.select_result(1)
        out["picked"] = new_layers(before)
        applied = controller.apply_result()
        out["applied"] = new_layers(before)
        out["returned"] = applied.uniqueId().toString() if applied is not None else None
        return out

    run.scenario("batch_layer_deleted", batch_layer_deleted)

    def cancel() -> dict[str, Any]:
        clear_selection(doc)
        before = layer_stack(doc)
        started = controller.start(Mode.GENERATE, JobSettings(prompt="slow", steps=60, seed=3,
                                                              previews=True))
        pump_until(controller, lambda: controller.progress[0] >= 1, "the first step")
        during = new_layers(before)
        panel.cancel_button.click()
        pump_until(controller, lambda: not controller.busy, "the cancellation")
        # Anything the daemon still sends for the job must not add layers either.
        for _ in range(50):
            QCoreApplication.processEvents()
            controller.pump()
            time.sleep(0.01)
        return {"started": started, "during": during, "after": new_layers(before),
                "message": controller.message,
                "history_outcome": controller.history[0].outcome}

    run.scenario("cancel", cancel)

    def depth_model() -> dict[str, Any]:
        """The docker's Depth model field, picked like a painter would, through Depth; then
        History's Recall, and the daemon no longer listing the chosen model."""
        combo = panel.depth_model_combo
        panel.show_settings(base)
        panel.refresh()

        def items() -> list[list[Any]]:
            return [[combo.itemText(i), combo.itemData(i)] for i in range(combo.count())]

        out: dict[str, Any] = {"items": items(), "tooltip": combo.toolTip(),
                               "initial": combo.currentText()}
        select_rect(doc, 20, 30, 64, 48)
        before = layer_stack(doc)
        _choose_text(panel.model_combo, "tiny")      # the SD1.5 model the tiny adapter is for
        _choose_text(panel.depth_combo, "depth")
        _choose_text(combo, "tiny-adapter (T2I-Adapter: fast)")
        panel.choose_workflow(Workflow.DEPTH)
        panel.generate_button.click()
        pump_until(controller, lambda: not controller.busy, "the depth job with an adapter")
        sent = controller.sent_request
        out.update(message=controller.message, new=new_layers(before),
                   sent=sent.control.model if sent is not None and sent.control else "no control",
                   sent_depth=sent.depth.upload is not None if sent and sent.depth else False,
                   history=[controller.history[0].outcome, controller.history[0].settings.depth_model])
        _choose_text(combo, "Daemon default")
        panel.refresh()
        panel.history_list.setCurrentRow(0)
        panel.recall_button.click()
        out["recalled"] = [combo.currentText(), panel.settings().depth_model]
        # The daemon stops listing the adapter (as after a restart without it).
        listed = controller.models
        controller.models = [m for m in listed if m.name != "tiny-adapter"]
        panel.refresh()
        out["unlisted"] = {"items": items(), "current": combo.currentText(),
                           "settings": panel.settings().depth_model}
        before = layer_stack(doc)
        out["unlisted"]["started"] = controller.start(Mode.DEPTH, panel.settings())
        out["unlisted"]["message"] = controller.message
        out["unlisted"]["new"] = new_layers(before)
        out["unlisted"]["generate"] = run_job(Mode.GENERATE, replace(panel.settings(), steps=2))
        controller.models = listed
        panel.refresh()
        out["relisted"] = combo.currentText()
        # A depth model the daemon cannot use with the job's model: its answer names the field.
        out["refused_by_daemon"] = run_job(Mode.DEPTH, replace(panel.settings(), steps=2,
                                                               model="tiny-depth"))
        panel.show_settings(base)        # later scenarios start from the defaults again
        out["reset"] = [combo.currentText(), panel.settings().depth_model]
        return out

    run.scenario("depth_model", depth_model)

    # The depth jobs load the tiny SD2-depth model, which then stays the daemon's current one.
    def depth() -> dict[str, Any]:
        select_rect(doc, 20, 30, 64, 48)   # inside the model range: sent unscaled
        outcomes = {}
        for layer in ("depth", "depth_rows"):
            # SD2-depth takes depth as a UNet input; the tiny ControlNet's zero-initialised
            # output convolutions would leave the picture unchanged.
            settings = JobSettings(prompt="a canyon", steps=3, seed=77, depth_layer=layer,
                                   model="tiny-depth", previews=False)
            out = run_job(Mode.DEPTH, settings)
            frame = controller.sent_inputs.get("depth")
            out["uploaded"] = b64(frame.data) if frame is not None else ""
            out["uploaded_size"] = [frame.width, frame.height] if frame is not None else []
            node = node_by_id(doc, out["new"][0]["id"]) if out["new"] else None
            out["pixels"] = sha(node.pixelData(20, 30, 64, 48)) if node else ""
            out["layer_pixels"] = b64(doc.nodeByName(layer).pixelData(20, 30, 64, 48))
            outcomes[layer] = out
        return outcomes

    run.scenario("depth", depth)

    def depth_estimate() -> dict[str, Any]:
        clear_selection(doc)
        return run_job(Mode.DEPTH, JobSettings(prompt="a canyon", steps=2, seed=78,
                                               model="tiny-depth", previews=False))

    run.scenario("depth_estimate", depth_estimate)
    run.scenario("after_estimate_refused",
                 lambda: docker_scenarios.after_estimate_refused(context))

    def restore_model() -> dict[str, Any]:
        # The daemon is shared with other tests: leave it on the model it started with.
        after_depth = controller.current_model
        _choose_text(panel.model_combo, "tiny")
        panel.load_button.click()
        loading = controller.loading_model
        pump_until(controller, lambda: controller.loading_model is None, "loading tiny")
        _choose_text(panel.model_combo, "(daemon's current model)")
        return {"after_depth": after_depth, "loading": loading,
                "current": controller.current_model, "message": controller.message}

    run.scenario("restore_model", restore_model)

    def refusals() -> dict[str, Any]:
        before = layer_stack(doc)
        out: dict[str, Any] = {}
        clear_selection(doc)
        out["fill_without_selection"] = (controller.start(Mode.FILL, base), controller.message)
        out["missing_model"] = (controller.start(Mode.GENERATE,
                                                 JobSettings(model="no-such-model", steps=2)),
                                controller.message)
        deep = Krita.instance().createDocument(40, 30, "deep", "RGBA", "U16", "", 72.0)
        other = Controller(lambda: KritaDocument(deep), connection=controller.connection,
                           resolution=ResolutionRange(32, 96))
        other.connect()
        pump_until(other, lambda: other.connected, "the second connection")
        out["sixteen_bit"] = (other.start(Mode.GENERATE, base), other.message)
        other.close()
        deep.close()
        out["new"] = new_layers(before)
        return out

    run.scenario("refusals", refusals)

    def dead_daemon() -> dict[str, Any]:
        dead = urlparse(dead_url)
        before = layer_stack(doc)
        lonely = Controller(lambda: KritaDocument(doc),
                            connection=ConnectionSettings(dead.hostname, dead.port))
        lonely.connect()
        pump_until(lonely, lambda: "atelier serve" in lonely.connection_text, "the failure")
        started = lonely.start(Mode.GENERATE, base)
        out = {"status": lonely.connection_text, "started": started, "message": lonely.message,
               "new": new_layers(before)}
        lonely.close()
        return out

    run.scenario("dead_daemon", dead_daemon)

    for name, body in docker_scenarios.SCENARIOS.items():
        run.scenario(name, lambda body=body: body(context))

    def final() -> dict[str, Any]:
        controller.discard_results()
        return {"stack": layer_stack(doc)}

    run.scenario("final", final)
