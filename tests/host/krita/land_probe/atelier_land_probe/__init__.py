"""Test-only Krita plugin for tests/host/krita/measure_landing.py: in the full application
(under Xvfb), open a $ATELIER_LAND_SIDE square document with a patterned layer in a view,
press the Atelier docker's Upscale (2x, Lanczos) and time Qt's main loop while the result
lands: a 10 ms heartbeat timer records every gap between its ticks (the longest is the
UI freeze a painter would feel), each gap tagged with the docker's message at the time,
and every call of the plugin's KritaDocument is timed with perf_counter. Writes what it saw
to $ATELIER_LAND_OUT and quits Krita."""

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback

from krita import Extension, Krita
from PyQt5.QtCore import QByteArray, Qt, QTimer

DOCKER_ID = "atelier_krita_docker"
WAIT_S = 600.0
GAP_NOTED_S = 0.05       # gaps in the timeline at least this long are listed


class Heartbeat:
    """A 10 ms timer on Qt's thread: the gaps between its ticks are how long the main
    loop was held."""

    def __init__(self, tag):
        self._tag = tag
        self.gaps = []
        self.longest = 0.0
        self._timer = QTimer()
        self._timer.setTimerType(Qt.PreciseTimer)
        self._timer.setInterval(10)
        self._timer.timeout.connect(self._tick)
        self._began = self._last = time.perf_counter()
        self._timer.start()

    def _tick(self):
        now = time.perf_counter()
        gap = now - self._last
        self._last = now
        self.longest = max(self.longest, gap)
        if gap >= GAP_NOTED_S:
            self.gaps.append([round(now - gap - self._began, 3), round(gap, 3), self._tag()])

    def stop(self):
        self._tick()
        self._timer.stop()

    def held_for(self):
        return time.perf_counter() - self._last


class StallSampler(threading.Thread):
    """While the heartbeat has not ticked for over 100 ms, every 50 ms: which Python code
    each thread is in (innermost three frames), to tell a stall inside a Krita call made
    by the plugin from one where another thread held Python's lock."""

    def __init__(self, beat):
        super().__init__(daemon=True)
        self._beat = beat
        self.samples = []
        self.running = True

    def run(self):
        main = threading.main_thread().ident
        while self.running:
            time.sleep(0.05)
            held = self._beat.held_for()
            if held < 0.1 or len(self.samples) > 400:
                continue
            stacks = {}
            for ident, frame in sys._current_frames().items():
                if ident == self.ident:
                    continue
                names = []
                while frame is not None and len(names) < 3:
                    code = frame.f_code
                    names.append(f"{os.path.basename(code.co_filename)}:{code.co_name}")
                    frame = frame.f_back
                stacks["main" if ident == main else str(ident)[-4:]] = " < ".join(names)
            self.samples.append([round(held, 2), stacks])


def _timed_class(calls):
    """KritaDocument's methods timed (longest and total seconds, count): instrumentation
    of the measured plugin, not a change of what it does."""
    from atelier_krita import host

    def wrap(name, method):
        @functools.wraps(method)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                took = time.perf_counter() - started
                entry = calls.setdefault(name, [0.0, 0.0, 0])
                entry[0] = max(entry[0], took)
                entry[1] += took
                entry[2] += 1
        return timed

    for name, value in list(vars(host.KritaDocument).items()):
        if callable(value) and not name.startswith("__"):
            setattr(host.KritaDocument, name, wrap(name, value))


class AtelierLandProbe(Extension):
    def __init__(self, parent):
        super().__init__(parent)
        self._out = {"ok": False}
        self._started = 0.0

    def setup(self):
        Krita.instance().notifier().windowCreated.connect(self._window_created)

    def createActions(self, window):
        pass

    def _window_created(self):
        self._started = time.monotonic()
        QTimer.singleShot(0, self._guard(self._wait_connected))

    def _guard(self, step):
        def run():
            try:
                step()
            except Exception:
                self._out = {"ok": False, "error": traceback.format_exc()}
                self._finish()
        return run

    def _panel(self):
        for docker in Krita.instance().dockers():
            if docker.objectName() == DOCKER_ID:
                return docker.widget()
        return None

    def _wait_connected(self):
        panel = self._panel()
        status = panel.status_label.text() if panel is not None else ""
        if not status.startswith(("connected", "Cannot")):
            if time.monotonic() - self._started > 60:
                raise RuntimeError(f"the docker did not connect: '{status}'")
            QTimer.singleShot(100, self._guard(self._wait_connected))
            return
        if not status.startswith("connected"):
            raise RuntimeError(f"the docker did not connect: '{status}'")
        self._open(panel)

    def _open(self, panel):
        app = Krita.instance()
        app.setBatchmode(True)
        side = int(os.environ["ATELIER_LAND_SIDE"])
        started = time.perf_counter()
        doc = app.createDocument(side, side, "landing", "RGBA", "U8", "", 72.0)
        layer = doc.createNode("pattern", "paintlayer")
        rows = 64
        for top in range(0, side, rows):
            band = bytes((x * 7 + top // rows * 13 + c * 50) % 256 if c < 3 else 255
                         for x in range(side) for c in range(4)) * rows
            layer.setPixelData(QByteArray(band), 0, top, side, rows)
        doc.rootNode().addChildNode(layer, None)
        app.activeWindow().addView(doc)
        doc.waitForDone()
        self._out["setup_s"] = round(time.perf_counter() - started, 2)
        self._doc = doc
        QTimer.singleShot(2000, self._guard(lambda: self._press(panel)))

    def _press(self, panel):
        from atelier_krita.jobs import Workflow
        calls = {}
        _timed_class(calls)
        panel.choose_workflow(Workflow.UPSCALE)
        combo = panel.upscale_size_combo
        combo.setCurrentIndex(combo.findText("2x"))
        panel.refine_spin.setValue(0)
        controller = panel.controller
        idle = Heartbeat(lambda: "idle")
        QTimer.singleShot(1000, self._guard(lambda: self._go(panel, controller, idle, calls)))

    def _go(self, panel, controller, idle, calls):
        idle.stop()
        self._out["idle_longest_s"] = round(idle.longest, 3)
        perf_out = os.environ.get("ATELIER_LAND_PERF")
        # opt-in: a profile of Qt's thread (the main thread's id is the process id)
        self._perf = subprocess.Popen(
            ["perf", "record", "-F", "250", "-g", "-t", str(threading.get_native_id()),
             "-o", perf_out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) \
            if perf_out else None
        # the docker's message and progress (a landing counts its steps) at each gap
        beat = Heartbeat(lambda: f"{controller.message[:48]} {list(controller.progress)}")
        self._sampler = StallSampler(beat)
        self._sampler.start()
        began = time.perf_counter()
        started = panel.generate()
        self._out["started"] = started
        self._out["click_s"] = round(time.perf_counter() - began, 3)
        self._job = (panel, controller, beat, calls, began)
        QTimer.singleShot(100, self._guard(self._when_idle))

    def _when_idle(self):
        panel, controller, beat, calls, began = self._job
        if controller.busy and time.perf_counter() - began < WAIT_S:
            QTimer.singleShot(100, self._guard(self._when_idle))
            return
        beat.stop()
        self._sampler.running = False
        if self._perf is not None:
            self._perf.send_signal(signal.SIGINT)
            self._perf.wait(60)
        doc = self._doc
        self._out.update(
            ok=True, message=controller.message, job_s=round(time.perf_counter() - began, 2),
            longest_gap_s=round(beat.longest, 3), gaps=beat.gaps,
            calls={name: [round(v[0], 3), round(v[1], 3), v[2]] for name, v in calls.items()},
            stall_samples=self._sampler.samples,
            extent=[doc.width(), doc.height()],
            layers=[node.name() for node in doc.rootNode().childNodes()],
            undo=Krita.instance().action("edit_undo").text())
        self._finish()

    def _finish(self):
        with open(os.environ["ATELIER_LAND_OUT"], "w") as handle:
            json.dump(self._out, handle)
        for doc in Krita.instance().documents():
            doc.setModified(False)
        QTimer.singleShot(0, Krita.instance().action("file_quit").trigger)


Krita.instance().addExtension(AtelierLandProbe(Krita.instance()))
