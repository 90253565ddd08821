"""The docker's widgets: fields in, controller actions out, controller state shown.

``AtelierPanel`` is a plain QWidget (usable without a Krita window, which is
how the tests drive it); ``AtelierDocker`` puts it into Krita's docker frame.
"""

from __future__ import annotations

import weakref
from typing import Callable, Optional

from krita import DockWidget
from PyQt5.QtCore import Qt, QTimer
from PyQt5.QtGui import QShowEvent
from PyQt5.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QFrame,
                             QGridLayout, QHBoxLayout, QLabel, QLineEdit, QListWidget,
                             QPlainTextEdit, QProgressBar, QPushButton, QSpinBox, QVBoxLayout,
                             QWidget)

from . import host
from .controller import ConnectionSettings, Controller
from .jobs import (CACHE_INTERVAL_HELP, CACHE_INTERVAL_MAX, DEPTH_MODEL_HELP,
                   DEPTH_MODEL_SD2_DEPTH, ESTIMATE_DEPTH, SD2_DEPTH_FAMILY, SEED_MAX,
                   JobSettings, Mode, base_model_names, default_depth_source,
                   depth_model_choices, model_family, parse_seed)
from .protocol.messages import TILINGS
from .widgets import Fold, FormScroll, MessageView, RefreshingComboBox, SeedValidator

PUMP_INTERVAL_MS = 30
DAEMON_MODEL = "(daemon's current model)"
DEPTH_LAYER_HELP = ("What Depth jobs read as depth: a layer's brightness (near = bright), or "
                    "depth estimated from the canvas by the daemon, which needs a "
                    "depth-estimation model on its machine.")
# The docker's minimum height is what stays in view: with Krita's default dockers it has to
# fit a 1366x768 screen, so the fields scroll and the rest is kept small.
STATUS_LINES = 3
PANEL_MARGIN = 4
PROGRESS_HEIGHT = 8
MODE_COLUMNS = 3           # mode buttons a row: a docker narrow enough for a laptop screen
COMBO_MIN_CHARACTERS = 12


class AtelierPanel(QWidget):
    """The docker's contents. Always in view: the mode buttons and Cancel, the progress
    (or a batch's Result, Apply and Discard) and the last message. Above them scroll the
    connection, the fields (those rarely changed folded away) and History."""

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
        layout.setContentsMargins(PANEL_MARGIN, PANEL_MARGIN, PANEL_MARGIN, PANEL_MARGIN)
        layout.setSpacing(PANEL_MARGIN)
        scroll = FormScroll(self)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.form_scroll = scroll
        scroll.setWidget(self._build_form())
        for fold in (self.connection_fold, self.more_fold):
            fold.button.toggled.connect(scroll.updateGeometry)   # its width may change
        layout.addWidget(scroll, 1)
        self._build_actions(layout)

    def _build_status(self, page: QWidget) -> QHBoxLayout:
        row = QHBoxLayout()
        self.status_label = _status_label(page)
        self.connect_button = QPushButton("Connect", page)
        self.connect_button.clicked.connect(self.reconnect)
        row.addWidget(self.status_label, 1)
        row.addWidget(self.connect_button, 0, Qt.AlignTop)
        return row

    def _build_form(self) -> QWidget:
        page = QWidget(self)
        column = QVBoxLayout(page)
        column.setContentsMargins(0, 0, 0, 0)
        column.addLayout(self._build_status(page))
        connection = Fold("Connection settings", page)
        conn = self.controller.connection
        self.host_edit = QLineEdit(conn.host, connection.body)
        self.port_spin = _spin(1, 65535, conn.port, connection.body)
        self.token_edit = QLineEdit(conn.token, connection.body)
        self.token_edit.setEchoMode(QLineEdit.Password)
        for label, widget in (("Address", self.host_edit), ("Port", self.port_spin),
                              ("Token", self.token_edit)):
            connection.form.addRow(label, widget)
        self.connection_fold = connection
        column.addWidget(connection)
        column.addLayout(self._build_fields(page))
        self.more_fold = self._build_more(page)
        column.addWidget(self.more_fold)
        column.addLayout(self._build_history(page))
        column.addStretch(1)
        return page

    def _build_fields(self, page: QWidget) -> QFormLayout:
        form = QFormLayout()
        form.setRowWrapPolicy(QFormLayout.WrapLongRows)
        self.prompt_edit = QPlainTextEdit(page)
        self.prompt_edit.setPlaceholderText("what to paint")
        self.prompt_edit.setMaximumHeight(70)
        self.negative_edit = QLineEdit(page)
        self.negative_edit.setPlaceholderText("what to avoid")
        self.model_combo = _combo(page)
        self.model_combo.currentIndexChanged.connect(self._refresh_depth_models)   # its family
        self.load_button = QPushButton("Load", page)
        self.load_button.clicked.connect(self.load_chosen_model)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.load_button)
        self.strength_spin = _dspin(0.0, 1.0, 0.6, 0.05, page)
        self.seed_edit = QLineEdit(page)
        self.seed_edit.setPlaceholderText("random")
        self.seed_edit.setValidator(SeedValidator(self.seed_edit))
        self.seed_edit.setToolTip(f"0 to {SEED_MAX}; empty for a new random seed each run")
        self.batch_spin = _spin(1, 16, 1, page)
        self.steps_spin = _spin(1, 150, 20, page)
        self.depth_combo = _combo(page, RefreshingComboBox(self._refresh_depth_sources, page))
        self.depth_combo.setToolTip(DEPTH_LAYER_HELP)
        # Until the painter picks a depth source, the field follows the document's default.
        self._depth_picked = False
        self.depth_combo.currentIndexChanged.connect(self._depth_source_picked)
        # Labels say each model's kind; the item data is the name a job sends (None: default).
        self.depth_model_combo = _combo(page)
        self.depth_model_combo.setToolTip(DEPTH_MODEL_HELP)
        for label, widget in (("Prompt", self.prompt_edit), ("Negative", self.negative_edit),
                              ("Model", model_row), ("Strength", self.strength_spin),
                              ("Seed", self.seed_edit), ("Batch", self.batch_spin),
                              ("Steps", self.steps_spin), ("Depth layer", self.depth_combo),
                              ("Depth model", self.depth_model_combo)):
            form.addRow(label, widget)
        return form

    def _build_more(self, page: QWidget) -> Fold:
        more = Fold("More settings", page)
        body = more.body
        self.cache_spin = _spin(1, CACHE_INTERVAL_MAX, 1, body)
        self.cache_spin.setSpecialValueText("off (full quality)")
        self.cache_spin.setToolTip(CACHE_INTERVAL_HELP)
        self.guidance_spin = _dspin(0.0, 30.0, 7.0, 0.5, body)
        self.tiling_combo = QComboBox(body)
        self.tiling_combo.addItems(TILINGS)
        self.grow_spin = _spin(0, 256, 8, body)
        self.feather_spin = _spin(0, 256, 8, body)
        self.max_side_spin = _spin(0, 4096, 0, body)
        self.max_side_spin.setSpecialValueText("model's own")
        self.max_side_spin.setSingleStep(64)
        self.previews_check = QCheckBox("show step previews", body)
        self.previews_check.setChecked(True)
        for label, widget in (("Step cache", self.cache_spin), ("Guidance", self.guidance_spin),
                              ("Seamless axes", self.tiling_combo), ("Grow", self.grow_spin),
                              ("Feather", self.feather_spin), ("Max size", self.max_side_spin),
                              ("", self.previews_check)):
            more.form.addRow(label, widget)
        return more

    def _build_history(self, page: QWidget) -> QVBoxLayout:
        column = QVBoxLayout()
        column.addWidget(QLabel("History", page))
        self.history_list = QListWidget(page)
        self.history_list.setMinimumHeight(4 * self.history_list.fontMetrics().height())
        column.addWidget(self.history_list)
        row = QHBoxLayout()
        self.recall_button = QPushButton("Recall", page)
        self.recall_button.clicked.connect(self.recall_selected)
        self.rerun_button = QPushButton("Run again", page)
        self.rerun_button.clicked.connect(self.rerun_selected)
        row.addWidget(self.recall_button)
        row.addWidget(self.rerun_button)
        column.addLayout(row)
        return column

    def _build_actions(self, column: QVBoxLayout) -> None:
        """What stays in view below the scrolling fields."""
        grid = QGridLayout()
        grid.setSpacing(PANEL_MARGIN)
        self.mode_buttons: dict[Mode, QPushButton] = {}
        for index, mode in enumerate(Mode):
            button = QPushButton(mode.label, self)
            button.clicked.connect(lambda _checked=False, m=mode: self.run(m))
            grid.addWidget(button, index // MODE_COLUMNS, index % MODE_COLUMNS)
            self.mode_buttons[mode] = button
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.clicked.connect(self.controller.cancel)
        grid.addWidget(self.cancel_button, len(Mode) // MODE_COLUMNS, MODE_COLUMNS - 1)
        column.addLayout(grid)

        self.progress_bar = QProgressBar(self)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.setMaximumHeight(PROGRESS_HEIGHT)
        column.addWidget(self.progress_bar)

        self.result_row = QWidget(self)     # in the progress bar's place while a batch waits
        row = QHBoxLayout(self.result_row)
        row.setContentsMargins(0, 0, 0, 0)
        self.result_spin = _spin(1, 1, 1, self.result_row)
        self.result_spin.valueChanged.connect(self._pick_result)
        self.apply_button = QPushButton("Apply", self.result_row)
        self.apply_button.clicked.connect(self.controller.apply_result)
        self.discard_button = QPushButton("Discard", self.result_row)
        self.discard_button.clicked.connect(self.controller.discard_results)
        row.addWidget(QLabel("Result", self.result_row))
        row.addWidget(self.result_spin)
        row.addWidget(self.apply_button)
        row.addWidget(self.discard_button)
        column.addWidget(self.result_row)

        self.message_view = MessageView(self)
        column.addWidget(self.message_view)

    # ------------------------------------------------------------ fields <-> settings
    def settings(self) -> JobSettings:
        model = self.model_combo.currentText()
        depth = self.depth_combo.currentText()
        return JobSettings(
            prompt=self.prompt_edit.toPlainText(),
            negative_prompt=self.negative_edit.text(),
            model=None if model in ("", DAEMON_MODEL) else model,
            strength=self.strength_spin.value(),
            seed=parse_seed(self.seed_edit.text()),
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
        self.seed_edit.setText("" if settings.seed is None else str(settings.seed))
        self.batch_spin.setValue(settings.batch_size)
        self.steps_spin.setValue(settings.steps)
        self.guidance_spin.setValue(settings.guidance)
        _choose(self.tiling_combo, settings.tiling)
        self.grow_spin.setValue(settings.mask_grow)
        self.feather_spin.setValue(settings.mask_feather)
        self._refresh_depth_sources(settings.depth_layer or ESTIMATE_DEPTH)
        self._show_depth_models(settings.depth_model)
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
        try:
            settings = self.settings()
        except ValueError as exc:      # the fields' validators should not let this happen
            self.controller.message = str(exc)
            self.refresh()
            return False
        return self.controller.start(mode, settings)

    def document_changed(self) -> None:
        """Another document is in front: its own depth layer becomes the default."""
        self._depth_picked = False
        self.refresh()

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
    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 (Qt's name)
        super().showEvent(event)
        self.refresh()      # layers may have changed while the docker was hidden

    def refresh(self) -> None:
        c = self.controller
        _show_status(self.status_label, c.connection_text)
        self.message_view.show_text(c.message)
        step, total = c.progress
        self.progress_bar.setMaximum(max(total, 1))
        self.progress_bar.setValue(step if c.busy else 0)
        self.cancel_button.setEnabled(c.busy)
        for button in self.mode_buttons.values():
            button.setEnabled(not c.busy)
        count = c.batch_size
        for widget in (self.result_spin, self.apply_button, self.discard_button):
            widget.setEnabled(count > 1)
        self.result_row.setVisible(count > 1)
        self.progress_bar.setVisible(count <= 1)
        self.result_spin.blockSignals(True)
        self.result_spin.setMaximum(max(count, 1))
        self.result_spin.setValue(c.batch_index + 1)
        self.result_spin.blockSignals(False)
        _fill(self.model_combo, [DAEMON_MODEL] + base_model_names(c.models))
        self._refresh_depth_sources()
        self._refresh_depth_models()
        entries = [entry.summary() for entry in c.history]
        if entries != [self.history_list.item(i).text() for i in range(self.history_list.count())]:
            self.history_list.clear()
            self.history_list.addItems(entries)

    def _refresh_depth_sources(self, chosen: Optional[str] = None) -> None:
        """The Depth layer field: the document's paint layers as they are now, and
        estimating, disabled with the daemon's reason once it said it cannot. Keeps the
        choice (or takes ``chosen``) while it is there and usable, else the default."""
        document = self.controller.document()
        layers = document.paint_layer_names() if document is not None else []
        problem = self.controller.depth_estimate_problem
        combo = self.depth_combo
        if chosen is not None:
            self._depth_picked = True
        wanted = chosen if chosen is not None else combo.currentText()
        usable = wanted in layers or (wanted == ESTIMATE_DEPTH and problem is None)
        if not (usable and self._depth_picked):
            wanted = default_depth_source(layers, problem)
        combo.blockSignals(True)
        _fill(combo, [ESTIMATE_DEPTH] + layers)
        estimate = combo.model().item(combo.findText(ESTIMATE_DEPTH))
        estimate.setEnabled(problem is None)
        unavailable = f"Estimating depth is unavailable: {problem}" if problem else ""
        estimate.setToolTip(unavailable)
        combo.setToolTip(f"{DEPTH_LAYER_HELP}\n\n{unavailable}" if unavailable
                         else DEPTH_LAYER_HELP)
        _choose(combo, wanted)
        combo.blockSignals(False)

    def _depth_source_picked(self, _index: int) -> None:
        self._depth_picked = True

    def _refresh_depth_models(self, *_signal: object) -> None:
        self._show_depth_models(self.depth_model_combo.currentData())

    def _show_depth_models(self, chosen: Optional[str]) -> None:
        """The Depth model field: the daemon's conditioners for the chosen model's family,
        with ``chosen`` (a name, or None for the daemon's default) selected."""
        c = self.controller
        model = self.model_combo.currentText()
        name = c.current_model if model in ("", DAEMON_MODEL) else model
        family = model_family(c.models, name)
        combo = self.depth_model_combo
        _fill_choices(combo, depth_model_choices(c.models, chosen, family), chosen)
        combo.setToolTip(DEPTH_MODEL_SD2_DEPTH if family == SD2_DEPTH_FAMILY
                         else DEPTH_MODEL_HELP)


def _combo(parent: QWidget, combo: Optional[QComboBox] = None) -> QComboBox:
    """A combo box that may be narrower than its longest item (names can be long paths)."""
    combo = combo if combo is not None else QComboBox(parent)
    combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(COMBO_MIN_CHARACTERS)
    return combo


def _status_label(parent: QWidget) -> QLabel:
    label = QLabel(parent)
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextSelectableByMouse)
    label.setMaximumHeight(STATUS_LINES * label.fontMetrics().lineSpacing())
    return label


def _show_status(label: QLabel, text: str) -> None:
    """A long text is cut at the label's height (the docker must fit a laptop screen);
    its tooltip holds all of it."""
    if label.text() != text:
        label.setText(text)
        label.setToolTip(text)


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
        self.panel.document_changed()
