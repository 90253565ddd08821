"""Scenarios for what used to get stuck or lose settings in the docker (issue 12), run
inside Krita by ``atelier_scenarios`` against the same daemon, panel and document.

Each function returns what it saw; tests/test_krita_host.py judges it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

from krita import Krita
from PyQt5.QtCore import QCoreApplication, Qt
from PyQt5.QtGui import QValidator

from atelier_scenarios import WAIT_S, clear_selection, layer_stack, pump_until, select_rect

ESTIMATE = "(estimate from canvas)"
BIG_SEED = 2661926866              # above 2**31 - 1, what a 32-bit spin box holds
STALL_SIDE = 2048                  # the canvas the UI-thread figures are measured on


@dataclass
class Context:
    controller: Any
    panel: Any
    doc: Any
    base: Any


def combo_items(combo: Any) -> list[list[Any]]:
    return [[combo.itemText(i), combo.itemData(i)] for i in range(combo.count())]


def _choose(combo: Any, text: str) -> None:
    index = combo.findText(text)
    if index < 0:
        raise LookupError(f"no {text!r} among {combo_items(combo)}")
    combo.setCurrentIndex(index)


# ---------------------------------------------------------------- a fresh docker
def fresh_panel(ctx: Context) -> dict[str, Any]:
    """What a painter sees first: the docker's size and the depth source it starts with."""
    panel = ctx.panel
    panel.refresh()
    hint = panel.minimumSizeHint()
    return {"min_height": hint.height(), "min_width": hint.width(),
            "depth_choice": panel.depth_combo.currentText(),
            "depth_items": [text for text, _ in combo_items(panel.depth_combo)]}


def after_estimate_refused(ctx: Context) -> dict[str, Any]:
    """After the daemon said it cannot estimate depth, the field says so and offers layers."""
    panel = ctx.panel
    combo = panel.depth_combo
    panel.show_settings(ctx.base)       # depth_layer None: estimate, as recalled from History
    panel.refresh()
    index = combo.findText(ESTIMATE)
    item = combo.model().item(index) if index >= 0 else None
    return {"choice": combo.currentText(),
            "estimate_enabled": bool(item.isEnabled()) if item is not None else None,
            "estimate_tooltip": combo.itemData(index, Qt.ToolTipRole) if index >= 0 else None,
            "field_tooltip": combo.toolTip(),
            "settings_depth_layer": panel.settings().depth_layer}


# ---------------------------------------------------------------- seeds
def seed_range(ctx: Context) -> dict[str, Any]:
    """Seeds above 2**31 - 1 survive the field, a job and History's Recall."""
    from atelier_krita.jobs import Mode, Workflow  # noqa: F401
    panel, controller, doc = ctx.panel, ctx.controller, ctx.doc
    out: dict[str, Any] = {}
    panel.show_settings(replace(ctx.base, seed=BIG_SEED, steps=2))
    out["shown"] = panel.settings().seed
    clear_selection(doc)
    panel.max_side_spin.setValue(96)
    panel.choose_workflow(Workflow.GENERATE)
    panel.generate_button.click()
    pump_until(controller, lambda: not controller.busy, "the job with a large seed")
    sent = controller.sent_request
    out["sent"] = sent.seed if sent is not None else None
    out["message"] = controller.message
    panel.show_settings(ctx.base)
    panel.refresh()
    panel.history_list.setCurrentRow(0)
    panel.recall_button.click()
    out["recalled"] = panel.settings().seed
    edit = panel.seed_edit
    out["recalled_text"] = edit.text()
    validator = edit.validator()
    out["validator"] = {text: int(validator.validate(text, len(text))[0]) == QValidator.Acceptable
                        for text in ("", "0", "4294967295", "4294967296", "-1", "12a")}
    edit.setText("")
    out["empty_is_random"] = panel.settings().seed is None
    panel.show_settings(ctx.base)
    for node in doc.rootNode().childNodes():      # leave the canvas as the others expect it
        if node.name().endswith(f"[seed {BIG_SEED}]"):
            node.remove()
    return out


# ---------------------------------------------------------------- depth fields
def depth_layers_fresh(ctx: Context) -> dict[str, Any]:
    """A layer added after the docker last refreshed is offered when the list opens."""
    panel, doc = ctx.panel, ctx.doc
    combo = panel.depth_combo
    panel.refresh()
    before = [text for text, _ in combo_items(combo)]
    node = doc.createNode("late depth", "paintlayer")
    doc.rootNode().addChildNode(node, None)
    combo.showPopup()
    QCoreApplication.processEvents()
    opened = [text for text, _ in combo_items(combo)]
    combo.hidePopup()
    node.remove()
    doc.waitForDone()
    combo.showPopup()
    QCoreApplication.processEvents()
    removed = [text for text, _ in combo_items(combo)]
    combo.hidePopup()
    return {"before": before, "opened": opened, "removed": removed}


def depth_models_by_family(ctx: Context) -> dict[str, Any]:
    """The Depth model field offers the conditioners made for the chosen model's family."""
    panel = ctx.panel
    combo = panel.depth_model_combo
    panel.show_settings(ctx.base)            # Daemon default
    out: dict[str, Any] = {}
    for model in ("tiny", "tiny-sdxl", "tiny-depth", "(daemon's current model)"):
        _choose(panel.model_combo, model)
        panel.refresh()
        out[model] = {"names": [data for _, data in combo_items(combo)],
                      "tooltip": combo.toolTip()}
    _choose(panel.model_combo, "(daemon's current model)")
    panel.refresh()
    return out


# ---------------------------------------------------------------- a closed document
def document_closed(ctx: Context) -> dict[str, Any]:
    """The painter closes the document a job works on: the job ends with a message, the
    docker goes on working in the other documents."""
    from atelier_krita.controller import Controller
    from atelier_krita.geometry import ResolutionRange
    from atelier_krita.host import KritaDocument
    from atelier_krita.jobs import JobSettings, Mode
    app = Krita.instance()
    closing = app.createDocument(203, 157, "closing", "RGBA", "U8", "", 72.0)
    current = {"doc": closing}
    controller = Controller(lambda: KritaDocument(current["doc"]),
                            connection=ctx.controller.connection,
                            resolution=ResolutionRange(32, 96))
    out: dict[str, Any] = {"errors": []}
    try:
        controller.connect()
        pump_until(controller, lambda: controller.connected, "the connection")
        out["started"] = controller.start(Mode.GENERATE, JobSettings(
            prompt="closed", steps=40, seed=4, previews=True))
        pump_until(controller, lambda: controller.progress[0] >= 2, "the first steps")
        out["layers_before_close"] = [n.name() for n in closing.rootNode().childNodes()]
        closing.close()
        deadline = time.monotonic() + WAIT_S
        while controller.busy and time.monotonic() < deadline:
            QCoreApplication.processEvents()
            try:
                controller.pump()
            except Exception as exc:          # what the docker's timer would have lost
                out["errors"].append(f"{type(exc).__name__}: {exc}")
                if len(out["errors"]) > 20:
                    break
            time.sleep(0.01)
        out.update(busy=controller.busy, message=controller.message,
                   history=controller.history[0].outcome if len(controller.history) else None)
        # The docker goes on in another document.
        current["doc"] = ctx.doc
        clear_selection(ctx.doc)
        before = {entry["id"] for entry in layer_stack(ctx.doc)}
        out["next_started"] = controller.start(Mode.GENERATE, JobSettings(
            prompt="after close", steps=2, seed=6, previews=False))
        pump_until(controller, lambda: not controller.busy, "the next job")
        out["next_message"] = controller.message
        new = [n for n in ctx.doc.rootNode().childNodes()
               if n.uniqueId().toString() not in before]
        out["next_new"] = [n.name() for n in new]
        for node in new:
            node.remove()
    finally:
        controller.close()
    return out


# ---------------------------------------------------------------- UI-thread time
def timed_document_class() -> type:
    """``KritaDocument`` counting the seconds spent inside Krita's own calls, so a stall
    splits into the plugin's share and Krita's (its synchronous recomposite of the whole
    image after each layer write, which Krita's Python API has no way around)."""
    from atelier_krita.host import KritaDocument

    class TimedDocument(KritaDocument):
        krita_seconds = 0.0
        krita_cpu_seconds = 0.0

        def _timed(self, call: Callable[..., Any], *args: Any) -> Any:
            started, started_cpu = time.perf_counter(), time.thread_time()
            try:
                return call(*args)
            finally:
                TimedDocument.krita_seconds += time.perf_counter() - started
                TimedDocument.krita_cpu_seconds += time.thread_time() - started_cpu

        def selection_mask(self, region: Any) -> bytes:
            return self._timed(super().selection_mask, region)

        def read_canvas(self, *args: Any) -> bytes:
            return self._timed(super().read_canvas, *args)

        def add_layer(self, *args: Any) -> Any:
            return self._timed(super().add_layer, *args)

        def write_layer(self, *args: Any) -> None:
            self._timed(super().write_layer, *args)

        def remove_layer(self, node: Any) -> None:
            self._timed(super().remove_layer, node)

    return TimedDocument


def _timed_job(controller: Any, documents: type, mode: Any, settings: Any) -> dict[str, Any]:
    """Run one job the way the docker's timer does, timing every call on this (Qt's)
    thread: the button's ``start`` and each ``pump``, and Krita's share of each; and
    noting which thread ran each piece of the job's pixel work (``pixel_work``).

    ``*_own_s`` is the plugin's own wall time on Qt's thread, ``*_own_cpu_s`` the CPU
    time this thread spent in it: on a shared machine wall time also counts the waits
    for the GIL and for a core, CPU time only the work the plugin did here."""
    def timed(call: Callable[[], Any]) -> tuple[float, float, float]:
        krita = documents.krita_seconds
        krita_cpu = documents.krita_cpu_seconds
        started, started_cpu = time.perf_counter(), time.thread_time()
        call()
        total, cpu = time.perf_counter() - started, time.thread_time() - started_cpu
        return (total, total - (documents.krita_seconds - krita),
                cpu - (documents.krita_cpu_seconds - krita_cpu))

    pixel_work: list[list[str]] = []
    submit = controller._worker.submit

    def noted_submit(work: Callable[..., Any], *args: Any) -> Any:
        def run(*inner: Any) -> Any:
            pixel_work.append([work.__name__, threading.current_thread().name])
            return work(*inner)
        return submit(run, *args)
    controller._worker.submit = noted_submit      # this instance's attribute only
    ok = False

    def click() -> None:
        nonlocal ok
        ok = controller.start(mode, settings)

    try:
        click_s, click_own_s, click_own_cpu_s = timed(click)
        pumps: list[tuple[float, float, float]] = []
        deadline = time.monotonic() + WAIT_S
        while ok and controller.busy and time.monotonic() < deadline:
            QCoreApplication.processEvents()
            pumps.append(timed(controller.pump))
            time.sleep(0.005)
    finally:
        controller._worker.submit = submit
    busy = [total for total, _, _ in pumps if total > 0.002]     # pumps that did something
    return {"started": ok, "message": controller.message, "steps": settings.steps,
            "click_s": round(click_s, 4), "click_own_s": round(click_own_s, 4),
            "click_own_cpu_s": round(click_own_cpu_s, 4),
            "pump_max_s": round(max((t for t, _, _ in pumps), default=0.0), 4),
            "pump_own_max_s": round(max((o for _, o, _ in pumps), default=0.0), 4),
            "pump_own_cpu_max_s": round(max((c for _, _, c in pumps), default=0.0), 4),
            "pump_krita_max_s": round(max((t - o for t, o, _ in pumps), default=0.0), 4),
            "pump_busy_mean_s": round(sum(busy) / len(busy), 4) if busy else 0.0,
            "pump_busy_count": len(busy), "pixel_work": pixel_work,
            "qt_thread": threading.current_thread().name}


def ui_stalls(ctx: Context) -> dict[str, Any]:
    """A Fill click and step previews on a 2048x2048 canvas, with the Qt-thread time of
    each call measured."""
    from atelier_krita.controller import Controller
    from atelier_krita.geometry import ResolutionRange
    from atelier_krita.jobs import JobSettings, Mode
    side = STALL_SIDE
    big = Krita.instance().createDocument(side, side, "stalls", "RGBA", "U8", "", 72.0)
    layer = big.createNode("pattern", "paintlayer")
    big.rootNode().addChildNode(layer, None)
    row = bytes(range(256)) * (side * 4 // 256)
    layer.setPixelData(row * side, 0, 0, side, side)
    big.refreshProjection()
    big.waitForDone()
    documents = timed_document_class()
    controller = Controller(lambda: documents(big), connection=ctx.controller.connection,
                            resolution=ResolutionRange(64, 256))
    out: dict[str, Any] = {}
    try:
        controller.connect()
        pump_until(controller, lambda: controller.connected, "the connection")
        settings = JobSettings(prompt="stalls", steps=4, seed=12, mask_grow=8, mask_feather=8,
                               previews=True)
        select_rect(big, 100, 100, 1848, 1848)
        out["fill"] = _timed_job(controller, documents, Mode.FILL, settings)
        region = controller.history[0].region if len(controller.history) else None
        out["fill"]["region"] = [region.x, region.y, region.width, region.height] \
            if region is not None else None
        clear_selection(big)
        out["generate"] = _timed_job(controller, documents, Mode.GENERATE, settings)
        out["layers"] = [n.name() for n in big.rootNode().childNodes()]
    finally:
        controller.close()
        big.close()
    return out


# ---------------------------------------------------------------- the docker's shape
def _names(doc: Any) -> list[str]:
    return [node.name() for node in doc.rootNode().childNodes()]


def docker_shape(ctx: Context) -> dict[str, Any]:
    """One Generate button, the mode in a drop-down, each mode's own fields shown only
    for it, the button saying what a click does with and without a selection, a batch
    as thumbnails (click: preview, double-click: apply), History as thumbnails, and a
    second Generate while a job runs queued instead of refused."""
    from PyQt5.QtWidgets import QAbstractButton
    from atelier_krita.jobs import Workflow
    panel, controller, doc = ctx.panel, ctx.controller, ctx.doc
    out: dict[str, Any] = {}
    panel.show_settings(replace(ctx.base, steps=2, previews=False))
    panel.max_side_spin.setValue(96)
    panel.choose_workflow(Workflow.GENERATE)
    clear_selection(doc)
    panel._check_selection()
    out["buttons"] = sorted(b.text() for b in panel.findChildren(QAbstractButton)
                            if b.text() and not b.isHidden())
    out["modes"] = [panel.mode_combo.itemText(i) for i in range(panel.mode_combo.count())]
    fields = {}
    labels = {}
    for workflow in Workflow:
        panel.choose_workflow(workflow)
        clear_selection(doc)
        panel._check_selection()
        without = panel.generate_button.text()
        select_rect(doc, 10, 12, 40, 30)
        panel._check_selection()
        labels[workflow.value] = [without, panel.generate_button.text()]
        fields[workflow.value] = {"strength": not panel.strength_row.isHidden(),
                                  "depth": not panel.depth_combo.isHidden(),
                                  "depth_model": not panel.depth_model_combo.isHidden()}
    out["labels"], out["fields"] = labels, fields
    # Generate with a selection fills it.
    panel.choose_workflow(Workflow.GENERATE)
    select_rect(doc, 10, 12, 40, 30)
    panel.generate_button.click()
    pump_until(controller, lambda: not controller.busy, "the fill through Generate")
    sent = controller.sent_request
    out["selection_kind"] = sent.kind if sent is not None else None
    out["selection_message"] = controller.message
    for node in doc.rootNode().childNodes():
        if node.name().endswith("]") and "[seed" in node.name():
            node.remove()
    clear_selection(doc)
    # A batch as thumbnails, then History's.
    before = _names(doc)
    panel.batch_spin.setValue(2)
    panel.generate_button.click()
    pump_until(controller, lambda: not controller.busy, "the batch through Generate")
    panel.refresh()
    results = panel.results_list
    out["batch"] = {"count": controller.batch_size, "thumbnails": results.count(),
                    "icons": [not results.item(i).icon().isNull()
                              for i in range(results.count())],
                    "shown": panel.bottom_stack.currentWidget() is panel.result_row}
    item = results.item(1)
    results.itemClicked.emit(item)
    out["batch"]["picked"] = controller.batch_index
    out["batch"]["layers_picked"] = [n for n in _names(doc) if n not in before]
    results.itemDoubleClicked.emit(item)
    out["batch"]["after_double_click"] = [n for n in _names(doc) if n not in before]
    out["batch"]["waiting_after"] = controller.batch_size
    history = panel.history_list
    out["history"] = {"rows": history.count(),
                      "icon": not history.item(0).icon().isNull() if history.count() else None,
                      "tooltip": history.item(0).toolTip() if history.count() else None}
    for node in doc.rootNode().childNodes():
        if node.name() not in before:
            node.remove()
    # Queue: Generate twice.
    panel.batch_spin.setValue(1)
    panel.seed_edit.setText("61")
    panel.generate_button.click()
    panel.seed_edit.setText("62")
    panel.generate_button.click()
    panel.refresh()
    out["queue"] = {"busy": controller.busy, "queued": controller.queued,
                    "label": panel.queue_label.text(), "button": panel.generate_button.text(),
                    "message": controller.message}
    pump_until(controller, lambda: not controller.busy and not controller.queued,
               "the queued jobs")
    out["queue"]["seeds"] = [controller.history[i].seeds for i in range(2)]
    out["queue"]["new"] = [n for n in _names(doc) if n not in before]
    out["queue"]["message_after"] = controller.message
    for node in doc.rootNode().childNodes():
        if node.name() not in before:
            node.remove()
    panel.show_settings(ctx.base)
    return out


# ---------------------------------------------------------------- live painting (issue 15)
def _fill_layer(doc: Any, node: Any, bgra: bytes) -> None:
    from PyQt5.QtCore import QByteArray
    width, height = doc.width(), doc.height()
    node.setPixelData(QByteArray(bgra * (width * height)), 0, 0, width, height)
    doc.refreshProjection()


def _centre_bgra(frame: Any) -> list[int]:
    """The centre pixel of an RGBA8 upload, as [B, G, R, A]."""
    at = ((frame.height // 2) * frame.width + frame.width // 2) * 4
    r, g, b, a = frame.data[at:at + 4]
    return [b, g, r, a]


def live_painting(ctx: Context) -> dict[str, Any]:
    """Live on, two quick strokes, the live layer follows the newest; Apply; Live off."""
    from atelier_krita.live import LIVE_LAYER
    panel, controller, doc = ctx.panel, ctx.controller, ctx.doc
    out: dict[str, Any] = {}
    panel.show_settings(replace(ctx.base, steps=2, previews=False))
    panel.max_side_spin.setValue(96)
    clear_selection(doc)
    strokes = doc.createNode("live strokes", "paintlayer")
    doc.rootNode().addChildNode(strokes, None)
    _fill_layer(doc, strokes, bytes([0, 200, 0, 255]))          # green
    before = _names(doc)
    before_ids = {str(n.uniqueId()) for n in doc.rootNode().childNodes()}
    out["default_strength"] = panel.live_slider.value()
    panel.live_check.setChecked(True)
    pump_until(controller, lambda: controller.live_layer is not None and controller.live_idle,
               "the first live result")
    out["first_names"] = _names(doc)
    first = bytes(controller.live_layer.pixelData(0, 0, doc.width(), doc.height()))
    sent_before = controller.live_jobs_sent
    # Two strokes quickly (under the debounce apart), then wait for the newest's result.
    _fill_layer(doc, strokes, bytes([0, 0, 220, 255]))          # red
    for _ in range(5):
        QCoreApplication.processEvents()
        controller.pump()
        time.sleep(0.02)
    _fill_layer(doc, strokes, bytes([220, 0, 0, 255]))          # blue
    pump_until(controller, lambda: controller.live_idle and controller.live_shows_newest,
               "the live result of the newest state")
    out["jobs_for_two_strokes"] = controller.live_jobs_sent - sent_before
    out["sent_centre"] = _centre_bgra(controller.live_sent_inputs["image"])
    out["shows_newest"] = controller.live_shows_newest
    live = controller.live_layer
    out["live_names"] = [n.name() for n in doc.rootNode().childNodes()
                         if n.name() == LIVE_LAYER]
    out["live_on_top"] = doc.rootNode().childNodes()[-1].name()
    out["live_changed"] = bytes(live.pixelData(0, 0, doc.width(), doc.height())) != first
    out["strokes_untouched"] = bytes(strokes.pixelData(0, 0, 1, 1)) == bytes([220, 0, 0, 255])
    out["message"] = controller.message
    # Apply: a normal layer with the live result's pixels.
    panel.live_apply_button.click()
    added = [n for n in doc.rootNode().childNodes()
             if str(n.uniqueId()) not in before_ids and n.name() != LIVE_LAYER]
    out["applied"] = [[n.name(), n.type(),
                       bytes(n.pixelData(0, 0, doc.width(), doc.height())) ==
                       bytes(live.pixelData(0, 0, doc.width(), doc.height()))] for n in added]
    # Live off: the live layer goes.
    panel.live_check.setChecked(False)
    for _ in range(20):
        QCoreApplication.processEvents()
        controller.pump()
        time.sleep(0.01)
    out["after_off"] = _names(doc)
    out["live_after_off"] = controller.live_layer is not None
    out["message_after_off"] = controller.message
    for node in doc.rootNode().childNodes():
        if str(node.uniqueId()) not in before_ids or node.name() == "live strokes":
            node.remove()
    panel.show_settings(ctx.base)
    return out


# ---------------------------------------------------------------- LoRAs and sampler presets
LORA = "tiny_style"        # the tiny SD1.5 LoRA in the daemon's models folder (the test's)
PRESET = "lcm_4"


def _rows(panel: Any) -> list[list[Any]]:
    return [[row.name, row.weight.value()] for row in panel.lora_list.rows]


def _generate(panel: Any, controller: Any, what: str) -> None:
    from atelier_krita.jobs import Workflow
    panel.choose_workflow(Workflow.GENERATE)
    panel.generate_button.click()
    pump_until(controller, lambda: not controller.busy, what)


def loras_and_preset(ctx: Context) -> dict[str, Any]:
    """LoRA rows and the Sampler preset, used as a painter would against a daemon whose
    models folder holds the tiny LoRA: the rows offer it for the model's family, a
    Generate sends both, the daemon runs both, History keeps them and Recall puts them
    back; eight rows at most; a LoRA of another family is refused by the daemon with the
    row's LoRA named."""
    panel, controller, doc = ctx.panel, ctx.controller, ctx.doc
    lora_list = panel.lora_list
    out: dict[str, Any] = {"presets": list(controller.sampler_presets),
                           "loras_listed": [[m.name, m.family] for m in controller.models
                                            if m.kind == "lora"]}
    clear_selection(doc)
    panel.show_settings(ctx.base)
    panel.max_side_spin.setValue(96)
    panel.more_fold.set_open(True)
    panel.refresh()
    out["model_combo"] = [text for text, _ in combo_items(panel.model_combo)]
    out["preset_combo"] = combo_items(panel.preset_combo)
    out["rows_at_start"] = _rows(panel)
    lora_list.add_button.click()
    row = lora_list.rows[0]
    out["row_choices"] = combo_items(row.combo)
    out["new_row"] = {"name": row.name, "weight": row.weight.value(),
                      "weight_range": [row.weight.minimum(), row.weight.maximum()]}
    _choose(row.combo, LORA)
    row.weight.setValue(0.5)
    out["steps_before"] = {"enabled": panel.steps_spin.isEnabled(),
                           "tooltip": panel.steps_spin.toolTip()}
    _choose(panel.preset_combo, PRESET)
    out["greyed"] = {name: {"enabled": widget.isEnabled(), "tooltip": widget.toolTip()}
                     for name, widget in (("steps", panel.steps_spin),
                                          ("guidance", panel.guidance_spin))}
    out["settings"] = {"loras": [list(pair) for pair in panel.settings().loras],
                       "preset": panel.settings().sampler_preset}
    _generate(panel, controller, "the job with a LoRA and a preset")
    out["message"] = controller.message
    sent, ran = controller.sent_request, controller.last_params
    out["sent"] = {"loras": [[l.name, l.weight] for l in sent.loras],
                   "preset": sent.sampler_preset, "steps": sent.steps}
    out["ran"] = None if ran is None else {
        "loras": [[l.name, l.weight] for l in ran.loras], "preset": ran.sampler_preset,
        "steps": ran.steps, "scheduler": ran.scheduler, "guidance": ran.guidance}
    entry = controller.history[0]
    out["history"] = {"loras": [list(pair) for pair in entry.settings.loras],
                      "preset": entry.settings.sampler_preset, "outcome": entry.outcome}
    panel.refresh()
    out["history_tooltip"] = panel.history_list.item(0).toolTip()

    # Fields cleared, then History's Recall puts the rows and the preset back.
    lora_list.set_rows(())
    _choose(panel.preset_combo, "None")
    out["cleared"] = {"rows": _rows(panel), "steps_enabled": panel.steps_spin.isEnabled(),
                      "steps_tooltip": panel.steps_spin.toolTip()}
    panel.history_list.setCurrentRow(0)
    panel.recall_button.click()
    out["recalled"] = {"rows": _rows(panel), "preset": panel.preset_combo.currentData(),
                       "steps_enabled": panel.steps_spin.isEnabled()}

    # The model's family decides what a row offers; a LoRA of another family stays chosen,
    # marked, and the daemon refuses the job naming it.
    _choose(panel.model_combo, "tiny-sdxl")
    panel.refresh()
    out["sdxl_row"] = combo_items(lora_list.rows[0].combo)
    out["sdxl_row_label"] = lora_list.rows[0].combo.currentText()
    _choose(panel.preset_combo, "None")
    _generate(panel, controller, "the job with a LoRA of another family")
    out["wrong_family"] = {"message": controller.message,
                           "outcome": controller.history[0].outcome}
    _choose(panel.model_combo, "(daemon's current model)")
    panel.refresh()

    # A LoRA the daemon does not list (a recalled job's, since removed) is refused before
    # anything is sent.
    from atelier_krita.jobs import Mode
    sent_before = controller.sent_request
    out["unlisted"] = {"started": controller.start(Mode.GENERATE,
                                                   replace(ctx.base, loras=(("gone", 1.0),))),
                       "message": controller.message,
                       "nothing_sent": controller.sent_request is sent_before}

    # Eight rows at most: the ninth Add says so and adds nothing; a row's button removes it.
    while len(lora_list.rows) < 8:
        lora_list.add_button.click()
    panel.refresh()
    out["eight_rows_min_height"] = panel.minimumSizeHint().height()
    lora_list.add_button.click()
    out["ninth"] = {"rows": len(lora_list.rows), "message": controller.message,
                    "title": lora_list.title.text()}
    lora_list.rows[-1].remove.click()
    out["after_remove"] = len(lora_list.rows)
    out["settings_rows_without_lora"] = [list(pair) for pair in panel.settings().loras]

    lora_list.set_rows(())
    panel.more_fold.set_open(False)
    panel.show_settings(ctx.base)
    return out


SCENARIOS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "live_painting": live_painting,
    "docker_shape": docker_shape,
    "seed_range": seed_range,
    "depth_layers_fresh": depth_layers_fresh,
    "depth_models_by_family": depth_models_by_family,
    "document_closed": document_closed,
    "ui_stalls": ui_stalls,
}

# Every scenario by name, with those for a daemon of their own (atelier_scenarios' ONLY).
ALL: dict[str, Callable[[Context], dict[str, Any]]] = {
    **SCENARIOS, "fresh_panel": fresh_panel, "loras_and_preset": loras_and_preset}

# The game-asset scenarios (issue 16), for a kritarunner pass of their own.
from asset_scenarios import SCENARIOS as ASSET_SCENARIOS  # noqa: E402

ALL.update(ASSET_SCENARIOS)

# Control layers, reference images and regions (issue 14), likewise.
from guide_scenarios import SCENARIOS as GUIDE_SCENARIOS  # noqa: E402

ALL.update(GUIDE_SCENARIOS)
