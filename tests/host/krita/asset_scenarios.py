"""Scenarios for the docker's game-asset modes (issue 16: Upscale, Make texture set), run
inside Krita by ``atelier_scenarios`` (named in its optional list, so they get a
kritarunner pass of their own). Each returns what it saw; tests/test_krita_host.py judges.

The texture set and the canvas upscale go through the docker's fields and its Generate
button on the shared test document (the upscale scales that document, so it runs last);
the others use documents of their own.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

from krita import Krita
from PyQt5.QtCore import QCoreApplication
from PyQt5.QtGui import QImage

from atelier_scenarios import WAIT_S, clear_selection, pump_until, select_rect, sha
from docker_scenarios import Context, _choose, _timed_job, combo_items, timed_document_class

# An upscale of this canvas to twice its size is timed; ATELIER_UPSCALE_STALL_SIDE=4096
# measures the 8192x8192 case by hand (minutes on this machine, so not in every run).
STALL_SIDE = int(os.environ.get("ATELIER_UPSCALE_STALL_SIDE", "2048"))
# The side of the canvas that lands an 8192x8192 upscale (2x); smaller for a quick try.
LANDING_SIDE = int(os.environ.get("ATELIER_LANDING_SIDE", "4096"))


def _nodes(doc: Any) -> list[dict[str, Any]]:
    """Every node (groups opened) with what the scenarios judge."""
    doc.waitForDone()
    out: list[dict[str, Any]] = []

    def walk(parent: Any, depth: int) -> None:
        for node in parent.childNodes():
            if node.type() == "selectionmask":
                continue
            rect = node.bounds()
            out.append({"name": node.name(), "type": node.type(), "depth": depth,
                        "visible": node.visible(),
                        "bounds": [rect.x(), rect.y(), rect.width(), rect.height()],
                        "sha": sha(node.pixelData(0, 0, doc.width(), doc.height()))})
            walk(node, depth + 1)

    walk(doc.rootNode(), 0)
    return out


def _document(width: int, height: int, name: str) -> Any:
    """A document with a patterned layer 'texture' over the Background."""
    doc = Krita.instance().createDocument(width, height, name, "RGBA", "U8", "", 72.0)
    layer = doc.createNode("texture", "paintlayer")
    doc.rootNode().addChildNode(layer, None)
    row = bytes((x * 7 + c * 50) % 256 if c < 3 else 255 for x in range(width) for c in range(4))
    layer.setPixelData(row * height, 0, 0, width, height)
    doc.refreshProjection()
    doc.waitForDone()
    return doc


def _controller(ctx: Context, doc: Any, documents: Any = None) -> Any:
    from atelier_krita.controller import Controller
    from atelier_krita.host import KritaDocument
    make = documents or KritaDocument
    controller = Controller(lambda: make(doc), connection=ctx.controller.connection)
    controller.connect()
    pump_until(controller, lambda: controller.connected and bool(controller.models),
               "the connection and the model list")
    return controller


def _run(controller: Any, start: Callable[[], bool]) -> dict[str, Any]:
    """Start a job and pump until it ends; the largest progress total seen."""
    started = start()
    totals = [0]
    deadline = time.monotonic() + WAIT_S
    while started and controller.busy and time.monotonic() < deadline:
        QCoreApplication.processEvents()
        controller.pump()
        totals.append(controller.progress[1])
        time.sleep(0.01)
    return {"started": started, "message": controller.message, "total": max(totals),
            "busy": controller.busy}


def _sent(controller: Any) -> dict[str, Any]:
    request = controller.sent_request
    image = controller.sent_inputs.get("image")
    return {"kind": request.kind, "width": request.width, "height": request.height,
            "tiling": request.tiling, "output_format": request.output_format,
            "upscale": None if request.upscale is None else
            {"scale": request.upscale.scale, "upscaler": request.upscale.upscaler,
             "refine_strength": request.upscale.refine_strength},
            "texture": None if request.texture is None else
            {"maps": list(request.texture.maps), "source": request.texture.source},
            "upload": None if image is None else [image.width, image.height]}


# ---------------------------------------------------------------- the docker's fields
def asset_fields(ctx: Context) -> dict[str, Any]:
    """Which rows each mode shows, the Upscale size and Upscaler entries, the button."""
    from atelier_krita.jobs import Workflow
    panel, doc = ctx.panel, ctx.doc
    panel.refresh()
    clear_selection(doc)
    panel._check_selection()
    out: dict[str, Any] = {"modes": [panel.mode_combo.itemText(i)
                                     for i in range(panel.mode_combo.count())]}
    for workflow in (Workflow.UPSCALE, Workflow.TEXTURE, Workflow.GENERATE):
        panel.choose_workflow(workflow)
        out[workflow.value] = {
            "button": panel.generate_button.text(),
            "upscale_rows": not panel.upscale_size_combo.isHidden(),
            "texture_rows": not panel.texture_source_combo.isHidden(),
            "strength_row": not panel.strength_row.isHidden()}
    out["sizes"] = [text for text, _ in combo_items(panel.upscale_size_combo)]
    out["upscalers"] = combo_items(panel.upscaler_combo)
    out["sources"] = [text for text, _ in combo_items(panel.texture_source_combo)]
    out["min_height"] = panel.minimumSizeHint().height()
    return out


# ---------------------------------------------------------------- texture sets
def texture_set(ctx: Context) -> dict[str, Any]:
    """Make texture set through the docker on the shared document: a group of map
    layers on top, the user's layers untouched."""
    from atelier_krita.jobs import Workflow
    panel, controller, doc = ctx.panel, ctx.controller, ctx.doc
    clear_selection(doc)
    before = _nodes(doc)
    panel.show_settings(ctx.base)
    panel.choose_workflow(Workflow.TEXTURE)
    _choose(panel.texture_source_combo, "image")
    _choose(panel.tiling_combo, "both")
    ran = _run(controller, panel.generate)
    after = _nodes(doc)
    # what Krita shows: the shown map on top (opaque), composited without a refresh
    top = doc.rootNode().childNodes()[-1].childNodes()[-1]
    shown = sha(doc.pixelData(0, 0, doc.width(), doc.height())) == \
        sha(top.pixelData(0, 0, doc.width(), doc.height()))
    return {**ran, "sent": _sent(controller), "before": before, "after": after,
            "extent": [doc.width(), doc.height()], "shown_is_top_map": shown,
            "top_map": top.name()}


def texture_marigold_missing(ctx: Context) -> dict[str, Any]:
    """Maps from Marigold on a daemon without its weights: the daemon's model_not_found
    in the message line, no layer added."""
    from atelier_krita.jobs import Workflow
    panel, controller, doc = ctx.panel, ctx.controller, ctx.doc
    before = _nodes(doc)
    panel.choose_workflow(Workflow.TEXTURE)
    _choose(panel.texture_source_combo, "marigold")
    ran = _run(controller, panel.generate)
    _choose(panel.texture_source_combo, "auto")
    return {**ran, "unchanged": _nodes(doc) == before}


# ---------------------------------------------------------------- upscale
def upscale_selection(ctx: Context) -> dict[str, Any]:
    """4x of a selection: the image scaled by 4, the new layer over the selection's place."""
    from atelier_krita.jobs import JobSettings, Mode
    doc = _document(100, 60, "upscale-selection")
    controller = _controller(ctx, doc)
    try:
        select_rect(doc, 20, 10, 40, 24)
        before = _nodes(doc)
        settings = JobSettings(upscale_factor=4.0, tiling="none", seed=5)
        ran = _run(controller, lambda: controller.start(Mode.UPSCALE, settings))
        return {**ran, "sent": _sent(controller), "before": before, "after": _nodes(doc),
                "extent": [doc.width(), doc.height()]}
    finally:
        controller.close()
        doc.close()


def upscale_drops_queue(ctx: Context) -> dict[str, Any]:
    """A Refine queued behind an upscale of its image is dropped when the image is scaled
    (it was planned in the old pixels); the upscale still lands."""
    from atelier_krita.jobs import JobSettings, Mode
    doc = _document(64, 48, "upscale-queue")
    controller = _controller(ctx, doc)
    try:
        before = len(_nodes(doc))
        ran = _run(controller, lambda: controller.start(Mode.UPSCALE, JobSettings())
                   and controller.start(Mode.REFINE, JobSettings(steps=2, strength=0.5)))
        return {**ran, "queued": controller.queued, "new": [n["name"] for n in _nodes(doc)
                                                            ][before:],
                "extent": [doc.width(), doc.height()]}
    finally:
        controller.close()
        doc.close()


def upscale_refusals(ctx: Context) -> dict[str, Any]:
    """What the docker refuses before sending: a result over the daemon's upscale limit,
    an upscaler the daemon does not list."""
    from atelier_krita.jobs import JobSettings, Mode
    doc = _document(2100, 64, "upscale-refused")
    controller = _controller(ctx, doc)
    out: dict[str, Any] = {}
    try:
        for name, settings in (("too_big", JobSettings(upscale_factor=4.0)),
                               ("unlisted", JobSettings(upscaler="4x-Nowhere"))):
            ok = controller.start(Mode.UPSCALE, settings)
            out[name] = {"started": ok, "message": controller.message,
                         "extent": [doc.width(), doc.height()]}
        out["layers"] = [n["name"] for n in _nodes(doc)]
    finally:
        controller.close()
        doc.close()
    return out


def upscale_cancel(ctx: Context) -> dict[str, Any]:
    """Cancel during a refining upscale: no stray layer, the document's size unchanged."""
    from atelier_krita.jobs import JobSettings, Mode
    doc = _document(128, 128, "upscale-cancel")
    controller = _controller(ctx, doc)
    try:
        before = _nodes(doc)
        settings = JobSettings(prompt="moss", upscale_factor=4.0, refine_strength=1.0,
                               steps=30, seed=2)
        started = controller.start(Mode.UPSCALE, settings)
        pump_until(controller, lambda: controller.progress[0] >= 1, "the first step")
        total = controller.progress[1]
        controller.cancel()
        for _ in range(100):      # whatever the daemon still sends must add nothing
            QCoreApplication.processEvents()
            controller.pump()
            time.sleep(0.01)
        return {"started": started, "total": total, "message": controller.message,
                "unchanged": _nodes(doc) == before, "extent": [doc.width(), doc.height()],
                "sent": _sent(controller)}
    finally:
        controller.close()
        doc.close()


def upscale_cancel_landing(ctx: Context) -> dict[str, Any]:
    """Cancel while the result is being written (before the image is scaled): the
    document as it was, and the next job runs."""
    from atelier_krita.jobs import JobSettings, Mode
    doc = _document(256, 256, "upscale-cancel-landing")
    controller = _controller(ctx, doc)
    try:
        before = _nodes(doc)
        settings = JobSettings(upscale_factor=2.0, tiling="none", seed=4)
        started = controller.start(Mode.UPSCALE, settings)
        pump_until(controller, lambda: not controller.busy or
                   controller.message.startswith("Upscale: placing"), "the landing")
        landing = controller.message
        controller.cancel()
        for _ in range(50):      # whatever the daemon still sends must add nothing
            QCoreApplication.processEvents()
            controller.pump()
            time.sleep(0.01)
        out = {"started": started, "landing": landing, "message": controller.message,
               "unchanged": _nodes(doc) == before, "extent": [doc.width(), doc.height()]}
        again = _run(controller, lambda: controller.start(Mode.UPSCALE, settings))
        out.update(again=again["message"], extent_after=[doc.width(), doc.height()])
        return out
    finally:
        controller.close()
        doc.close()


def upscale_stalls(ctx: Context) -> dict[str, Any]:
    """A STALL_SIDE canvas (2048) upscaled 2x (Lanczos) with the Qt-thread time of every call
    measured, Krita's own calls (reading the canvas, scaling the image, adding the
    layer) counted apart."""
    from atelier_krita.jobs import JobSettings, Mode
    base = timed_document_class()

    calls: dict[str, float] = {}

    class Timed(base):  # type: ignore[misc, valid-type]
        # Krita's calls timed one by one (past TimedDocument's own, so counted once)
        def _each(self, name: str, call: Callable[..., Any], *args: Any) -> Any:
            started = time.perf_counter()
            try:
                return self._timed(call, *args)
            finally:
                calls[name] = max(calls.get(name, 0.0), time.perf_counter() - started)

        def scale_image(self, *args: Any) -> None:
            self._each("scale_image_s", super(base, self).scale_image, *args)

        def add_layer(self, *args: Any) -> Any:
            return self._each("add_layer_s", super(base, self).add_layer, *args)

        # the landing's calls (landing.py): the new layer's bands, then adding it
        def write_band(self, *args: Any) -> None:
            self._each("write_band_s", super(base, self).write_band, *args)

        def place_layer(self, *args: Any) -> Any:
            return self._each("place_layer_s", super(base, self).place_layer, *args)

        def read_canvas(self, *args: Any) -> bytes:
            return self._each("read_canvas_s", super(base, self).read_canvas, *args)

    doc = _document(STALL_SIDE, STALL_SIDE, "upscale-stalls")
    controller = _controller(ctx, doc, Timed)
    parts: dict[str, float] = {}

    def timed_part(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args)
            finally:
                parts[name] = max(parts.get(name, 0.0), time.perf_counter() - started)
        return call

    # which part of a pump holds Qt's thread longest (the instance's own attributes)
    controller._drain_events = timed_part("events_s", controller._drain_events)
    controller._collect_work = timed_part("work_s", controller._collect_work)
    controller._submit = timed_part("submit_s", controller._submit)
    slow: list[list[Any]] = []
    pump = controller.pump
    begun = time.perf_counter()

    def watched_pump(*args: Any) -> Any:
        krita = Timed.krita_seconds
        started = time.perf_counter()
        try:
            return pump(*args)
        finally:
            took = time.perf_counter() - started
            if took - (Timed.krita_seconds - krita) > 0.03:
                slow.append([round(started - begun, 2), round(took, 3),
                             round(Timed.krita_seconds - krita, 3), controller.message[:40],
                             list(controller.progress)])
    controller.pump = watched_pump
    try:
        started = time.perf_counter()
        out = _timed_job(controller, Timed, Mode.UPSCALE, JobSettings(upscale_factor=2.0))
        out["job_s"] = round(time.perf_counter() - started, 2)
        out["krita_calls"] = {name: round(seconds, 3) for name, seconds in calls.items()}
        out["pump_parts"] = {name: round(seconds, 3) for name, seconds in parts.items()}
        out["slow_pumps"] = slow
        out["landing"] = controller.last_landing
        out["extent"] = [doc.width(), doc.height()]
        out["layers"] = [n["name"] for n in _nodes(doc)]
        return out
    finally:
        controller.close()
        doc.close()


def upscale_8k(ctx: Context) -> dict[str, Any]:
    """A LANDING_SIDE canvas (4096) upscaled 2x (Lanczos) to twice its side (8192): the
    daemon's image lands a slice at a time; rows of the new layer are read back against
    the daemon's own frame (top, middle, bottom), and the image Krita shows against the
    layer (composited without a refresh from the plugin); the landing's timings."""
    from atelier_krita.jobs import JobSettings, Mode
    side, patch = LANDING_SIDE, 512
    doc = Krita.instance().createDocument(side, side, "upscale-8k", "RGBA", "U8", "", 72.0)
    # A patterned patch over the white Background: an upscale with something to show,
    # and an image that Krita scales quickly (the Background is one colour, no pixels).
    layer = doc.createNode("patch", "paintlayer")
    band = bytes((x * 5 + y * 3 + c * 60) % 256 if c < 3 else 255
                 for y in range(patch) for x in range(patch) for c in range(4))
    layer.setPixelData(band, side // 4, side // 4, patch, patch)
    doc.rootNode().addChildNode(layer, None)
    controller = _controller(ctx, doc)
    frames: list[Any] = []
    queue_result = controller._queue_result

    def keep_frame(job: Any, done: Any) -> None:      # the daemon's image, as it came
        frames.append(done.images[0])
        queue_result(job, done)

    controller._queue_result = keep_frame
    try:
        started = time.perf_counter()
        ran = _run(controller, lambda: controller.start(
            Mode.UPSCALE, JobSettings(upscale_factor=2.0, tiling="none", seed=3)))
        out: dict[str, Any] = {**ran, "seconds": round(time.perf_counter() - started, 1),
                               "extent": [doc.width(), doc.height()],
                               "landing": controller.last_landing}
        top = doc.rootNode().childNodes()[-1]
        rect = top.bounds()
        out.update(layers=[n.name() for n in doc.rootNode().childNodes()],
                   bounds=[rect.x(), rect.y(), rect.width(), rect.height()])
        if not frames:
            return out
        frame = frames[0]
        width, rows = frame.width, 16
        out["frame"] = [frame.width, frame.height]
        # the daemon's image as Qt reads it (a large result comes as PNG): RGBA rows
        image = QImage.fromData(frame.data, "PNG") if frame.format.name == "PNG" else \
            QImage(frame.data, frame.width, frame.height, frame.width * 4,
                   QImage.Format_RGBA8888)
        image = image.convertToFormat(QImage.Format_RGBA8888)

        def frame_rows(y: int, count: int) -> bytes:
            part = image.copy(0, y, width, count)
            bits = part.constBits()
            bits.setsize(part.bytesPerLine() * count)
            return bits.asstring()

        doc.waitForDone()
        checks: dict[str, bool] = {}
        for name, y in (("top", 0), ("middle", frame.height // 2 - 5),
                        ("patch", frame.height // 4 + 100), ("bottom", frame.height - rows)):
            got = bytes(top.pixelData(0, y, width, rows))
            want = frame_rows(y, rows)
            # the layer holds BGRA, the frame RGBA
            checks[name] = (len(got) == len(want) and got[0::4] == want[2::4] and
                            got[1::4] == want[1::4] and got[2::4] == want[0::4] and
                            got[3::4] == want[3::4])
            checks[name + "_shown"] = bytes(doc.pixelData(0, y, width, rows)) == got
        out["rows_match"] = checks
        # rows through the upscaled patch: not one colour
        out["patch_colours"] = len(set(frame_rows(frame.height // 4 + 100, 1)[0::4]))
        return out
    finally:
        controller.close()
        doc.close()


def upscale_canvas(ctx: Context) -> dict[str, Any]:
    """Upscale 2x through the docker on the shared document (it scales it: run last)."""
    from atelier_krita.jobs import Workflow
    panel, controller, doc = ctx.panel, ctx.controller, ctx.doc
    clear_selection(doc)
    panel._check_selection()
    before = _nodes(doc)
    extent = [doc.width(), doc.height()]
    panel.choose_workflow(Workflow.UPSCALE)
    _choose(panel.upscale_size_combo, "2x")
    _choose(panel.tiling_combo, "x")
    panel.refine_spin.setValue(0)
    button = panel.generate_button.text()
    ran = _run(controller, panel.generate)
    after = _nodes(doc)
    undo = Krita.instance().action("edit_undo")
    return {**ran, "button": button, "sent": _sent(controller), "before": before,
            "after": after, "extent_before": extent, "extent": [doc.width(), doc.height()],
            "undo_text": undo.text() if undo is not None else None}


SCENARIOS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "asset_fields": asset_fields,
    "texture_set": texture_set,
    "texture_marigold_missing": texture_marigold_missing,
    "upscale_selection": upscale_selection,
    "upscale_drops_queue": upscale_drops_queue,
    "upscale_refusals": upscale_refusals,
    "upscale_cancel": upscale_cancel,
    "upscale_stalls": upscale_stalls,
    "upscale_cancel_landing": upscale_cancel_landing,
    "upscale_8k": upscale_8k,
    "upscale_canvas": upscale_canvas,
}
