"""The docker's widgets: fields in, controller actions out, controller state shown.

``AtelierPanel`` is a plain QWidget (usable without a Krita window, which is
how the tests drive it); ``AtelierDocker`` puts it into Krita's docker frame.
Shaped like krita-ai-diffusion's docker: the model and the mode (a drop-down), the
prompt, one Generate button (what it does follows the mode and the selection), the
rest folded away; results and History as thumbnails.
"""

from __future__ import annotations

import weakref
from typing import Callable, Optional

from krita import DockWidget, Extension, Krita
from PyQt5.QtCore import QSize, Qt, QTimer
from PyQt5.QtGui import QColor, QFont, QIcon, QImage, QPixmap, QShowEvent
from PyQt5.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout,
                             QFrame, QHBoxLayout, QLabel, QLineEdit, QListView, QListWidget,
                             QListWidgetItem, QPlainTextEdit, QProgressBar, QPushButton,
                             QSizePolicy, QSlider, QSpinBox, QStackedWidget, QToolButton,
                             QVBoxLayout, QWidget)

from . import actions, host
from .assets import TEXTURE_SOURCE_HELP, TEXTURE_SOURCES, upscale_sizes, upscaler_choices
from .controller import ConnectionSettings, Controller
from .guide_widgets import ControlList, ReferenceList, RegionList
from .guides import Guides, from_annotation, kind_choices, offered_kinds, to_annotation
from .live import LIVE_STRENGTH
from .jobs import (CACHE_INTERVAL_HELP, CACHE_INTERVAL_MAX, DEPTH_MODEL_HELP,
                   DEPTH_MODEL_SD2_DEPTH, ESTIMATE_DEPTH, SD2_DEPTH_FAMILY, SEED_MAX,
                   JobSettings, Mode, Workflow, action_label, base_model_names,
                   default_depth_source, depth_model_choices, job_mode, model_family,
                   parse_seed, queue_text, shown_fields, workflow_of)
from .loras import (LORAS_FULL, PRESET_HELP, lora_choices, preset_choices,
                    preset_override_note)
from .protocol.messages import TILINGS
from .widgets import (Fold, FormScroll, LoraList, MessageView, RefreshingComboBox,
                      SeedValidator, fill_choices)

PUMP_INTERVAL_MS = 30
STEPS_HELP = "Denoising steps: more is slower and usually cleaner"
GUIDANCE_HELP = "How closely the image follows the prompt (CFG scale)"
SELECTION_CHECK_MS = 400   # how often the Generate button looks whether there is a selection
DAEMON_MODEL = "(daemon's current model)"
DEPTH_LAYER_HELP = ("What Depth jobs read as depth: a layer's brightness (near = bright), or "
                    "depth estimated from the canvas by the daemon, which needs a "
                    "depth-estimation model on its machine.")
# The docker's minimum height is what stays in view: with Krita's default dockers it has to
# fit a 1366x768 screen, so the fields scroll and the rest is kept small.
STATUS_LINES = 3
PANEL_MARGIN = 4
PANEL_SPACING = 3
PROGRESS_HEIGHT = 6
COMBO_MIN_CHARACTERS = 12
MODE_CHARACTERS = 8
PROMPT_LINES = 2           # it scrolls beyond; the docker has to fit a laptop screen
RESULT_ICON = 30           # a batch's thumbnails, next to Apply and Discard
THUMB_ICON = 56            # thumbnails as shown in the docker, pixels


class AtelierPanel(QWidget):
    """The docker's contents. Always in view: Generate (with the batch size and Cancel),
    the progress and queue, a batch's thumbnails with Apply and Discard while it waits,
    and the last message. Above them scroll the connection, the model, the mode and its
    own fields, the prompt, "More settings" (folded) and History."""

    def __init__(self, controller: Controller, parent: Optional[QWidget] = None,
                 remember: Optional[Callable[[ConnectionSettings], None]] = None):
        super().__init__(parent)
        self.controller = controller
        self._remember = remember
        self._has_selection = False
        # Weak, so the controller does not keep a closed panel (and its Qt objects) alive.
        controller.on_change = _weak_call(self.refresh)
        self._build()
        self.load_guides()
        self.timer = QTimer(self)
        self.timer.setInterval(PUMP_INTERVAL_MS)
        self.timer.timeout.connect(controller.pump)
        self.timer.start()
        self.selection_timer = QTimer(self)
        self.selection_timer.setInterval(SELECTION_CHECK_MS)
        self.selection_timer.timeout.connect(self._check_selection)
        self.selection_timer.start()
        self.refresh()

    # ------------------------------------------------------------ layout
    def _build(self) -> None:
        layout = QVBoxLayout(self)
        layout.setContentsMargins(PANEL_MARGIN, PANEL_MARGIN, PANEL_MARGIN, PANEL_MARGIN)
        layout.setSpacing(PANEL_SPACING)
        scroll = FormScroll(self)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.form_scroll = scroll
        scroll.setWidget(self._build_form())
        for fold in (self.connection_fold, self.more_fold, *self.guide_folds):
            fold.button.toggled.connect(scroll.updateGeometry)   # its width may change
        layout.addWidget(scroll, 1)
        self._build_actions(layout)

    def _build_status(self, page: QWidget) -> QHBoxLayout:
        row = QHBoxLayout()
        self.status_label = _status_label(page)
        self.connect_button = QPushButton("Reconnect", page)
        self.connect_button.setToolTip("Connect to the daemon again with the connection "
                                       "settings (one click after restarting it)")
        self.connect_button.clicked.connect(self.reconnect)
        row.addWidget(self.status_label, 1)
        row.addWidget(self.connect_button, 0, Qt.AlignTop)
        return row

    def _build_form(self) -> QWidget:
        page = QWidget(self)
        column = QVBoxLayout(page)
        column.setContentsMargins(0, 0, 0, 0)
        column.addLayout(self._build_status(page))
        column.addWidget(self._build_live(page))
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
        for fold in self._build_guides(page):
            column.addWidget(fold)
        self.more_fold = self._build_more(page)
        column.addWidget(self.more_fold)
        column.addLayout(self._build_history(page), 1)
        return page

    def _build_fields(self, page: QWidget) -> QFormLayout:
        form = QFormLayout()
        form.setRowWrapPolicy(QFormLayout.DontWrapRows)
        form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        self.model_combo = _combo(page)
        self.model_combo.setToolTip("The daemon's checkpoints; the job loads the one chosen")
        self.model_combo.currentIndexChanged.connect(self._refresh_depth_models)   # its family
        self.model_combo.currentIndexChanged.connect(lambda _i: self.lora_list.refresh())
        self.mode_combo = QComboBox(page)
        for workflow in Workflow:
            self.mode_combo.addItem(workflow.short_label, workflow.value)
            self.mode_combo.setItemData(self.mode_combo.count() - 1, workflow.help,
                                        Qt.ToolTipRole)
        self.mode_combo.currentIndexChanged.connect(self._mode_changed)
        self.prompt_edit = QPlainTextEdit(page)
        self.prompt_edit.setPlaceholderText("what to paint")
        self.prompt_edit.setFixedHeight(PROMPT_LINES * self.prompt_edit.fontMetrics().lineSpacing()
                                        + 2 * int(self.prompt_edit.document().documentMargin())
                                        + 2 * self.prompt_edit.frameWidth())
        self.strength_slider = QSlider(Qt.Horizontal, page)
        self.strength_slider.setRange(0, 100)
        self.strength_slider.setValue(60)
        self.strength_caption = QLabel("Strength", page)
        self.strength_label = QLabel("60%", page)
        self.strength_label.setMinimumWidth(self.strength_label.fontMetrics()
                                            .horizontalAdvance("100%"))
        self.strength_slider.valueChanged.connect(
            lambda value: self.strength_label.setText(f"{value}%"))
        self.strength_slider.setToolTip("How much Refine changes: low keeps the picture, "
                                        "100% repaints it")
        strength_row = QWidget(page)
        row = QHBoxLayout(strength_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.strength_caption)
        row.addWidget(self.strength_slider, 1)
        row.addWidget(self.strength_label)
        self.depth_combo = _combo(page, RefreshingComboBox(self._refresh_depth_sources, page))
        self.depth_combo.setToolTip(DEPTH_LAYER_HELP)
        # Until the painter picks a depth source, the field follows the document's default.
        self._depth_picked = False
        self.depth_combo.currentIndexChanged.connect(self._depth_source_picked)
        self.depth_combo.currentIndexChanged.connect(lambda _i: self._show_mode_fields())
        # Labels say each model's kind; the item data is the name a job sends (None: default).
        self.depth_model_combo = _combo(page)
        self.depth_model_combo.setToolTip(DEPTH_MODEL_HELP)
        # Upscale's own fields: the size, the upscaler, the refine strength.
        self.upscale_size_combo = QComboBox(page)
        for label, factor, side in upscale_sizes():
            self.upscale_size_combo.addItem(label, f"{factor:g}:{side}")
        self.upscale_size_combo.setToolTip("How big the result is: a factor, or the length of "
                                           "its longest side")
        self.upscaler_combo = _combo(page)
        self.upscaler_combo.setToolTip("Lanczos: a plain resize; or one of the daemon's "
                                       "super-resolution models (ESRGAN / upscale_models "
                                       "folders)")
        self.refine_spin = _spin(0, 100, 0, page)
        self.refine_spin.setSuffix("%")
        self.refine_spin.setSpecialValueText("off (plain upscale)")
        self.refine_spin.setToolTip("Above 0: the enlarged image is repainted in tiles at "
                                    "this strength with the prompt (the Model field's model, "
                                    "Steps, LoRAs); low keeps the picture and adds detail")
        self.texture_source_combo = QComboBox(page)
        self.texture_source_combo.addItems(TEXTURE_SOURCES)
        self.texture_source_combo.setToolTip(TEXTURE_SOURCE_HELP)
        self._mode_rows: dict[str, list[QWidget]] = {}
        self._mode_rows["strength"] = [strength_row]
        self.strength_row = strength_row
        for key, label, widget in (("", "Model", self.model_combo),
                                   ("depth", "Depth layer", self.depth_combo),
                                   ("depth", "Depth model", self.depth_model_combo),
                                   ("upscale", "Upscale to", self.upscale_size_combo),
                                   ("upscale", "Upscaler", self.upscaler_combo),
                                   ("upscale", "Refine", self.refine_spin),
                                   ("texture", "Maps from", self.texture_source_combo)):
            caption = QLabel(label, page)
            form.addRow(caption, widget)
            if key:
                self._mode_rows.setdefault(key, []).extend((caption, widget))
        return form

    def _build_more(self, page: QWidget) -> Fold:
        more = Fold("More settings", page)
        body = more.body
        self.negative_edit = QLineEdit(body)
        self.negative_edit.setPlaceholderText("what to avoid")
        self.seed_edit = QLineEdit(body)
        self.seed_edit.setPlaceholderText("random")
        self.seed_edit.setValidator(SeedValidator(self.seed_edit))
        self.seed_edit.setToolTip(f"0 to {SEED_MAX}; empty for a new random seed each run")
        self.preset_combo = _combo(body)
        self.preset_combo.setToolTip(PRESET_HELP)
        self.preset_combo.currentIndexChanged.connect(lambda _i: self._show_preset_overrides())
        self.steps_spin = _spin(1, 150, 20, body)
        self.steps_spin.setToolTip(STEPS_HELP)
        self.cache_spin = _spin(1, CACHE_INTERVAL_MAX, 1, body)
        self.cache_spin.setSpecialValueText("off (full quality)")
        self.cache_spin.setToolTip(CACHE_INTERVAL_HELP)
        self.guidance_spin = _dspin(0.0, 30.0, 7.0, 0.5, body)
        self.guidance_spin.setToolTip(GUIDANCE_HELP)
        self.lora_list = LoraList(self._lora_choices, body)
        self.lora_list.full.connect(self._loras_full)
        self.tiling_combo = QComboBox(body)
        self.tiling_combo.addItems(TILINGS)
        self.grow_spin = _spin(0, 256, 8, body)
        self.feather_spin = _spin(0, 256, 8, body)
        self.max_side_spin = _spin(0, 4096, 0, body)
        self.max_side_spin.setSpecialValueText("model's own")
        self.max_side_spin.setSingleStep(64)
        self.previews_check = QCheckBox("show step previews", body)
        self.previews_check.setChecked(True)
        self.load_button = QPushButton("Load the model now", body)
        self.load_button.setToolTip("Jobs load their model themselves; this loads it ahead")
        self.load_button.clicked.connect(self.load_chosen_model)
        for label, widget in (("Negative", self.negative_edit), ("Seed", self.seed_edit),
                              ("Sampler preset", self.preset_combo),
                              ("Steps", self.steps_spin), ("Step cache", self.cache_spin),
                              ("Guidance", self.guidance_spin),
                              ("Seamless axes", self.tiling_combo), ("Grow", self.grow_spin),
                              ("Feather", self.feather_spin), ("Max size", self.max_side_spin),
                              ("", self.previews_check), ("", self.load_button)):
            more.form.addRow(label, widget)
        guidance_row, _ = more.form.getWidgetPosition(self.guidance_spin)
        more.form.insertRow(guidance_row + 1, self.lora_list)    # the docker's full width
        return more

    def _build_guides(self, page: QWidget) -> list[Fold]:
        """Control layers, reference images and regions: a fold each (closed at first, so
        the prompt keeps its room), their rows kept in the document."""
        self._loading_guides = False
        self.control_list = ControlList(self._layers, self._kind_choices, self._active_layer)
        self.control_list.from_image.connect(self.control_from_image)
        self.controller.on_control_layer = _weak_call3(self._control_layer_made)
        self.reference_list = ReferenceList(self._layers, self._active_layer,
                                            self._pick_reference_file)
        self.region_list = RegionList(self._layers, self._active_layer)
        self.guide_folds: list[Fold] = []
        for title, rows in (("Control layers", self.control_list),
                            ("Reference images", self.reference_list),
                            ("Regions", self.region_list)):
            fold = Fold(title, page)
            fold.button.setToolTip(rows.toolTip())
            rows.setParent(fold.body)
            fold.form.addRow(rows)
            rows.changed.connect(self._guides_changed)
            rows.full.connect(self._rows_full)
            self.guide_folds.append(fold)
        self.control_fold, self.reference_fold, self.region_fold = self.guide_folds
        return self.guide_folds

    def _build_history(self, page: QWidget) -> QVBoxLayout:
        column = QVBoxLayout()
        title = QLabel("History", page)
        title.setToolTip("Click a thumbnail to show it on the canvas again, double-click to "
                         "apply it; its tooltip has the job's settings")
        column.addWidget(title)
        self.history_list = _thumbnail_list(page, wrap=True)
        self.history_list.setToolTip(title.toolTip())
        self.history_list.setMinimumWidth(THUMB_ICON + 24)     # as narrow as the docker
        self.history_list.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Expanding)
        # One row of thumbnails at least; it takes the height the docker has to spare.
        self.history_list.setMinimumHeight(self.history_list.gridSize().height() + 8)
        self.history_list.itemClicked.connect(self._history_clicked)
        self.history_list.itemDoubleClicked.connect(self._history_double_clicked)
        column.addWidget(self.history_list, 1)
        row = QHBoxLayout()
        self.recall_button = QPushButton("Recall settings", page)
        self.recall_button.setToolTip("Put the chosen job's settings (seed included) back "
                                      "into the fields")
        self.recall_button.clicked.connect(self.recall_selected)
        self.rerun_button = QPushButton("Run again", page)
        self.rerun_button.clicked.connect(self.rerun_selected)
        row.addWidget(self.recall_button)
        row.addWidget(self.rerun_button)
        column.addLayout(row)
        return column

    def _build_actions(self, column: QVBoxLayout) -> None:
        """What stays in view below the scrolling fields: the prompt, the mode's strength,
        Generate with the mode, batch size and Cancel, the progress (or a batch's
        thumbnails) and the last message."""
        column.addWidget(self.prompt_edit)
        self.prompt_edit.setParent(self)
        column.addWidget(self.strength_row)
        self.strength_row.setParent(self)
        row = QHBoxLayout()
        row.setSpacing(PANEL_MARGIN)
        self.generate_button = QPushButton("Generate", self)
        font = QFont(self.generate_button.font())
        font.setBold(True)
        self.generate_button.setFont(font)
        self.generate_button.setDefault(True)
        self.generate_button.setMinimumHeight(int(1.6 * self.fontMetrics().height()))
        self.generate_button.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.generate_button.clicked.connect(self.generate)
        self.mode_combo.setParent(self)
        self.mode_combo.setToolTip("What Generate does")
        self.mode_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.mode_combo.setMinimumContentsLength(MODE_CHARACTERS)
        self.mode_combo.setSizePolicy(QSizePolicy.Maximum, QSizePolicy.Fixed)
        self.batch_spin = _spin(1, 16, 1, self)
        self.batch_spin.setPrefix("\u00d7")
        self.batch_spin.setToolTip("Images a click makes (a batch to pick from)")
        self.cancel_button = QToolButton(self)
        self.cancel_button.setText("\u2715")
        self.cancel_button.setToolTip("Cancel: stop the running job and drop the queued ones")
        self.cancel_button.setMinimumHeight(self.generate_button.minimumHeight())
        self.cancel_button.clicked.connect(self.controller.cancel)
        row.addWidget(self.generate_button, 2)
        row.addWidget(self.mode_combo)
        row.addWidget(self.batch_spin)
        self.queue_label = QLabel("", self)
        self.queue_label.setToolTip("Jobs waiting in the plugin: each is sent when the one "
                                    "before it ends; Cancel drops them")
        row.addWidget(self.queue_label)
        row.addWidget(self.cancel_button)
        column.addLayout(row)

        self.progress_bar = QProgressBar(self)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.setFixedHeight(PROGRESS_HEIGHT)
        column.addWidget(self.progress_bar)

        self.result_row = QWidget(self)     # in the progress bar's place while a batch waits
        results = QHBoxLayout(self.result_row)
        results.setContentsMargins(0, 0, 0, 0)
        results.setSpacing(PANEL_MARGIN)
        self.results_list = _thumbnail_list(self.result_row, wrap=False, icon=RESULT_ICON)
        self.results_list.itemClicked.connect(self._result_clicked)
        self.results_list.itemDoubleClicked.connect(self._result_double_clicked)
        self.apply_button = QPushButton("Apply", self.result_row)
        self.apply_button.setToolTip("Keep the result shown as a layer of its own "
                                     "(or double-click its thumbnail)")
        self.apply_button.clicked.connect(self.apply)
        self.discard_button = QPushButton("Discard", self.result_row)
        self.discard_button.clicked.connect(self.controller.discard_results)
        results.addWidget(self.results_list, 1)
        results.addWidget(self.apply_button)
        results.addWidget(self.discard_button)
        self.results_list.setFixedHeight(RESULT_ICON + 8)
        self.results_list.setMinimumWidth(RESULT_ICON + 8)      # never wider than the docker
        self.results_list.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Fixed)
        # The last message, or while a batch waits (its message only says to pick one)
        # its thumbnails, in one place of one height: the docker keeps its size.
        self.message_view = MessageView(self)
        self.message_view.setMinimumHeight(self.message_view.height())
        self.message_view.setMaximumHeight(16777215)
        self.bottom_stack = QStackedWidget(self)
        self.bottom_stack.addWidget(self.message_view)
        self.bottom_stack.addWidget(self.result_row)
        self.bottom_stack.setFixedHeight(max(self.message_view.minimumHeight(),
                                             self.results_list.height()))
        column.addWidget(self.bottom_stack)

    def _build_live(self, page: QWidget) -> QWidget:
        """Live: the canvas goes to the daemon after each change, its result in one live
        layer; its own strength and Apply. At the top of the scrolling part: the docker's
        minimum height (1366x768 screens) stays as it was."""
        self.live_row = QWidget(page)
        row = QHBoxLayout(self.live_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(PANEL_MARGIN)
        self.live_check = QCheckBox("Live", self.live_row)
        self.live_check.setToolTip("While on, each change of the canvas (or the selection's "
                                   "region) is refined by the daemon a moment after you stop, "
                                   "shown in the [Atelier live] layer on top; off removes it")
        self.live_check.toggled.connect(self._live_toggled)
        self.live_slider = QSlider(Qt.Horizontal, self.live_row)
        self.live_slider.setRange(0, 100)
        self.live_slider.setValue(round(LIVE_STRENGTH * 100))
        self.live_slider.setToolTip("How much Live changes the canvas")
        self.live_label = QLabel(f"{self.live_slider.value()}%", self.live_row)
        self.live_label.setMinimumWidth(self.live_label.fontMetrics()
                                        .horizontalAdvance("100%"))
        self.live_slider.valueChanged.connect(self._live_strength_changed)
        self.live_apply_button = QPushButton("Apply", self.live_row)
        self.live_apply_button.setToolTip("Copy the live result into a new layer")
        self.live_apply_button.clicked.connect(self.controller.apply_live)
        row.addWidget(self.live_check)
        row.addWidget(self.live_slider, 1)
        row.addWidget(self.live_label)
        row.addWidget(self.live_apply_button)
        self.controller.live_settings = self.settings
        self.controller.live_strength = self.live_slider.value() / 100.0
        return self.live_row

    def _live_toggled(self, on: bool) -> None:
        self.controller.live_settings = self.settings
        self.controller.set_live(on)

    def _live_strength_changed(self, value: int) -> None:
        self.live_label.setText(f"{value}%")
        self.controller.live_strength = value / 100.0

    # ------------------------------------------------------------ fields <-> settings
    def settings(self) -> JobSettings:
        model = self.model_combo.currentText()
        depth = self.depth_combo.currentText()
        factor, side = (self.upscale_size_combo.currentData() or "2:0").split(":")
        return JobSettings(
            prompt=self.prompt_edit.toPlainText(),
            negative_prompt=self.negative_edit.text(),
            model=None if model in ("", DAEMON_MODEL) else model,
            strength=self.strength_slider.value() / 100.0,
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
            loras=self.lora_list.chosen(),
            sampler_preset=self.preset_combo.currentData() or None,
            upscale_factor=float(factor),
            upscale_side=int(side),
            upscaler=self.upscaler_combo.currentData() or None,
            refine_strength=self.refine_spin.value() / 100.0,
            texture_source=self.texture_source_combo.currentText(),
            guides=self.guides(),
        )

    def show_settings(self, settings: JobSettings) -> None:
        self.prompt_edit.setPlainText(settings.prompt)
        self.negative_edit.setText(settings.negative_prompt)
        _choose(self.model_combo, settings.model or DAEMON_MODEL)
        self.strength_slider.setValue(round(settings.strength * 100))
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
        self.lora_list.set_rows(settings.loras)
        self._show_presets(settings.sampler_preset)
        size = self.upscale_size_combo.findData(
            f"{settings.upscale_factor:g}:{settings.upscale_side}")
        if size >= 0:
            self.upscale_size_combo.setCurrentIndex(size)
        fill_choices(self.upscaler_combo, upscaler_choices(self.controller.models,
                                                           settings.upscaler), settings.upscaler)
        self.refine_spin.setValue(round(settings.refine_strength * 100))
        _choose(self.texture_source_combo, settings.texture_source)
        self.show_guides(settings.guides)

    # ------------------------------------------------------------ controls, references, regions
    def guides(self) -> Guides:
        return Guides(self.control_list.values(), self.reference_list.values(),
                      self.region_list.values())

    def show_guides(self, guides: Guides) -> None:
        """The rows of ``guides`` in the three lists (kept in the document)."""
        self.control_list.set_rows(guides.controls)
        self.reference_list.set_rows(guides.references)
        self.region_list.set_rows(guides.regions)
        self._guides_changed()

    def load_guides(self) -> None:
        """The rows saved in the document in front (none when it has none)."""
        document = self.controller.document()
        guides = Guides()
        if document is not None:
            try:
                guides = from_annotation(document.read_annotation())
            except ValueError as exc:
                self.controller.message = f"{exc}; its rows start empty"
        self._loading_guides = True
        try:
            self.show_guides(guides)
        finally:
            self._loading_guides = False

    def save_guides(self) -> None:
        document = self.controller.document()
        if document is None or not document.is_open():
            return
        guides = self.guides()
        if guides.empty and not document.read_annotation():
            return          # nothing to keep: a document without rows stays untouched
        document.write_annotation(to_annotation(guides))

    def _guides_changed(self) -> None:
        for fold, rows in zip(self.guide_folds, (self.control_list, self.reference_list,
                                                 self.region_list)):
            fold.button.setText(rows.title())
        if not self._loading_guides:
            self.save_guides()

    def _rows_full(self, text: str) -> None:
        self.controller.message = text
        self.refresh()

    def _layers(self, groups: bool) -> list[tuple[str, str]]:
        document = self.controller.document()
        return document.layer_choices(groups) if document is not None else []

    def _active_layer(self) -> Optional[tuple[str, str]]:
        document = self.controller.document()
        return document.active_layer() if document is not None else None

    def _kind_choices(self, chosen: Optional[str]) -> list[tuple[str, Optional[str]]]:
        c = self.controller
        return kind_choices(offered_kinds(c.capabilities), chosen, bool(c.capabilities))

    def _pick_reference_file(self) -> Optional[str]:
        path, _ = QFileDialog.getOpenFileName(
            self, "Reference image", "",
            "Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff);;All files (*)")
        return path or None

    def control_from_image(self, row: int) -> bool:
        """A control row's "Generate from image": its kind's control image of the canvas,
        as a new layer the row then uses."""
        try:
            settings = self.settings()
        except ValueError as exc:
            self.controller.message = str(exc)
            self.refresh()
            return False
        self.controller.size_limit = self.max_side_spin.value() or None
        widget = self.control_list.rows[row]
        return self.controller.make_control_image(settings, row, weakref.ref(widget))

    def _control_layer_made(self, token: object, uid: str, name: str) -> None:
        """The row whose "Generate from image" it was uses the new layer, if the row is
        still there (removed meanwhile: the layer stays, unused)."""
        widget = token() if callable(token) else None
        if widget is not None and widget in self.control_list.rows:
            widget.use_layer(uid, name, self._layers(False))

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

    @property
    def workflow(self) -> Workflow:
        return Workflow(self.mode_combo.currentData())

    def choose_workflow(self, workflow: Workflow) -> None:
        self.mode_combo.setCurrentIndex(self.mode_combo.findData(workflow.value))

    def generate(self) -> bool:
        """The Generate button (and its shortcut): the chosen mode, filling the selection
        when Generate is chosen and there is one. While a job runs, the new one is queued."""
        document = self.controller.document()
        selected = document is not None and document.selection_bounds() is not None
        return self.run(job_mode(self.workflow, selected))

    def run(self, mode: Mode) -> bool:
        self.controller.size_limit = self.max_side_spin.value() or None
        try:
            settings = self.settings()
        except ValueError as exc:      # the fields' validators should not let this happen
            self.controller.message = str(exc)
            self.refresh()
            return False
        return self.controller.start(mode, settings)

    def apply(self) -> None:
        """Apply (and its shortcut): keep the result shown."""
        if self.controller.batch_size:
            self.controller.apply_result()
        else:
            self.controller.message = "No result is waiting to be applied"
            self.refresh()

    def document_changed(self) -> None:
        """Another document is in front: its own depth layer becomes the default, and its
        own control layers, references and regions fill the lists."""
        self._depth_picked = False
        self.load_guides()
        self.refresh()

    def recall_selected(self) -> None:
        row = self.history_list.currentRow()
        if 0 <= row < len(self.controller.history):
            settings = self.controller.history[row].settings
            self.choose_workflow(workflow_of(self.controller.history[row].mode))
            self.show_settings(settings)

    def rerun_selected(self) -> None:
        row = self.history_list.currentRow()
        if 0 <= row < len(self.controller.history):
            self.controller.rerun(row)

    def pick_result(self, number: int) -> None:
        """Show batch result ``number`` (from 1), as a click on its thumbnail does."""
        self.results_list.setCurrentRow(number - 1)
        self._result_clicked(self.results_list.item(number - 1))

    def _result_clicked(self, item: Optional[QListWidgetItem]) -> None:
        row = self.results_list.row(item) if item is not None else -1
        if self.controller.batch_size and 0 <= row != self.controller.batch_index:
            self.controller.select_result(row)

    def _result_double_clicked(self, item: QListWidgetItem) -> None:
        self._result_clicked(item)
        self.apply()

    def _history_clicked(self, item: Optional[QListWidgetItem]) -> None:
        row = self.history_list.row(item) if item is not None else -1
        if 0 <= row < len(self.controller.history):
            self.controller.show_history(row)

    def _history_double_clicked(self, item: QListWidgetItem) -> None:
        row = self.history_list.row(item)
        if 0 <= row < len(self.controller.history) and self.controller.show_history(row):
            self.controller.apply_result()

    def _mode_changed(self, _index: int) -> None:
        self._show_mode_fields()
        self._refresh_action()

    def _check_selection(self) -> None:
        document = self.controller.document()
        try:
            selected = document is not None and document.selection_bounds() is not None
        except Exception:       # a document closing under us: nothing to show
            selected = False
        if selected != self._has_selection:
            self._has_selection = selected
            self._refresh_action()

    # ------------------------------------------------------------ state -> widgets
    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 (Qt's name)
        super().showEvent(event)
        self.refresh()      # layers may have changed while the docker was hidden

    def _show_mode_fields(self) -> None:
        estimate = self.depth_combo.currentText() in ("", ESTIMATE_DEPTH)
        shown = shown_fields(self.workflow, estimate)
        for key, widgets in self._mode_rows.items():
            for widget in widgets:
                widget.setVisible(key in shown)
        # an upscale or a texture set makes one result (set): no batch
        self.batch_spin.setVisible(self.workflow not in (Workflow.UPSCALE, Workflow.TEXTURE))

    def _refresh_action(self) -> None:
        c = self.controller
        text = action_label(self.workflow, self._has_selection)
        if c.busy:
            text = f"Queue: {text}"
        if self.generate_button.text() != text:
            self.generate_button.setText(text)
        self.generate_button.setToolTip(self.workflow.help)

    def refresh(self) -> None:
        c = self.controller
        _show_status(self.status_label, c.connection_text)
        self.connect_button.setText("Reconnect" if c.connected else "Connect")
        self.message_view.show_text(c.message)
        step, total = c.progress
        self.progress_bar.setMaximum(max(total, 1))
        self.progress_bar.setValue(step if c.busy else 0)
        self.cancel_button.setEnabled(c.busy)
        self.queue_label.setText(queue_text(c.queued))
        self._refresh_action()
        count = c.batch_size
        self.bottom_stack.setCurrentWidget(self.result_row if count else self.message_view)
        self._show_results()
        _fill(self.model_combo, [DAEMON_MODEL] + base_model_names(c.models))
        self._refresh_depth_sources()
        self._refresh_depth_models()
        chosen = self.upscaler_combo.currentData()
        fill_choices(self.upscaler_combo, upscaler_choices(c.models, chosen), chosen)
        self.lora_list.refresh()
        for rows in (self.control_list, self.reference_list, self.region_list):
            rows.refresh()
        self._show_presets(self.preset_combo.currentData())
        self._show_mode_fields()
        self._show_history()

    def _show_results(self) -> None:
        c = self.controller
        images = c.batch_thumbnails
        key = [id(image) for image in images]
        if key != getattr(self, "_results_key", None):
            self._results_key = key
            self.results_list.clear()
            for number, image in enumerate(images, 1):
                item = QListWidgetItem(_icon(image), "")
                item.setToolTip(f"Result {number}, seed {image.seed}: click to show it, "
                                "double-click to apply it")
                self.results_list.addItem(item)
        if images and self.results_list.currentRow() != c.batch_index:
            self.results_list.setCurrentRow(c.batch_index)

    def _show_history(self) -> None:
        entries = list(self.controller.history)
        key = [(entry.finished_at, entry.has_pixels, entry.outcome) for entry in entries]
        if key == getattr(self, "_history_key", None):
            return
        self._history_key = key
        current = self.history_list.currentRow()
        self.history_list.clear()
        for entry in entries:
            image = entry.images[0] if entry.images else None
            label = (f"seed {entry.seeds[0]}" if entry.seeds
                     else entry.outcome if entry.outcome == "cancelled" else "failed")
            item = QListWidgetItem(_icon(image), label)
            more = "" if entry.has_pixels or not entry.images else (
                "\n(pixels no longer kept: Run again makes it again)")
            item.setToolTip(entry.summary() + more)
            self.history_list.addItem(item)
        if 0 <= current < self.history_list.count():
            self.history_list.setCurrentRow(current)

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

    def _job_family(self) -> Optional[str]:
        """The family of the model a job would run on (the Model field's, or the
        daemon's current one); None while the daemon's list does not say."""
        c = self.controller
        model = self.model_combo.currentText()
        return model_family(c.models, c.current_model if model in ("", DAEMON_MODEL) else model)

    def _show_depth_models(self, chosen: Optional[str]) -> None:
        """The Depth model field: the daemon's conditioners for the chosen model's family,
        with ``chosen`` (a name, or None for the daemon's default) selected."""
        c = self.controller
        family = self._job_family()
        combo = self.depth_model_combo
        fill_choices(combo, depth_model_choices(c.models, chosen, family), chosen)
        combo.setToolTip(DEPTH_MODEL_SD2_DEPTH if family == SD2_DEPTH_FAMILY
                         else DEPTH_MODEL_HELP)

    # ------------------------------------------------------------ LoRAs and sampler presets
    def _lora_choices(self, chosen: Optional[str]) -> list[tuple[str, Optional[str]]]:
        return lora_choices(self.controller.models, self._job_family(), chosen)

    def _loras_full(self) -> None:
        self.controller.message = LORAS_FULL
        self.refresh()

    def _show_presets(self, chosen: Optional[str]) -> None:
        """The Sampler preset field: None and the daemon's presets, ``chosen`` selected."""
        c = self.controller
        fill_choices(self.preset_combo,
                      preset_choices(c.sampler_presets, chosen, c.presets_listed), chosen)
        self._show_preset_overrides()

    def _show_preset_overrides(self) -> None:
        """Steps and Guidance greyed out while a preset decides them, saying why."""
        note = preset_override_note(self.preset_combo.currentData())
        for widget, help_text in ((self.steps_spin, STEPS_HELP),
                                  (self.guidance_spin, GUIDANCE_HELP)):
            widget.setEnabled(not note)
            widget.setToolTip(note or help_text)


def _thumbnail_list(parent: QWidget, wrap: bool, icon: int = THUMB_ICON) -> QListWidget:
    """A list of thumbnails: a grid that wraps, with captions (History), or one row of
    bare thumbnails (a batch; the tooltip says which)."""
    view = QListWidget(parent)
    view.setViewMode(QListView.IconMode)
    view.setIconSize(QSize(icon, icon))
    view.setMovement(QListView.Static)
    view.setResizeMode(QListView.Adjust)
    view.setWrapping(wrap)
    view.setFlow(QListView.LeftToRight)
    view.setUniformItemSizes(not wrap)      # History mixes thumbnails and grey squares
    view.setSpacing(2)
    view.setWordWrap(False)
    view.setTextElideMode(Qt.ElideRight)
    caption = view.fontMetrics().lineSpacing() + 10 if wrap else 4
    view.setGridSize(QSize(icon + (12 if wrap else 4), icon + caption))
    if not wrap:
        view.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        view.setHorizontalScrollBarPolicy(Qt.ScrollBarAsNeeded)
    return view


def _icon(image: Optional[object]) -> QIcon:
    """A thumbnail (a work.ResultImage) as an icon; a grey square for a job without one."""
    pixmap = QPixmap(THUMB_ICON, THUMB_ICON)
    pixmap.fill(QColor(128, 128, 128, 60))
    if image is not None:
        size = image.thumb_size  # type: ignore[attr-defined]
        picture = QImage(image.thumb, size.width, size.height,  # type: ignore[attr-defined]
                         size.width * 4, QImage.Format_RGBA8888)
        pixmap = QPixmap.fromImage(picture.copy())
    return QIcon(pixmap)


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


def _weak_call3(method: Callable[[object, str, str], None]
                ) -> Callable[[object, str, str], None]:
    ref = weakref.WeakMethod(method)

    def call(row: object, uid: str, name: str) -> None:
        target = ref()
        if target is not None:
            target(row, uid, name)

    return call


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


def _visible_panel() -> Optional[AtelierPanel]:
    """The panel of the Atelier docker the painter sees (the front window's first)."""
    panels = [docker.panel for docker in Krita.instance().dockers()
              if isinstance(docker, AtelierDocker)]
    return next((panel for panel in panels if panel.isVisible()), None)


class AtelierExtension(Extension):
    """Krita actions for the docker's Generate, Cancel and Apply, so that they get
    keyboard shortcuts (Settings > Configure Krita > Keyboard Shortcuts changes them)."""

    def setup(self) -> None:
        pass

    def createActions(self, window) -> None:  # noqa: N802 (Krita's name)
        handlers = {actions.GENERATE.name: lambda panel: panel.generate(),
                    actions.CANCEL.name: lambda panel: panel.controller.cancel(),
                    actions.APPLY.name: lambda panel: panel.apply()}
        for spec in actions.ACTIONS:
            # The default shortcut comes from atelier_krita.action (installed with the zip).
            action = window.createAction(spec.name, spec.text, actions.MENU)
            action.triggered.connect(lambda _checked=False, run=handlers[spec.name]:
                                     _on_visible_panel(run))


def _on_visible_panel(run: Callable[[AtelierPanel], object]) -> None:
    panel = _visible_panel()
    if panel is not None:
        run(panel)
