"""Scenarios for control layers, reference images and regions (issue 14), run inside Krita
by ``atelier_scenarios`` (named in its optional list: a kritarunner pass of their own) on
the shared test document, through the docker's rows and its Generate button. Each returns
what it saw (what the daemon was sent and ran, the uploads' pixels); tests/test_krita_host.py
judges it.

Headless Krita has no active layer, so rows are added naming their layers directly. The
jobs that compare pixels refine a 64x48 selection with no grow or feather: the region then
is the selection and the model size equals it, so uploads are the layers' pixels exactly.
"""

from __future__ import annotations

import gc
import os
from dataclasses import replace
from typing import Any, Callable

from krita import Krita
from PyQt5.QtCore import QByteArray, QCoreApplication, QUuid
from PyQt5.QtGui import QColor, QImage

from atelier_scenarios import (WIDTH, HEIGHT, clear_selection, layer_stack, paint,
                               pump_until, select_rect, sha)
from docker_scenarios import Context, combo_items

BOX = (24, 32, 64, 48)          # the refined selection: a multiple of 8, within the range


def _uid(node: Any) -> str:
    return node.uniqueId().toString()


def _name_of(doc: Any, uid: str) -> Any:
    """The name of the layer with this uniqueId in ``doc``; None when it has none."""
    if not uid.startswith("{"):
        return None
    node = doc.nodeByUniqueID(QUuid(uid))
    return node.name() if node is not None else None


def _swap(bgra: bytes) -> bytes:
    out = bytearray(bgra)
    out[0::4], out[2::4] = bgra[2::4], bgra[0::4]
    return bytes(out)


def _lines(doc: Any) -> Any:
    """Dark lines on white, as a painter draws line art; hidden from the picture."""
    node = doc.nodeByName("lines")
    if node is None:
        node = paint(doc, "lines", lambda x, y: (0, 0, 0, 255) if x % 16 < 3 or y % 12 < 3
                     else (255, 255, 255, 255))
    return node


def _refine_box(ctx: Context, **settings: Any) -> dict[str, Any]:
    """Refine BOX through the docker's Generate button; the new layers, and what was sent
    and run."""
    from atelier_krita.jobs import Workflow
    panel, controller, doc = ctx.panel, ctx.controller, ctx.doc
    select_rect(doc, *BOX)
    panel._check_selection()
    panel.choose_workflow(Workflow.REFINE)
    before = {entry["id"] for entry in layer_stack(doc)}
    panel.generate_button.click()
    pump_until(controller, lambda: not controller.busy, "the refine")
    new = [entry for entry in layer_stack(doc) if entry["id"] not in before]
    return {"message": controller.message, "new": new}


def _generate_canvas(ctx: Context) -> dict[str, Any]:
    from atelier_krita.jobs import Workflow
    panel, controller, doc = ctx.panel, ctx.controller, ctx.doc
    clear_selection(doc)
    panel._check_selection()
    panel.choose_workflow(Workflow.GENERATE)
    before = {entry["id"] for entry in layer_stack(doc)}
    panel.generate_button.click()
    pump_until(controller, lambda: not controller.busy, "the generate")
    new = [entry for entry in layer_stack(doc) if entry["id"] not in before]
    return {"message": controller.message, "new": new}


def _drop(doc: Any, layers: list[dict[str, Any]]) -> None:
    """Take a job's result layers out again, so the next job reads the same canvas."""
    for entry in layers:
        node = next((n for n in doc.rootNode().childNodes() if _uid(n) == entry["id"]), None)
        if node is not None:
            node.remove()
    doc.refreshProjection()
    doc.waitForDone()


def _frame(frame: Any) -> dict[str, Any]:
    return {"format": frame.format.name, "size": [frame.width, frame.height], "id": frame.id,
            "sha": sha(frame.data)}


def _start(ctx: Context) -> None:
    panel = ctx.panel
    panel.show_settings(replace(ctx.base, mask_grow=0, mask_feather=0, previews=False,
                                strength=0.7))
    panel.max_side_spin.setValue(96)
    panel.refresh()


def _finish(ctx: Context) -> None:
    from atelier_krita.guides import Guides
    ctx.panel.show_guides(Guides())
    clear_selection(ctx.doc)
    ctx.panel.show_settings(ctx.base)


# ---------------------------------------------------------------- control layers
def guides_control(ctx: Context) -> dict[str, Any]:
    """A paint layer of dark lines as a lineart control (inverted), through the docker's
    row: the daemon gets it as controls[0] with the layer's pixels, the canvas it refines
    leaves the control layer out, and the result differs from the same job without it."""
    from atelier_krita.guides import ControlRow
    from atelier_krita.jobs import Mode
    panel, controller, doc = ctx.panel, ctx.controller, ctx.doc
    out: dict[str, Any] = {"capabilities": [c for c in controller.capabilities
                                            if c.startswith("control:")]}
    _start(ctx)
    lines = _lines(doc)
    lines.setVisible(False)
    doc.refreshProjection()
    plain = _refine_box(ctx)
    out["plain"] = {"message": plain["message"], "new": plain["new"],
                    "image": _frame(controller.sent_inputs["image"]),
                    "controls": len(controller.sent_request.controls)}
    _drop(doc, plain["new"])
    lines.setVisible(True)         # a control layer shown: the job still leaves it out
    doc.refreshProjection()
    row = panel.control_list.add_row(ControlRow(_uid(lines), "lines", "lineart", scale=0.9,
                                                end=0.8, invert=True))
    # the selection as a second control: its mask over the region
    panel.control_list.add_row(ControlRow("selection", "(selection)", "scribble", scale=0.5))
    panel.refresh()
    out["row"] = {"layers": combo_items(row.layer), "layer": row.layer.currentText(),
                  "kinds": combo_items(row.kind), "kind": row.kind.currentData(),
                  "invert": row.invert.isChecked(), "fold": panel.control_fold.button.text()}
    guided = _refine_box(ctx)
    sent, ran = controller.sent_request, controller.last_params
    control = controller.sent_inputs.get("control0")
    selection = controller.sent_inputs.get("control1")
    expected = _swap(bytes(lines.pixelData(*BOX)))
    out["guided"] = {
        "message": guided["message"], "new": guided["new"],
        "sent": [[c.kind, c.image, c.scale, c.start, c.end, c.invert, c.preprocess]
                 for c in sent.controls],
        "ran": None if ran is None else [[c.kind, c.image, c.scale, c.start, c.end, c.invert,
                                          c.preprocess] for c in ran.controls],
        "upload": None if control is None else _frame(control),
        "upload_is_layer": control is not None and control.data == expected,
        "selection_upload": None if selection is None else _frame(selection),
        "selection_is_mask": selection is not None and
        selection.data == bytes(doc.selection().pixelData(*BOX)),
        "image": _frame(controller.sent_inputs["image"]),
        "history": controller.history[0].summary()}
    _drop(doc, guided["new"])
    lines.setVisible(False)
    doc.refreshProjection()
    # History's Recall puts the job's rows back
    panel.control_list.set_rows(())
    panel.refresh()
    panel.history_list.setCurrentRow(0)
    panel.recall_button.click()
    out["recalled"] = [[r.value().name, r.value().kind, r.value().scale]
                       for r in panel.control_list.rows]
    row = panel.control_list.rows[0]
    panel.control_list.remove_row(panel.control_list.rows[1])
    # a kind the daemon does not run (pose: no pose model here): the daemon's answer names
    # the row
    row.kind.setCurrentIndex(row.kind.findData("lineart"))
    from atelier_krita.guides import ControlRow as Row
    panel.control_list.set_rows((Row(_uid(lines), "lines", "pose"),))
    panel.refresh()
    pose = panel.control_list.rows[0]
    out["pose"] = {"label": pose.kind.currentText(), "run": _refine_box(ctx)["message"]}
    panel.control_list.set_rows((Row(_uid(lines), "lines", "lineart"),))
    # a layer the row names that is gone: refused before anything is sent, naming the row
    row2 = panel.control_list.add_row(ControlRow("{00000000-0000-0000-0000-0000000000aa}",
                                                 "deleted sketch", "scribble"))
    sent_before = controller.sent_request
    panel.refresh()
    out["gone"] = {"label": row2.layer.currentText(),
                   "started": panel.run(Mode.REFINE),
                   "message": controller.message,
                   "nothing_sent": controller.sent_request is sent_before}
    _finish(ctx)
    return out


def guides_from_image(ctx: Context) -> dict[str, Any]:
    """A row's "Generate from image": a preprocess job of the canvas, its control image
    added as a new layer that the row then uses."""
    from atelier_krita.guides import ControlRow
    panel, controller, doc = ctx.panel, ctx.controller, ctx.doc
    _start(ctx)
    clear_selection(doc)
    lines = _lines(doc)
    lines.setVisible(False)
    row = panel.control_list.add_row(ControlRow(_uid(lines), "lines", "canny", invert=True,
                                                preprocess=True))
    # something with edges on top of the picture: a light disc on black
    shape = paint(doc, "shape", lambda x, y: (240, 240, 240, 255)
                  if (x - 100) ** 2 + (y - 80) ** 2 < 1600 else (0, 0, 0, 255))
    doc.refreshProjection()
    before = {entry["id"] for entry in layer_stack(doc)}
    history = len(controller.history)
    row.from_image_button.click()
    pump_until(controller, lambda: not controller.busy, "the control image")
    new = [entry for entry in layer_stack(doc) if entry["id"] not in before]
    sent = controller.sent_request
    out: dict[str, Any] = {"message": controller.message, "new": new,
                           "sent": {"kind": sent.kind, "size": [sent.width, sent.height],
                                    "init_image": sent.init_image is not None,
                                    "controls": [[c.kind, c.image, c.preprocess]
                                                 for c in sent.controls]},
                           "rows": len(panel.control_list.rows),
                           "history_added": len(controller.history) - history}
    if new:
        node = next(n for n in doc.rootNode().childNodes() if _uid(n) == new[0]["id"])
        pixels = bytes(node.pixelData(0, 0, WIDTH, HEIGHT))
        reds = pixels[2::4]
        out["layer"] = {"bright": sum(1 for v in reds if v > 128), "lit": len(reds) - reds.count(0),
                        "max": max(reds), "pixels": WIDTH * HEIGHT,
                        "opaque": pixels[3::4].count(255)}
        result = controller.last_params
        out["ran"] = None if result is None else [result.kind, result.width, result.height]
    value = panel.control_list.rows[0].value()
    out["row_after"] = {"layer": value.layer, "name": value.name, "kind": value.kind,
                        "preprocess": value.preprocess, "invert": value.invert,
                        "label": row.layer.currentText()}
    # the row removed while its control image is made: the layer comes, no row takes it
    panel.control_list.add_row(ControlRow(_uid(lines), "lines", "softedge"))
    before_second = {entry["id"] for entry in layer_stack(doc)}
    panel.control_list.rows[1].from_image_button.click()
    panel.control_list.remove_row(panel.control_list.rows[1])
    pump_until(controller, lambda: not controller.busy, "the second control image")
    second = [entry for entry in layer_stack(doc) if entry["id"] not in before_second]
    out["removed_row"] = {"new": [entry["name"] for entry in second],
                          "rows": [row.value().name for row in panel.control_list.rows]}
    _drop(doc, new + second)
    shape.remove()
    _finish(ctx)
    return out


# ---------------------------------------------------------------- reference images
def guides_reference(ctx: Context) -> dict[str, Any]:
    """A layer and an image file as references: both reach the daemon with their
    weights and flavours, as uploads of their own pixels."""
    from atelier_krita.guides import ReferenceRow
    panel, controller, doc = ctx.panel, ctx.controller, ctx.doc
    out: dict[str, Any] = {"reference_capability": "reference" in controller.capabilities}
    _start(ctx)
    path = os.path.join(os.getcwd(), "reference.png")
    image = QImage(40, 30, QImage.Format_RGBA8888)
    image.fill(QColor(10, 200, 30, 255))
    image.save(path, "PNG")
    plain = _generate_canvas(ctx)
    out["plain"] = plain
    _drop(doc, plain["new"])
    colour = doc.nodeByName("colour")
    panel.reference_list.add_row(ReferenceRow(layer=_uid(colour), name="colour", weight=0.8,
                                              flavour="style"))
    panel.reference_list._pick_file = lambda: path        # what the file dialog answers
    panel.reference_list.add_file_button.click()
    row = panel.reference_list.rows[1]
    row.weight.setValue(1.2)
    guided = _generate_canvas(ctx)
    sent, ran = controller.sent_request, controller.last_params
    uploads = controller.sent_inputs
    out["guided"] = {
        "message": guided["message"], "new": guided["new"],
        "sent": [[r.image, r.weight, r.flavour] for r in sent.references],
        "ran": None if ran is None else [[r.image, r.weight, r.flavour] for r in ran.references],
        "uploads": {key: _frame(uploads[key]) for key in ("reference0", "reference1")
                    if key in uploads},
        "layer_pixels": "reference0" in uploads and uploads["reference0"].data ==
        _swap(bytes(colour.pixelData(0, 0, WIDTH, HEIGHT))),
        "file_pixels": "reference1" in uploads and uploads["reference1"].data ==
        bytes((10, 200, 30, 255)) * (40 * 30),
        "labels": [r.value().name for r in panel.reference_list.rows]}
    _drop(doc, guided["new"])
    _finish(ctx)
    return out


# ---------------------------------------------------------------- regions
def guides_region(ctx: Context) -> dict[str, Any]:
    """A layer and a group as regions with their prompts: each mask is the layer's (the
    group's composite's) alpha over the job's region."""
    from atelier_krita.guides import RegionRow
    panel, controller, doc = ctx.panel, ctx.controller, ctx.doc
    out: dict[str, Any] = {"regions_capability": "regions" in controller.capabilities}
    _start(ctx)
    plain = _refine_box(ctx)
    out["plain"] = {"message": plain["message"], "new": plain["new"]}
    _drop(doc, plain["new"])
    square = doc.nodeByName("square")
    group = doc.nodeByName("region group")
    if group is None:
        group = doc.createGroupLayer("region group")
        doc.rootNode().addChildNode(group, None)
        inner = doc.createNode("disc", "paintlayer")
        group.addChildNode(inner, None)
        disc = bytearray(WIDTH * HEIGHT * 4)
        for y in range(HEIGHT):
            for x in range(WIDTH):
                if (x - 40) ** 2 + (y - 60) ** 2 < 400:
                    disc[(y * WIDTH + x) * 4:(y * WIDTH + x) * 4 + 4] = bytes((200, 100, 0, 200))
        inner.setPixelData(QByteArray(bytes(disc)), 0, 0, WIDTH, HEIGHT)
        group.setVisible(False)
        doc.refreshProjection()
        doc.waitForDone()
    panel.region_list.add_row(RegionRow(_uid(square), "square", "a red door"))
    panel.region_list.add_row(RegionRow(_uid(group), "region group", "a tree", "leaves"))
    panel.refresh()
    out["row_layers"] = combo_items(panel.region_list.rows[1].layer)
    guided = _refine_box(ctx)
    sent, ran = controller.sent_request, controller.last_params
    uploads = controller.sent_inputs
    square_alpha = bytes(square.pixelData(*BOX))[3::4]
    group_alpha = bytes(group.projectionPixelData(*BOX))[3::4]
    out["guided"] = {
        "message": guided["message"], "new": guided["new"],
        "sent": [[r.mask, r.prompt, r.negative_prompt] for r in sent.regions],
        "ran": None if ran is None else [[r.mask, r.prompt, r.negative_prompt]
                                         for r in ran.regions],
        "prompt": sent.prompt,
        "uploads": {key: _frame(uploads[key]) for key in ("region0", "region1") if key in uploads},
        "square_mask": "region0" in uploads and uploads["region0"].data == square_alpha,
        "group_mask": "region1" in uploads and uploads["region1"].data == group_alpha,
        "square_covers": [square_alpha.count(255), square_alpha.count(0), len(square_alpha)],
        "group_covers": [len(group_alpha) - group_alpha.count(0), len(group_alpha)]}
    _drop(doc, guided["new"])
    # Generate with the selection fills it (inpaint): the regions go along
    from atelier_krita.jobs import Workflow
    panel.choose_workflow(Workflow.GENERATE)
    before = {entry["id"] for entry in layer_stack(doc)}
    panel.generate_button.click()
    pump_until(controller, lambda: not controller.busy, "the fill")
    filled = [entry for entry in layer_stack(doc) if entry["id"] not in before]
    sent = controller.sent_request
    out["fill"] = {"kind": sent.kind, "regions": [[r.prompt, r.negative_prompt]
                                                  for r in sent.regions],
                   "uploads": sorted(controller.sent_inputs), "message": controller.message,
                   "new": len(filled)}
    _drop(doc, filled)
    _finish(ctx)
    return out


# ---------------------------------------------------------------- live painting
def guides_live(ctx: Context) -> dict[str, Any]:
    """Live sends the control layers and regions too, with every state of the canvas."""
    from atelier_krita.guides import ControlRow, RegionRow
    panel, controller, doc = ctx.panel, ctx.controller, ctx.doc
    _start(ctx)
    clear_selection(doc)
    lines = _lines(doc)
    lines.setVisible(False)
    panel.control_list.add_row(ControlRow(_uid(lines), "lines", "lineart", invert=True))
    panel.region_list.add_row(RegionRow(_uid(doc.nodeByName("square")), "square", "a door"))
    panel.live_check.setChecked(True)
    pump_until(controller, lambda: controller.live_layer is not None and controller.live_idle,
               "the first live result")
    uploads = controller.live_sent_inputs
    out = {"uploads": {key: _frame(frame) for key, frame in sorted(uploads.items())},
           "message": controller.message}
    panel.live_check.setChecked(False)
    for _ in range(20):
        QCoreApplication.processEvents()
        controller.pump()
    out["live_after_off"] = controller.live_layer is not None
    _finish(ctx)
    return out


# ---------------------------------------------------------------- saved with the .kra
def guides_persist(ctx: Context) -> dict[str, Any]:
    """Rows made in one document's docker are saved in it: saved as .kra, closed and
    reopened, the docker shows them again, tied to the same layers."""
    from atelier_krita.controller import Controller
    from atelier_krita.docker import AtelierPanel
    from atelier_krita.guides import ControlRow, ReferenceRow, RegionRow
    from atelier_krita.host import KritaDocument
    app = Krita.instance()
    out: dict[str, Any] = {}
    doc = app.createDocument(64, 48, "atelier-persist", "RGBA", "U8", "", 72.0)
    doc.setBatchmode(True)
    sketch = doc.createNode("sketch", "paintlayer")
    doc.rootNode().addChildNode(sketch, None)
    sky = doc.createGroupLayer("sky")
    doc.rootNode().addChildNode(sky, None)
    current = [doc]
    controller = Controller(lambda: KritaDocument(current[0]) if current[0] else None)
    panel = AtelierPanel(controller)
    panel.timer.stop()
    try:
        out["empty_at_first"] = [len(panel.control_list.rows), len(panel.region_list.rows)]
        panel.control_list.add_row(ControlRow(_uid(sketch), "sketch", "scribble", 0.7, 0.0,
                                              0.5, invert=True))
        panel.reference_list.add_row(ReferenceRow(layer=_uid(sketch), name="sketch",
                                                  weight=1.1, flavour="style"))
        panel.reference_list.add_row(ReferenceRow(path="/somewhere/ref.png", name="ref.png"))
        panel.region_list.add_row(RegionRow(_uid(sky), "sky", "a stormy sky", "sun"))
        panel.control_list.rows[0].scale.setValue(0.6)       # an edit is saved as well
        saved = panel.guides()
        out["saved"] = repr(saved)
        out["annotation"] = bytes(doc.annotation("atelier")).decode()
        out["ids"] = {"sketch": _uid(sketch), "sky": _uid(sky)}
        path = os.path.join(os.getcwd(), "guides.kra")
        out["saved_file"] = doc.saveAs(path)
        doc.close()
        current[0] = None
        panel.document_changed()
        out["rows_without_document"] = [len(panel.control_list.rows),
                                        len(panel.reference_list.rows)]
        reopened = app.openDocument(path)
        reopened.setBatchmode(True)
        current[0] = reopened
        panel.document_changed()
        panel.refresh()
        loaded = panel.guides()
        out["same_rows"] = loaded == saved
        out["loaded"] = repr(loaded)
        out["layers"] = [[row.name, _name_of(reopened, row.layer)]
                         for row in (*loaded.controls, *loaded.references, *loaded.regions)]
        out["reopened_ids"] = {name: _uid(reopened.nodeByName(name)) for name in ("sketch", "sky")}
        out["labels"] = [panel.control_list.rows[0].layer.currentText(),
                         panel.region_list.rows[0].layer.currentText(),
                         panel.region_list.rows[0].prompt.text()]
        reopened.setModified(False)
        reopened.close()
        current[0] = None
    finally:
        controller.close()
        del panel
        gc.collect()
        QCoreApplication.processEvents()
    return out


# ---------------------------------------------------------------- the docker's shape
def guides_shape(ctx: Context) -> dict[str, Any]:
    """The three sections fold away (closed at first) and keep the docker's height."""
    panel = ctx.panel
    from atelier_krita.guides import ControlRow, RegionRow
    panel.refresh()
    out: dict[str, Any] = {"closed": [not fold.body.isVisible() and not fold.button.isChecked()
                                      for fold in panel.guide_folds],
                           "titles": [fold.button.text() for fold in panel.guide_folds],
                           "min_height": panel.minimumSizeHint().height()}
    lines = _lines(ctx.doc)
    for _ in range(4):
        panel.control_list.add_row(ControlRow(_uid(lines), "lines"))
    for fold in panel.guide_folds:
        fold.set_open(True)
    panel.region_list.add_row(RegionRow(_uid(lines), "lines", "x"))
    out["fifth"] = {"row": panel.control_list.add_row(ControlRow(_uid(lines), "lines")) is None,
                    "message": ctx.controller.message}
    panel.refresh()
    out["open_min_height"] = panel.minimumSizeHint().height()
    out["open_titles"] = [fold.button.text() for fold in panel.guide_folds]
    for fold in panel.guide_folds:
        fold.set_open(False)
    _finish(ctx)
    return out


SCENARIOS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "guides_control": guides_control,
    "guides_from_image": guides_from_image,
    "guides_reference": guides_reference,
    "guides_region": guides_region,
    "guides_live": guides_live,
    "guides_persist": guides_persist,
    "guides_shape": guides_shape,
}
