"""The docker's rows of control layers, reference images and regions; plain Qt, no Krita.

Each list is a ``RowList``: its Add button(s) and its rows, at most the protocol's limit
(the docker's fold around it names and counts them). Rows name layers by uniqueId
(``guides.py``); ``changed`` is emitted on every edit, so the docker can keep the rows in
the document (its annotation).
"""

from __future__ import annotations

import os
from typing import Callable, Optional

from PyQt5.QtCore import pyqtSignal
from PyQt5.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFrame, QHBoxLayout, QLabel,
                             QLineEdit, QPushButton, QSizePolicy, QToolButton, QVBoxLayout,
                             QWidget)

from .guides import (CONTROL_FROM_IMAGE_HELP, CONTROL_HELP, CONTROL_INVERT_HELP,
                     CONTROL_KIND_HELP, CONTROL_PREPROCESS_HELP, CONTROL_RANGE_HELP,
                     CONTROL_STRENGTH_HELP, CONTROLS_FULL, FLAVOURS, LINE_KINDS,
                     REFERENCE_HELP, REFERENCES_FULL, REGION_HELP, REGIONS_FULL, ControlRow,
                     ReferenceRow, RegionRow, layer_choices)
from .protocol.messages import CONTROLS_MAX, REFERENCE_WEIGHT_MAX, REFERENCES_MAX, REGIONS_MAX
from .widgets import fill_choices

# The document's layers as (name, uniqueId); groups too when asked.
Layers = Callable[[bool], "list[tuple[str, str]]"]
# A control row's kind entries (label, kind) for the kind it has chosen.
Kinds = Callable[[Optional[str]], "list[tuple[str, Optional[str]]]"]
LAYER_CHARACTERS = 8


def _dspin(low: float, high: float, value: float, parent: QWidget, help_text: str,
           step: float = 0.05) -> QDoubleSpinBox:
    spin = QDoubleSpinBox(parent)
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setDecimals(2)
    spin.setValue(value)
    spin.setToolTip(help_text)
    return spin


def _layer_combo(parent: QWidget, help_text: str) -> QComboBox:
    combo = QComboBox(parent)
    combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(LAYER_CHARACTERS)
    combo.setToolTip(help_text)
    return combo


def _remove_button(parent: QWidget, what: str) -> QToolButton:
    button = QToolButton(parent)
    button.setText("\u2715")
    button.setToolTip(f"Remove this {what}")
    return button


def _line(*widgets: QWidget, stretch: int = 0) -> QHBoxLayout:
    row = QHBoxLayout()
    row.setContentsMargins(0, 0, 0, 0)
    row.setSpacing(3)
    for index, widget in enumerate(widgets):
        row.addWidget(widget, 1 if index == stretch else 0)
    return row


class _Row(QFrame):
    """A row: ``changed`` on every edit, ``remove`` (its ✕ button)."""
    changed = pyqtSignal()

    def __init__(self, parent: QWidget, what: str):
        super().__init__(parent)
        self.setFrameShape(QFrame.StyledPanel)
        self.remove = _remove_button(self, what)
        self.column = QVBoxLayout(self)
        self.column.setContentsMargins(3, 3, 3, 3)
        self.column.setSpacing(2)
        self._name = ""

    def _chosen_layer(self, combo: QComboBox) -> tuple[str, str]:
        uid = combo.currentData() or ""
        name = combo.currentText()
        if name.endswith(" (missing)"):
            name = self._name
        return uid, name

    def show_layers(self, combo: QComboBox, layers: "list[tuple[str, str]]",
                    selection: bool = False) -> None:
        uid = combo.currentData()
        if combo.currentText() and not combo.currentText().endswith(" (missing)"):
            self._name = combo.currentText()
        fill_choices(combo, layer_choices(layers, uid, self._name, selection), uid)

    def _watch(self, *widgets: QWidget) -> None:
        for widget in widgets:
            if isinstance(widget, QComboBox):
                widget.currentIndexChanged.connect(lambda _i: self.changed.emit())
            elif isinstance(widget, QDoubleSpinBox):
                widget.valueChanged.connect(lambda _v: self.changed.emit())
            elif isinstance(widget, QCheckBox):
                widget.toggled.connect(lambda _c: self.changed.emit())
            elif isinstance(widget, QLineEdit):
                widget.textChanged.connect(lambda _t: self.changed.emit())


class ControlRowWidget(_Row):
    """One control layer: the layer (or the selection), its kind and ✕; strength and range;
    invert, preprocess ("from image") and "Generate from image"."""

    def __init__(self, parent: QWidget, row: ControlRow, layers: "list[tuple[str, str]]",
                 kinds: Kinds):
        super().__init__(parent, "control layer")
        self._kinds = kinds
        self._name = row.name
        self.layer = _layer_combo(self, CONTROL_HELP)
        fill_choices(self.layer, layer_choices(layers, row.layer, row.name, True), row.layer)
        self.kind = QComboBox(self)
        self.kind.setToolTip(CONTROL_KIND_HELP)
        fill_choices(self.kind, kinds(row.kind), row.kind)
        self.scale = _dspin(0.0, 2.0, row.scale, self, CONTROL_STRENGTH_HELP)
        self.start = _dspin(0.0, 1.0, row.start, self, CONTROL_RANGE_HELP)
        self.end = _dspin(0.0, 1.0, row.end, self, CONTROL_RANGE_HELP)
        self.invert = QCheckBox("Invert", self)
        self.invert.setChecked(row.invert)
        self.invert.setToolTip(CONTROL_INVERT_HELP)
        self.preprocess = QCheckBox("From image", self)
        self.preprocess.setChecked(row.preprocess)
        self.preprocess.setToolTip(CONTROL_PREPROCESS_HELP)
        self.from_image_button = QPushButton("Generate from image", self)
        self.from_image_button.setToolTip(CONTROL_FROM_IMAGE_HELP)
        strength = QLabel("Strength", self)
        strength.setToolTip(CONTROL_STRENGTH_HELP)
        steps = QLabel("Steps", self)
        steps.setToolTip(CONTROL_RANGE_HELP)
        dash = QLabel("\u2013", self)
        self.column.addLayout(_line(self.layer, self.kind, self.remove))
        self.column.addLayout(_line(strength, self.scale, steps, self.start, dash, self.end,
                                    stretch=-1))
        options = _line(self.invert, self.preprocess, self.from_image_button, stretch=2)
        self.column.addLayout(options)
        self._watch(self.layer, self.kind, self.scale, self.start, self.end, self.invert,
                    self.preprocess)
        self.kind.currentIndexChanged.connect(self._kind_changed)

    def _kind_changed(self, _index: int) -> None:
        line = self.kind.currentData() in LINE_KINDS
        self.invert.setEnabled(line)

    def value(self) -> ControlRow:
        uid, name = self._chosen_layer(self.layer)
        return ControlRow(layer=uid, name=name, kind=self.kind.currentData() or "lineart",
                          scale=self.scale.value(), start=self.start.value(),
                          end=self.end.value(), invert=self.invert.isChecked(),
                          preprocess=self.preprocess.isChecked())

    def use_layer(self, uid: str, name: str, layers: "list[tuple[str, str]]") -> None:
        """The row reads this layer now (the one "Generate from image" made): its image is
        the control image itself, light lines on black."""
        self._name = name
        fill_choices(self.layer, layer_choices(layers, uid, name, True), uid)
        self.preprocess.setChecked(False)
        self.invert.setChecked(False)
        self.changed.emit()

    def refresh(self, layers: "list[tuple[str, str]]") -> None:
        self.show_layers(self.layer, layers, selection=True)
        kind = self.kind.currentData()
        fill_choices(self.kind, self._kinds(kind), kind)


class ReferenceRowWidget(_Row):
    """One reference image: its layer (or the file's name), weight, flavour and ✕."""

    def __init__(self, parent: QWidget, row: ReferenceRow, layers: "list[tuple[str, str]]"):
        super().__init__(parent, "reference")
        self._name = row.name
        self.path = row.path
        self.layer: Optional[QComboBox] = None
        if row.path:
            source: QWidget = QLabel(os.path.basename(row.path) or row.path, self)
            source.setToolTip(row.path)
        else:
            self.layer = _layer_combo(self, REFERENCE_HELP)
            fill_choices(self.layer, layer_choices(layers, row.layer, row.name), row.layer)
            source = self.layer
        self.weight = _dspin(0.0, REFERENCE_WEIGHT_MAX, row.weight, self, REFERENCE_HELP)
        self.flavour = QComboBox(self)
        self.flavour.addItems(FLAVOURS)
        self.flavour.setCurrentIndex(max(0, self.flavour.findText(row.flavour)))
        self.flavour.setToolTip("content: its subject and look; style: its style only, the "
                                "prompt keeps the subject and layout")
        self.column.addLayout(_line(source, self.weight, self.flavour, self.remove))
        self._watch(self.weight, self.flavour, *([self.layer] if self.layer else []))

    def value(self) -> ReferenceRow:
        if self.layer is None:
            return ReferenceRow(path=self.path, name=os.path.basename(self.path),
                                weight=self.weight.value(), flavour=self.flavour.currentText())
        uid, name = self._chosen_layer(self.layer)
        return ReferenceRow(layer=uid, name=name, weight=self.weight.value(),
                            flavour=self.flavour.currentText())

    def refresh(self, layers: "list[tuple[str, str]]") -> None:
        if self.layer is not None:
            self.show_layers(self.layer, layers)


class RegionRowWidget(_Row):
    """One region: its layer or group and ✕, its prompt, its negative prompt."""

    def __init__(self, parent: QWidget, row: RegionRow, layers: "list[tuple[str, str]]"):
        super().__init__(parent, "region")
        self._name = row.name
        self.layer = _layer_combo(self, REGION_HELP)
        fill_choices(self.layer, layer_choices(layers, row.layer, row.name), row.layer)
        self.prompt = QLineEdit(row.prompt, self)
        self.prompt.setPlaceholderText("what this region shows")
        self.negative = QLineEdit(row.negative_prompt, self)
        self.negative.setPlaceholderText("negative (empty: the main one)")
        self.column.addLayout(_line(self.layer, self.remove))
        self.column.addWidget(self.prompt)
        self.column.addWidget(self.negative)
        self._watch(self.layer, self.prompt, self.negative)

    def value(self) -> RegionRow:
        uid, name = self._chosen_layer(self.layer)
        return RegionRow(layer=uid, name=name, prompt=self.prompt.text(),
                         negative_prompt=self.negative.text())

    def refresh(self, layers: "list[tuple[str, str]]") -> None:
        self.show_layers(self.layer, layers)


class RowList(QWidget):
    """Rows under a header of Add buttons, at most ``limit``; ``changed`` on any edit,
    ``full`` (with the reason) when an Add would pass the limit."""
    changed = pyqtSignal()
    full = pyqtSignal(str)

    def __init__(self, title: str, help_text: str, limit: int, full_text: str,
                 layers: Layers, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.rows: list = []
        self.limit, self._full_text, self._layers = limit, full_text, layers
        self._title_text = title
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        self.header = QHBoxLayout()
        self.header.addStretch(1)       # the fold's title names the list and counts its rows
        self.setToolTip(help_text)
        layout.addLayout(self.header)
        self._rows_layout = QVBoxLayout()
        self._rows_layout.setSpacing(2)
        layout.addLayout(self._rows_layout)

    def add_button(self, text: str, help_text: str, action: Callable[[], object]) -> QPushButton:
        button = QPushButton(text, self)
        button.setToolTip(help_text)
        button.setSizePolicy(QSizePolicy.Maximum, QSizePolicy.Fixed)
        button.clicked.connect(lambda _checked=False: action())
        self.header.addWidget(button)
        return button

    def layers(self, groups: bool = False) -> "list[tuple[str, str]]":
        return self._layers(groups)

    def has_room(self) -> bool:
        if len(self.rows) < self.limit:
            return True
        self.full.emit(self._full_text)
        return False

    def _append(self, row: _Row) -> None:
        row.remove.clicked.connect(lambda _checked=False, row=row: self.remove_row(row))
        row.changed.connect(self.changed)
        self.rows.append(row)
        self._rows_layout.addWidget(row)
        self.changed.emit()

    def remove_row(self, row: _Row) -> None:
        self.rows.remove(row)
        self._rows_layout.removeWidget(row)
        row.hide()
        row.deleteLater()
        self.changed.emit()

    def clear(self) -> None:
        for row in list(self.rows):
            self.remove_row(row)

    def values(self) -> tuple:
        return tuple(row.value() for row in self.rows)  # type: ignore[attr-defined]

    def refresh(self) -> None:
        for row in self.rows:
            row.refresh(self.layers(isinstance(row, RegionRowWidget)))  # type: ignore[attr-defined]

    def title(self) -> str:
        """The list's name with its rows counted against the limit, for its fold."""
        count = len(self.rows)
        return f"{self._title_text} ({count}/{self.limit})" if count else self._title_text


class ControlList(RowList):
    """Control layers; ``from_image`` (row index) when a row's "Generate from image" is
    pressed."""
    from_image = pyqtSignal(int)

    def __init__(self, layers: Layers, kinds: Kinds,
                 active: Callable[[], Optional[tuple[str, str]]],
                 parent: Optional[QWidget] = None):
        super().__init__("Control layers", CONTROL_HELP, CONTROLS_MAX, CONTROLS_FULL, layers,
                         parent)
        self._kinds, self._active = kinds, active
        self.add = self.add_button("Add", "Add the active layer as a control layer (pick "
                                   "another layer or the selection in its row)",
                                   lambda: self.add_row())

    def add_row(self, row: Optional[ControlRow] = None) -> Optional[ControlRowWidget]:
        if not self.has_room():
            return None
        if row is None:
            layers = self.layers()
            name, uid = self._active() or (layers[0] if layers else ("", ""))
            row = ControlRow(layer=uid, name=name)
        widget = ControlRowWidget(self, row, self.layers(), self._kinds)
        widget._kind_changed(0)
        widget.from_image_button.clicked.connect(
            lambda _checked=False, w=widget: self.from_image.emit(self.rows.index(w)))
        self._append(widget)
        return widget

    def set_rows(self, rows: "tuple[ControlRow, ...]") -> None:
        self.clear()
        for row in rows:
            self.add_row(row)


class ReferenceList(RowList):
    """Reference images; ``pick_file`` is asked for a path by "Add file…"."""

    def __init__(self, layers: Layers, active: Callable[[], Optional[tuple[str, str]]],
                 pick_file: Callable[[], Optional[str]], parent: Optional[QWidget] = None):
        super().__init__("Reference images", REFERENCE_HELP, REFERENCES_MAX, REFERENCES_FULL,
                         layers, parent)
        self._active, self._pick_file = active, pick_file
        self.add_layer_button = self.add_button("Add layer", "Add the active layer as a "
                                                "reference image", lambda: self.add_row())
        self.add_file_button = self.add_button("Add file\u2026", "Add an image file as a "
                                               "reference image", self._add_file)

    def add_row(self, row: Optional[ReferenceRow] = None) -> Optional[ReferenceRowWidget]:
        if not self.has_room():
            return None
        if row is None:
            layers = self.layers()
            name, uid = self._active() or (layers[0] if layers else ("", ""))
            row = ReferenceRow(layer=uid, name=name)
        widget = ReferenceRowWidget(self, row, self.layers())
        self._append(widget)
        return widget

    def _add_file(self) -> None:
        if len(self.rows) >= self.limit:
            self.has_room()
            return
        path = self._pick_file()
        if path:
            self.add_row(ReferenceRow(path=path, name=os.path.basename(path)))

    def set_rows(self, rows: "tuple[ReferenceRow, ...]") -> None:
        self.clear()
        for row in rows:
            self.add_row(row)


class RegionList(RowList):
    def __init__(self, layers: Layers, active: Callable[[], Optional[tuple[str, str]]],
                 parent: Optional[QWidget] = None):
        super().__init__("Regions", REGION_HELP, REGIONS_MAX, REGIONS_FULL, layers, parent)
        self._active = active
        self.add = self.add_button("Add", "Mark the active layer or group as a region with a "
                                   "prompt of its own", lambda: self.add_row())

    def add_row(self, row: Optional[RegionRow] = None) -> Optional[RegionRowWidget]:
        if not self.has_room():
            return None
        if row is None:
            layers = self.layers(True)
            name, uid = self._active() or (layers[0] if layers else ("", ""))
            row = RegionRow(layer=uid, name=name)
        widget = RegionRowWidget(self, row, self.layers(True))
        self._append(widget)
        return widget

    def set_rows(self, rows: "tuple[RegionRow, ...]") -> None:
        self.clear()
        for row in rows:
            self.add_row(row)


__all__ = ["ControlList", "ReferenceList", "RegionList"]
