"""Test-only Krita plugin: once the main window exists, find the Atelier docker, wait
until it reports its connection, open a document, make its lower layer the active one,
press the docker's Generate button and let the docker's own timer bring the result in;
then write what it saw to $ATELIER_PROBE_OUT and quit Krita.
Used by tests/test_krita_host.py with the full application under Xvfb."""

import json
import os
import time
import traceback

from krita import Extension, Krita
from PyQt5.QtCore import QTimer

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
                         "modes": sorted(b.text() for b in panel.mode_buttons.values())
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

    def _press_generate(self, panel):
        document = self._document
        panel.prompt_edit.setPlainText("probe")
        panel.steps_spin.setValue(2)
        panel.seed_spin.setValue(5)
        panel.max_side_spin.setValue(64)
        panel.previews_check.setChecked(False)
        self._out["active"] = document.activeNode().name()
        button = next(b for b in panel.mode_buttons.values() if b.text() == "Generate")
        button.click()
        self._out["started"] = panel.controller.busy
        self._out["message_at_start"] = panel.controller.message
        self._started = time.monotonic()
        QTimer.singleShot(100, lambda: self._wait_for_result(panel))

    def _wait_for_result(self, panel):
        try:
            if panel.controller.busy and time.monotonic() - self._started < WAIT_S:
                QTimer.singleShot(100, lambda: self._wait_for_result(panel))
                return
            self._out["message"] = panel.controller.message
            self._out["layers"] = [n.name() for n in self._document.rootNode().childNodes()]
            self._out["history_rows"] = panel.history_list.count()
            Krita.instance().action("edit_undo").trigger()
            self._document.waitForDone()
            self._out["after_undo"] = [n.name() for n in self._document.rootNode().childNodes()]
        except Exception:
            self._out = {"ok": False, "error": traceback.format_exc()}
        self._finish()

    def _finish(self):
        with open(os.environ["ATELIER_PROBE_OUT"], "w") as handle:
            json.dump(self._out, handle)
        for document in Krita.instance().documents():
            document.setModified(False)
        Krita.instance().action("file_quit").trigger()


Krita.instance().addExtension(AtelierAppProbe(Krita.instance()))
