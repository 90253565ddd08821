"""The docker's widgets: fields in, controller actions out, controller state shown.

``AtelierPanel`` is a plain QWidget (usable without a Krita window, which is
how the tests drive it); ``AtelierDocker`` puts it into Krita's docker frame.
"""

from __future__ import annotations

import weakref
from typing import Callable, Optional

from krita import DockWidget
from PyQt5.QtCore import QTimer
from PyQt5.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox,
                             QHBoxLayout, QLabel, QLineEdit, QListWidget, QPlainTextEdit,
                             QProgressBar, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from . import host
from .controller import ConnectionSettings, Controller
from .jobs import (CACHE_INTERVAL_HELP, CACHE_INTERVAL_MAX, DEPTH_MODEL_HELP, JobSettings, Mode,
                   base_model_names, depth_model_choices)
from .protocol.messages import TILINGS

PUMP_INTERVAL_MS = 30
ESTIMATE_DEPTH = "(estimate from canvas)"
DAEMON_MODEL = "(daemon's current model)"
MAX_SEED = 2**32 - 1


class AtelierPanel(QWidget):
    def __init__(self, controller: Controller, parent: Optional[QWidget] = None,
                 remember: Optional[Callable[[ConnectionSettings], None]] = None):
        super().__init__(parent)
        self.controller = controller
        self._remember = remember
        # Weak, so the controller does not keep a closed panel (and its Qt objects) alive.
        controller.on_change = _weak_call(self.refresh)
        self._build()
        self.timer = QTimer(self)
        self.timer.setInterval(PUMP_INTERVAL_MS)
        self.timer.timeout.connect(controller.pump)
        self.timer.start()
        self.refresh()

    # ------------------------------------------------------------ layout
    def _build(self) -> None:
        layout = QVBoxLayout(self)

        box = QGroupBox("Connection", self)
        form = QFormLayout(box)
        conn = self.controller.connection
        self.host_edit = QLineEdit(conn.host, box)
        self.port_spin = _spin(1, 65535, conn.port, box)
        self.token_edit = QLineEdit(conn.token, box)
        self.token_edit.setEchoMode(QLineEdit.Password)
        self.connect_button = QPushButton("Connect", box)
        self.connect_button.clicked.connect(self.reconnect)
        self.status_label = QLabel(box)
        self.status_label.setWordWrap(True)
        form.addRow("Address", self.host_edit)
        form.addRow("Port", self.port_spin)
        form.addRow("Token", self.token_edit)
        form.addRow(self.connect_button, self.status_label)
        layout.addWidget(box)

        form = QFormLayout()
        self.prompt_edit = QPlainTextEdit(self)
        self.prompt_edit.setPlaceholderText("what to paint")
        self.prompt_edit.setMaximumHeight(70)
        self.negative_edit = QLineEdit(self)
        self.negative_edit.setPlaceholderText("what to avoid")
        self.model_combo = QComboBox(self)
        self.load_button = QPushButton("Load", self)
        self.load_button.clicked.connect(self.load_chosen_model)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.load_button)
        self.strength_spin = _dspin(0.0, 1.0, 0.6, 0.05, self)
        self.seed_spin = _spin(-1, 2**31 - 1, -1, self)
        self.seed_spin.setSpecialValueText("random")
        self.batch_spin = _spin(1, 16, 1, self)
        self.steps_spin = _spin(1, 150, 20, self)
        self.cache_spin = _spin(1, CACHE_INTERVAL_MAX, 1, self)
        self.cache_spin.setSpecialValueText("off (full quality)")
        self.cache_spin.setToolTip(CACHE_INTERVAL_HELP)
        self.guidance_spin = _dspin(0.0, 30.0, 7.0, 0.5, self)
        self.tiling_combo = QComboBox(self)
        self.tiling_combo.addItems(TILINGS)
        self.grow_spin = _spin(0, 256, 8, self)
        self.feather_spin = _spin(0, 256, 8, self)
        self.depth_combo = QComboBox(self)
        # Labels say each model's kind; the item data is the name a job sends (None: default).
        self.depth_model_combo = QComboBox(self)
        self.depth_model_combo.setToolTip(DEPTH_MODEL_HELP)
        self.max_side_spin = _spin(0, 4096, 0, self)
        self.max_side_spin.setSpecialValueText("model's own")
        self.max_side_spin.setSingleStep(64)
        self.previews_check = QCheckBox("show step previews", self)
        self.previews_check.setChecked(True)
        for label, widget in (("Prompt", self.prompt_edit), ("Negative", self.negative_edit),
                              ("Model", model_row), ("Strength", self.strength_spin),
                              ("Seed", self.seed_spin), ("Batch", self.batch_spin),
                              ("Steps", self.steps_spin), ("Step cache", self.cache_spin),
                              ("Guidance", self.guidance_spin),
                              ("Seamless axes", self.tiling_combo), ("Grow", self.grow_spin),
                              ("Feather", self.feather_spin), ("Depth layer", self.depth_combo),
                              ("Depth model", self.depth_model_combo),
                              ("Max size", self.max_side_spin), ("", self.previews_check)):
            form.addRow(label, widget)
        layout.addLayout(form)

        row = QHBoxLayout()
        self.mode_buttons: dict[Mode, QPushButton] = {}
        for mode in Mode:
            button = QPushButton(mode.label, self)
            button.clicked.connect(lambda _checked=False, m=mode: self.run(m))
            row.addWidget(button)
            self.mode_buttons[mode] = button
        layout.addLayout(row)

        row = QHBoxLayout()
        self.progress_bar = QProgressBar(self)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.clicked.connect(self.controller.cancel)
        row.addWidget(self.progress_bar)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)

        row = QHBoxLayout()
        self.result_spin = _spin(1, 1, 1, self)
        self.result_spin.valueChanged.connect(self._pick_result)
        self.apply_button = QPushButton("Apply", self)
        self.apply_button.clicked.connect(self.controller.apply_result)
        self.discard_button = QPushButton("Discard", self)
        self.discard_button.clicked.connect(self.controller.discard_results)
        row.addWidget(QLabel("Result", self))
        row.addWidget(self.result_spin)
        row.addWidget(self.apply_button)
        row.addWidget(self.discard_button)
        layout.addLayout(row)

        self.message_label = QLabel(self)
        self.message_label.setWordWrap(True)
        layout.addWidget(self.message_label)

        layout.addWidget(QLabel("History", self))
        self.history_list = QListWidget(self)
        layout.addWidget(self.history_list)
        row = QHBoxLayout()
        self.recall_button = QPushButton("Recall", self)
        self.recall_button.clicked.connect(self.recall_selected)
        self.rerun_button = QPushButton("Run again", self)
        self.rerun_button.clicked.connect(self.rerun_selected)
        row.addWidget(self.recall_button)
        row.addWidget(self.rerun_button)
        layout.addLayout(row)

    # ------------------------------------------------------------ fields <-> settings
    def settings(self) -> JobSettings:
        model = self.model_combo.currentText()
        depth = self.depth_combo.currentText()
        seed = self.seed_spin.value()
        return JobSettings(
            prompt=self.prompt_edit.toPlainText(),
            negative_prompt=self.negative_edit.text(),
            model=None if model in ("", DAEMON_MODEL) else model,
            strength=self.strength_spin.value(),
            seed=None if seed < 0 else seed,
            batch_size=self.batch_spin.value(),
            steps=self.steps_spin.value(),
            guidance=self.guidance_spin.value(),
            tiling=self.tiling_combo.currentText(),
            mask_grow=self.grow_spin.value(),
            mask_feather=self.feather_spin.value(),
            depth_layer=None if depth in ("", ESTIMATE_DEPTH) else depth,
            depth_model=self.depth_model_combo.currentData() or None,
            previews=self.previews_check.isChecked(),
            cache_interval=self.cache_spin.value(),
        )

    def show_settings(self, settings: JobSettings) -> None:
        self.prompt_edit.setPlainText(settings.prompt)
        self.negative_edit.setText(settings.negative_prompt)
        _choose(self.model_combo, settings.model or DAEMON_MODEL)
        self.strength_spin.setValue(settings.strength)
        self.seed_spin.setValue(-1 if settings.seed is None else min(settings.seed, 2**31 - 1))
        self.batch_spin.setValue(settings.batch_size)
        self.steps_spin.setValue(settings.steps)
        self.guidance_spin.setValue(settings.guidance)
        _choose(self.tiling_combo, settings.tiling)
        self.grow_spin.setValue(settings.mask_grow)
        self.feather_spin.setValue(settings.mask_feather)
        _choose(self.depth_combo, settings.depth_layer or ESTIMATE_DEPTH)
        _fill_choices(self.depth_model_combo,
                      depth_model_choices(self.controller.models, settings.depth_model),
                      settings.depth_model)
        self.previews_check.setChecked(settings.previews)
        self.cache_spin.setValue(settings.cache_interval)

    # ------------------------------------------------------------ actions
    def reconnect(self) -> None:
        connection = ConnectionSettings(self.host_edit.text().strip() or "127.0.0.1",
                                        self.port_spin.value(), self.token_edit.text())
        if self._remember is not None:
            self._remember(connection)
        self.controller.connect(connection)

    def load_chosen_model(self) -> None:
        name = self.settings().model
        if name:
            self.controller.load_model(name)

    def run(self, mode: Mode) -> bool:
        self.controller.size_limit = self.max_side_spin.value() or None
        return self.controller.start(mode, self.settings())

    def recall_selected(self) -> None:
        row = self.history_list.currentRow()
        if 0 <= row < len(self.controller.history):
            self.show_settings(self.controller.history[row].settings)

    def rerun_selected(self) -> None:
        row = self.history_list.currentRow()
        if 0 <= row < len(self.controller.history):
            self.controller.rerun(row)

    def _pick_result(self, value: int) -> None:
        if self.controller.batch_size and value - 1 != self.controller.batch_index:
            self.controller.select_result(value - 1)

    # ------------------------------------------------------------ state -> widgets
    def refresh(self) -> None:
        c = self.controller
        self.status_label.setText(c.connection_text)
        self.message_label.setText(c.message)
        step, total = c.progress
        self.progress_bar.setMaximum(max(total, 1))
        self.progress_bar.setValue(step if c.busy else 0)
        self.cancel_button.setEnabled(c.busy)
        for button in self.mode_buttons.values():
            button.setEnabled(not c.busy)
        count = c.batch_size
        for widget in (self.result_spin, self.apply_button, self.discard_button):
            widget.setEnabled(count > 1)
        self.result_spin.blockSignals(True)
        self.result_spin.setMaximum(max(count, 1))
        self.result_spin.setValue(c.batch_index + 1)
        self.result_spin.blockSignals(False)
        _fill(self.model_combo, [DAEMON_MODEL] + base_model_names(c.models))
        document = c.document()
        layers = document.paint_layer_names() if document is not None else []
        _fill(self.depth_combo, [ESTIMATE_DEPTH] + layers)
        chosen = self.depth_model_combo.currentData()
        _fill_choices(self.depth_model_combo, depth_model_choices(c.models, chosen), chosen)
        entries = [entry.summary() for entry in c.history]
        if entries != [self.history_list.item(i).text() for i in range(self.history_list.count())]:
            self.history_list.clear()
            self.history_list.addItems(entries)


def _weak_call(method: Callable[[], None]) -> Callable[[], None]:
    ref = weakref.WeakMethod(method)

    def call() -> None:
        target = ref()
        if target is not None:
            target()

    return call


def _spin(low: int, high: int, value: int, parent: QWidget) -> QSpinBox:
    spin = QSpinBox(parent)
    spin.setRange(low, high)
    spin.setValue(value)
    return spin


def _dspin(low: float, high: float, value: float, step: float, parent: QWidget) -> QDoubleSpinBox:
    spin = QDoubleSpinBox(parent)
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setValue(value)
    return spin


def _fill(combo: QComboBox, items: list[str]) -> None:
    """Replace a combo box's items only when they changed, keeping the choice."""
    if items == [combo.itemText(i) for i in range(combo.count())]:
        return
    chosen = combo.currentText()
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(items)
    _choose(combo, chosen)
    combo.blockSignals(False)


def _fill_choices(combo: QComboBox, choices: list[tuple[str, Optional[str]]],
                  chosen: Optional[str]) -> None:
    """Show (label, data) ``choices`` with the one whose data is ``chosen`` selected; the
    items are rebuilt only when they changed."""
    current = [(combo.itemText(i), combo.itemData(i)) for i in range(combo.count())]
    combo.blockSignals(True)
    if choices != current:
        combo.clear()
        for label, data in choices:
            combo.addItem(label, data)
    combo.setCurrentIndex(max(combo.findData(chosen), 0) if chosen else 0)
    combo.blockSignals(False)


def _choose(combo: QComboBox, text: str) -> None:
    index = combo.findText(text)
    if index < 0 and text:
        combo.addItem(text)
        index = combo.count() - 1
    combo.setCurrentIndex(max(index, 0))


def saved_connection() -> ConnectionSettings:
    default = ConnectionSettings()
    port = host.read_setting("port", str(default.port))
    return ConnectionSettings(host.read_setting("host", default.host),
                              int(port) if port.isdigit() else default.port,
                              host.read_setting("token", ""))


def remember_connection(connection: ConnectionSettings) -> None:
    host.write_setting("host", connection.host)
    host.write_setting("port", str(connection.port))
    host.write_setting("token", connection.token)


class AtelierDocker(DockWidget):
    def __init__(self):
        super().__init__()
        self.setWindowTitle("Atelier")
        self.controller = Controller(host.active_document, connection=saved_connection())
        self.panel = AtelierPanel(self.controller, self, remember=remember_connection)
        self.setWidget(self.panel)
        self.controller.connect()

    def canvasChanged(self, canvas) -> None:  # noqa: N802 (Krita's name)
        self.panel.refresh()
