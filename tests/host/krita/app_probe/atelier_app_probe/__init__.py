"""Test-only Krita plugin: once the main window exists, find the Atelier docker, wait
until it reports its connection, open a document, make its lower layer the active one,
press the docker's Generate button and let the docker's own timer bring the result in,
then undo it with Edit > Undo. Before that it records where the docked docker and its
Generate button are on the screen and saves a screenshot next to the results
($ATELIER_PROBE_OUT.png). Then a batch: generate two results with step previews,
flip between them with the docker's Result box, Apply, and press Edit > Undo (and
Redo) to see what one step takes back. Writes what it saw to $ATELIER_PROBE_OUT and
quits Krita. Used by tests/test_krita_host.py with the full application under Xvfb."""

import hashlib
import json
import os
import time
import traceback

from krita import Extension, Krita
from PyQt5.QtCore import QCoreApplication, QPoint, QTimer
from PyQt5.QtGui import QGuiApplication
from PyQt5.QtWidgets import QAbstractItemView

DOCKER_ID = "atelier_krita_docker"
WAIT_S = 60.0


class AtelierAppProbe(Extension):
    def __init__(self, parent):
        super().__init__(parent)
        self._started = 0.0
        self._out = {}

    def setup(self):
        Krita.instance().notifier().windowCreated.connect(self._window_created)

    def createActions(self, window):
        pass

    def _window_created(self):
        self._started = time.monotonic()
        QTimer.singleShot(0, self._check)

    def _docker(self):
        for docker in Krita.instance().dockers():
            if docker.objectName() == DOCKER_ID or docker.windowTitle() == "Atelier":
                return docker
        return None

    def _check(self):
        try:
            docker = self._docker()
            panel = docker.widget() if docker is not None else None
            status = panel.status_label.text() if panel is not None else ""
            waiting = time.monotonic() - self._started < WAIT_S
            if waiting and not status.startswith(("connected", "Cannot")):
                QTimer.singleShot(100, self._check)
                return
            self._out = {"ok": True, "found": docker is not None,
                         "dockers": [d.objectName() for d in Krita.instance().dockers()],
                         "status": status,
                         "modes": [panel.mode_combo.itemText(i)
                                   for i in range(panel.mode_combo.count())]
                         if panel is not None else []}
            if panel is not None and status.startswith("connected"):
                self._generate(panel)
                return
        except Exception:
            self._out = {"ok": False, "error": traceback.format_exc()}
        self._finish()

    def _generate(self, panel):
        app = Krita.instance()
        document = app.createDocument(64, 48, "probe", "RGBA", "U8", "", 72.0)
        for name in ("bottom", "top"):
            document.rootNode().addChildNode(document.createNode(name, "paintlayer"), None)
        app.activeWindow().addView(document)
        self._document = document
        self._started = time.monotonic()
        self._activate(panel)

    def _activate(self, panel):
        # The new view settles in the event loop; until then setActiveNode does not stick.
        document = self._document
        document.setActiveNode(document.nodeByName("bottom"))
        active = document.activeNode()
        if (active is None or active.name() != "bottom") and \
                time.monotonic() - self._started < WAIT_S:
            QTimer.singleShot(50, lambda: self._activate(panel))
            return
        self._press_generate(panel)

    def _fit(self, panel):
        """Where the docked docker and its Generate button are on the screen."""
        docker = self._docker()
        screen = QGuiApplication.primaryScreen()
        window = Krita.instance().activeWindow().qwindow()
        # Krita filling the screen, as a window manager maximizes it (Xvfb has none).
        window.setGeometry(screen.availableGeometry())
        for _ in range(5):
            QCoreApplication.processEvents()
        button = panel.generate_button
        corner = button.mapToGlobal(QPoint(0, 0))
        self._out["fit"] = {
            "panel": _global_rect(panel), "prompt": _global_rect(panel.prompt_edit),
            "prompt_shown": _shown(panel.prompt_edit), "mode_shown": _shown(panel.mode_combo),
            "model_shown": _shown(panel.model_combo),
            "strength_shown": panel.strength_slider.isVisible(),
            "depth_shown": panel.depth_combo.isVisible(),
            "more_open": panel.more_fold.body.isVisible(),
            "button_text": button.text(),
            "screen": _rect(screen.geometry()), "window": _rect(window.frameGeometry()),
            "docker_visible": docker.isVisible(), "floating": docker.isFloating(),
            "docker": _rect(docker.rect().translated(docker.mapToGlobal(QPoint(0, 0)))),
            "panel_min_height": panel.minimumSizeHint().height(),
            "panel_min_width": panel.minimumSizeHint().width(),
            "button": [corner.x(), corner.y(), button.width(), button.height()],
            "button_shown": button.isVisible() and not button.visibleRegion().isEmpty()}
        screen.grabWindow(0).save(os.environ["ATELIER_PROBE_OUT"] + ".png", "PNG")

    def _press_generate(self, panel):
        document = self._document
        self._fit(panel)
        panel.prompt_edit.setPlainText("probe")
        panel.steps_spin.setValue(2)
        panel.seed_edit.setText("5")
        panel.max_side_spin.setValue(64)
        panel.previews_check.setChecked(False)
        self._out["active"] = document.activeNode().name()
        self._run_job(panel, "", self._first_done)

    def _run_job(self, panel, prefix, then):
        """Press Generate, then ``then(panel)`` once the job has ended (or WAIT_S passed);
        an exception on the way ends the probe with its traceback."""
        panel.generate_button.click()
        self._out[prefix + "started"] = panel.controller.busy
        self._out[prefix + "message_at_start"] = panel.controller.message
        self._started = time.monotonic()
        QTimer.singleShot(100, lambda: self._when_idle(panel, then))

    def _when_idle(self, panel, then):
        # Not from inside the docker's pump either: a Krita call in it runs Qt's events,
        # this timer's too, while the job's end is only half applied.
        waiting = panel.controller.busy or panel.controller.pumping
        if waiting and time.monotonic() - self._started < WAIT_S:
            QTimer.singleShot(100, lambda: self._when_idle(panel, then))
            return
        try:
            then(panel)
        except Exception:
            self._out = {"ok": False, "error": traceback.format_exc()}
            self._finish()

    def _first_done(self, panel):
        self._out["message"] = panel.controller.message
        self._out["layers"] = [n.name() for n in self._document.rootNode().childNodes()]
        self._out["history_rows"] = panel.history_list.count()
        Krita.instance().action("edit_undo").trigger()
        self._document.waitForDone()
        self._out["after_undo"] = [n.name() for n in self._document.rootNode().childNodes()]
        self._start_batch(panel)

    # ------------------------------------------------------------ batch, Apply, Undo
    def _stack(self):
        """Every top-level layer (name and pixels) and the merged canvas, as the painter
        would compare them."""
        document = self._document
        document.refreshProjection()
        document.waitForDone()
        width, height = document.width(), document.height()
        return {"layers": [[n.name(), _sha(n.pixelData(0, 0, width, height))]
                           for n in document.rootNode().childNodes()],
                "canvas": _sha(document.pixelData(0, 0, width, height))}

    def _start_batch(self, panel):
        document = self._document
        width, height = document.width(), document.height()
        bottom = document.nodeByName("bottom")
        bottom.setPixelData(bytes((40, 90, 160, 255)) * (width * height), 0, 0, width, height)
        self._out["before_marker"] = self._stack()
        # One undoable step of the painter's own just before the batch: Edit > Undo after
        # undoing Apply must take exactly this back.
        marker = document.createNode("marker", "paintlayer")
        document.rootNode().addChildNode(marker, None)
        marker.setPixelData(bytes((0, 0, 255, 128)) * (8 * 8), 4, 4, 8, 8)
        document.setActiveNode(bottom)
        self._out["batch_active"] = document.activeNode().name()
        self._out["before_batch"] = self._stack()
        panel.prompt_edit.setPlainText("two moons")
        panel.steps_spin.setValue(2)
        panel.seed_edit.setText("21")
        panel.batch_spin.setValue(2)
        panel.previews_check.setChecked(True)     # the preview layer shows the steps first
        self._run_job(panel, "batch_", self._browse)

    def _browse(self, panel):
        controller = panel.controller
        self._out["batch_message"] = controller.message
        self._out["batch_size"] = controller.batch_size
        self._out["results_fit"] = {
            "window": _rect(Krita.instance().activeWindow().qwindow().frameGeometry()),
            "docker": _global_rect(self._docker()),
            "panel_min_height": panel.minimumSizeHint().height(),
            "panel_min_width": panel.minimumSizeHint().width(),
            "thumbnails": panel.results_list.count(), "apply": _global_rect(panel.apply_button),
            "apply_shown": _shown(panel.apply_button), "results": _global_rect(panel.results_list),
            "history": panel.history_list.count()}
        QCoreApplication.processEvents()
        QGuiApplication.primaryScreen().grabWindow(0).save(
            os.environ["ATELIER_PROBE_OUT"] + ".batch.png", "PNG")
        shown = []
        for value in (2, 1, 2):                   # the painter flips between thumbnails
            panel.pick_result(value)
            shown.append(self._stack())
        self._out["browsed"] = shown
        self._out["before_apply"] = self._stack()
        panel.apply_button.click()
        self._out["apply_message"] = controller.message
        self._out["after_apply"] = self._stack()
        self._edit("edit_undo")
        self._out["after_apply_undo"] = self._stack()
        self._edit("edit_undo")
        self._out["after_second_undo"] = self._stack()
        self._edit("edit_redo")
        self._edit("edit_redo")
        self._out["after_redo"] = self._stack()
        self._start_single(panel)

    # ------------------------------------------------------------ one result, step previews
    def _start_single(self, panel):
        self._out["before_single"] = self._stack()
        self._out["single_active"] = self._document.activeNode().name()
        panel.seed_edit.setText("31")
        panel.batch_spin.setValue(1)
        panel.previews_check.setChecked(True)
        self._run_job(panel, "single_", self._single_done)

    def _single_done(self, panel):
        self._out["single_message"] = panel.controller.message
        self._out["after_single"] = self._stack()
        self._edit("edit_undo")
        self._out["after_single_undo"] = self._stack()
        self._edit("edit_undo")
        self._out["after_single_second_undo"] = self._stack()
        self._start_discard(panel)

    # ------------------------------------------------------------ the undo history itself
    def _undo_steps(self):
        """The document's undo stack as Krita's Undo History docker shows it: its model
        has a row a command (after the "<empty>" start), undone ones included until a new
        step drops them, and its current row is the stack's index: how many steps
        Edit > Undo can take back."""
        QCoreApplication.processEvents()
        for docker in Krita.instance().dockers():
            if docker.objectName() == "History":
                view = docker.widget().findChild(QAbstractItemView)
                if view is not None:
                    model = view.model()
                    return {"rows": [model.index(row, 0).data()
                                     for row in range(model.rowCount())],
                            "index": view.selectionModel().currentIndex().row()}
        return None

    def _start_discard(self, panel):
        """A batch with step previews thrown away with Discard leaves the undo history as
        it was; so does a job cancelled (with the Cancel shortcut's action) while its step
        preview shows."""
        self._out["undo_before_discard"] = self._undo_steps()
        self._out["stack_before_discard"] = self._stack()
        panel.seed_edit.setText("41")
        panel.batch_spin.setValue(2)
        panel.previews_check.setChecked(True)
        self._run_job(panel, "discard_", self._discard)

    def _discard(self, panel):
        self._out["undo_with_batch"] = self._undo_steps()
        panel.discard_button.click()
        self._document.waitForDone()
        self._out["undo_after_discard"] = self._undo_steps()
        self._out["stack_after_discard"] = self._stack()
        self._out["discard_message"] = panel.controller.message
        # Cancel while a step preview shows: slow steps so that one arrives first.
        panel.batch_spin.setValue(1)
        panel.steps_spin.setValue(40)
        self._out["undo_before_cancel"] = self._undo_steps()
        self._out["stack_before_cancel"] = self._stack()
        panel.generate_button.click()
        self._started = time.monotonic()
        QTimer.singleShot(50, lambda: self._cancel_when_previewed(panel))

    def _cancel_when_previewed(self, panel):
        controller = panel.controller
        layers = [n.name() for n in self._document.rootNode().childNodes()]
        previewed = any(name.startswith("[Atelier preview]") for name in layers)
        if controller.busy and not previewed and time.monotonic() - self._started < WAIT_S:
            QTimer.singleShot(20, lambda: self._cancel_when_previewed(panel))
            return
        self._out["cancel_previewed"] = previewed
        self._out["undo_with_preview"] = self._undo_steps()
        Krita.instance().action("atelier_cancel").trigger()      # its shortcut's action
        self._out["cancel_message"] = controller.message
        # This timer may have fired inside Krita adding the preview layer (which runs Qt's
        # events until done): look once that has returned, as the painter would.
        QTimer.singleShot(200, lambda: self._after_cancel(panel))

    def _after_cancel(self, panel):
        self._document.waitForDone()
        self._out["undo_after_cancel"] = self._undo_steps()
        self._out["stack_after_cancel"] = self._stack()
        self._start_queue(panel)

    # ------------------------------------------------------------ queue and shortcuts
    def _start_queue(self, panel):
        """Generate twice through the shortcut's action: the second waits in the plugin
        and runs when the first ends; each result is one undo step."""
        controller = panel.controller
        app = Krita.instance()
        ours = {"atelier_generate", "atelier_cancel", "atelier_apply"}
        self._out["shortcuts"] = {name: app.action(name).shortcut().toString()
                                  if app.action(name) is not None else None for name in ours}
        self._out["taken_shortcuts"] = sorted({
            sequence.toString() for action in app.actions()
            if action.objectName() not in ours for sequence in action.shortcuts()
            if not sequence.isEmpty()})
        panel.steps_spin.setValue(2)
        panel.previews_check.setChecked(False)
        self._out["queue_before"] = self._stack()
        self._out["undo_before_queue"] = self._undo_steps()
        panel.seed_edit.setText("51")
        app.action("atelier_generate").trigger()
        panel.seed_edit.setText("52")
        app.action("atelier_generate").trigger()
        self._out["queue_busy"] = controller.busy
        self._out["queued"] = controller.queued
        self._out["queue_label"] = panel.queue_label.text()
        self._out["queue_button"] = panel.generate_button.text()
        self._out["queue_message"] = controller.message
        self._started = time.monotonic()
        QTimer.singleShot(100, lambda: self._when_queue_empty(panel))

    def _when_queue_empty(self, panel):
        controller = panel.controller
        if (controller.busy or controller.queued) and time.monotonic() - self._started < WAIT_S:
            QTimer.singleShot(100, lambda: self._when_queue_empty(panel))
            return
        self._out["queue_after"] = self._stack()
        self._out["queue_message_after"] = controller.message
        self._out["undo_after_queue"] = self._undo_steps()
        self._out["history_after_queue"] = [controller.history[i].seeds
                                            for i in range(min(3, len(controller.history)))]
        self._history_preview(panel)

    def _history_preview(self, panel):
        """Click the thumbnail of the earlier batch in History: its results show in a
        preview layer again; Discard leaves the undo history as it was. Then a screenshot
        of the docker made taller (as a painter drags it), for the documentation."""
        controller = panel.controller
        row = next(i for i in range(len(controller.history))
                   if controller.history[i].seeds == (41, 42))
        self._out["history_icons"] = [not panel.history_list.item(i).icon().isNull()
                                      for i in range(panel.history_list.count())]
        undo_before = self._undo_steps()
        stack_before = self._stack()
        item = panel.history_list.item(row)
        panel.history_list.setCurrentItem(item)
        panel.history_list.itemClicked.emit(item)
        self._document.waitForDone()
        self._out["history_click"] = {
            "batch_size": controller.batch_size, "message": controller.message,
            "layers": [n.name() for n in self._document.rootNode().childNodes()],
            "thumbnails": panel.results_list.count()}
        window = Krita.instance().activeWindow().qwindow()
        docker = self._docker()            # floated and made taller, as a painter may
        docker.setFloating(True)
        docker.setGeometry(940, 60, 400, 640)
        panel.prompt_edit.setPlainText("two moons over a quiet lake, ink and watercolour")
        for _ in range(5):
            QCoreApplication.processEvents()
        QGuiApplication.primaryScreen().grabWindow(0).save(
            os.environ["ATELIER_PROBE_OUT"] + ".tall.png", "PNG")
        self._out["tall_docker"] = _global_rect(self._docker())
        self._out["tall_window"] = _rect(window.frameGeometry())
        self._more_settings(panel)
        panel.discard_button.click()
        self._document.waitForDone()
        docker.setFloating(False)
        self._out["history_discard"] = {"undo_before": undo_before,
                                        "undo_after": self._undo_steps(),
                                        "same_stack": self._stack() == stack_before}
        self._upscale_mode(panel)
        self._guides(panel)
        self._finish()

    def _upscale_mode(self, panel):
        """The docked docker in Upscale mode, its fields scrolled into view: a screenshot
        for the documentation, and whether everything still fits the screen."""
        from atelier_krita.jobs import Workflow
        panel.choose_workflow(Workflow.UPSCALE)
        for _ in range(5):
            QCoreApplication.processEvents()
        panel.form_scroll.ensureWidgetVisible(panel.refine_spin, 0, 4)
        for _ in range(5):
            QCoreApplication.processEvents()
        QGuiApplication.primaryScreen().grabWindow(0).save(
            os.environ["ATELIER_PROBE_OUT"] + ".upscale.png", "PNG")
        window = Krita.instance().activeWindow().qwindow()
        self._out["upscale_mode"] = {
            "docker": _global_rect(self._docker()),
            "window": _rect(window.frameGeometry()),
            "button_text": panel.generate_button.text(),
            "button": _global_rect(panel.generate_button),
            "fields_shown": [_shown(w) for w in (panel.upscale_size_combo,
                                                 panel.upscaler_combo, panel.refine_spin)],
            "panel_min_height": panel.minimumSizeHint().height()}
        panel.choose_workflow(Workflow.GENERATE)

    def _guides(self, panel):
        """The docked docker with its Control layers and Regions sections open, a row in
        each added with their Add buttons (the active layer), and a reference: a
        screenshot for the documentation, what the rows took and whether the docker still
        fits. The rows are removed after."""
        active = self._document.activeNode()
        for fold in panel.guide_folds:
            fold.set_open(True)
        panel.control_list.add.click()
        panel.reference_list.add_layer_button.click()
        panel.region_list.add.click()
        panel.region_list.rows[0].prompt.setText("a stormy sky")
        for _ in range(5):
            QCoreApplication.processEvents()
        panel.form_scroll.ensureWidgetVisible(panel.control_list.rows[0], 0, 0)
        for _ in range(5):
            QCoreApplication.processEvents()
        QGuiApplication.primaryScreen().grabWindow(0).save(
            os.environ["ATELIER_PROBE_OUT"] + ".guides.png", "PNG")
        control = panel.control_list.rows[0]
        window = Krita.instance().activeWindow().qwindow()
        self._out["guides"] = {
            "active": active.name() if active is not None else None,
            "rows": [row.value().name for row in (control, panel.reference_list.rows[0],
                                                  panel.region_list.rows[0])],
            "kinds": [control.kind.itemData(i) for i in range(control.kind.count())],
            "docker": _global_rect(self._docker()),
            "window": _rect(window.frameGeometry()),
            "button": _global_rect(panel.generate_button),
            "row_shown": _shown(control.from_image_button),
            "row_width": control.width(), "scroll_width": panel.form_scroll.viewport().width(),
            "saved": bytes(self._document.annotation("atelier")).decode(),
            "panel_min_height": panel.minimumSizeHint().height()}
        docker = self._docker()            # floated and taller: all three sections in view
        docker.setFloating(True)
        docker.setGeometry(940, 40, 400, 700)
        for _ in range(5):
            QCoreApplication.processEvents()
        panel.form_scroll.ensureWidgetVisible(panel.region_list.rows[0], 0, 0)
        for _ in range(5):
            QCoreApplication.processEvents()
        QGuiApplication.primaryScreen().grabWindow(0).save(
            os.environ["ATELIER_PROBE_OUT"] + ".guides_tall.png", "PNG")
        self._out["guides"]["tall_docker"] = _global_rect(docker)
        docker.setFloating(False)
        from atelier_krita.guides import Guides
        panel.show_guides(Guides())
        for fold in panel.guide_folds:
            fold.set_open(False)

    def _more_settings(self, panel):
        """The floated docker with More settings open at its Sampler preset and a LoRA
        row, a preset chosen: a screenshot for the documentation, and whether the fields
        the preset decides are greyed out in the running application. Put back after."""
        panel.more_fold.set_open(True)
        panel.lora_list.add_row()
        panel.preset_combo.setCurrentIndex(panel.preset_combo.findData("lcm_4"))
        for _ in range(5):
            QCoreApplication.processEvents()
        panel.form_scroll.ensureWidgetVisible(panel.preset_combo, 0, 0)
        panel.form_scroll.ensureWidgetVisible(panel.lora_list.rows[0], 0, 8)
        for _ in range(5):
            QCoreApplication.processEvents()
        QGuiApplication.primaryScreen().grabWindow(0).save(
            os.environ["ATELIER_PROBE_OUT"] + ".more.png", "PNG")
        self._out["more_docker"] = _global_rect(self._docker())
        self._out["more_settings"] = {
            "preset": panel.preset_combo.currentText(),
            "steps_enabled": panel.steps_spin.isEnabled(),
            "guidance_enabled": panel.guidance_spin.isEnabled(),
            "lora_rows": len(panel.lora_list.rows),
            "lora_row_shown": _shown(panel.lora_list.rows[0])}
        panel.lora_list.set_rows(())
        panel.preset_combo.setCurrentIndex(0)
        panel.more_fold.set_open(False)

    def _edit(self, action):
        """Edit > Undo or Redo, as the painter presses it, and let Krita settle."""
        Krita.instance().action(action).trigger()
        self._document.waitForDone()
        QCoreApplication.processEvents()
        self._document.waitForDone()

    def _finish(self):
        with open(os.environ["ATELIER_PROBE_OUT"], "w") as handle:
            json.dump(self._out, handle)
        for document in Krita.instance().documents():
            document.setModified(False)
        Krita.instance().action("file_quit").trigger()


def _global_rect(widget):
    corner = widget.mapToGlobal(QPoint(0, 0))
    return [corner.x(), corner.y(), widget.width(), widget.height()]


def _shown(widget):
    return widget.isVisible() and not widget.visibleRegion().isEmpty()


def _rect(rect):
    return [rect.x(), rect.y(), rect.width(), rect.height()]


def _sha(data):
    return hashlib.sha256(bytes(data)).hexdigest()


Krita.instance().addExtension(AtelierAppProbe(Krita.instance()))
