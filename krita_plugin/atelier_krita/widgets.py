"""Small widgets the docker is made of; plain Qt, no Krita."""

from __future__ import annotations

from typing import Callable, Optional

from PyQt5.QtCore import QSize, Qt, pyqtSignal
from PyQt5.QtGui import QValidator
from PyQt5.QtWidgets import (QComboBox, QDoubleSpinBox, QFormLayout, QFrame, QHBoxLayout,
                             QLabel, QPlainTextEdit, QPushButton, QScrollArea, QSizePolicy,
                             QToolButton, QVBoxLayout, QWidget)

from .jobs import parse_seed
from .loras import LORA_HELP, LORA_WEIGHT_HELP, LoraRow
from .protocol.messages import LORA_WEIGHT_MAX, LORAS_MAX

MESSAGE_LINES = 2          # a longer message scrolls; its tooltip holds all of it
FORM_MIN_HEIGHT = 44       # the scrolling fields never shrink below this (the status line)


def fill_choices(combo: QComboBox, choices: "list[tuple[str, Optional[str]]]",
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


class SeedValidator(QValidator):
    """Whole numbers from 0 to SEED_MAX (all 32 bits: QSpinBox stops at 2**31 - 1), or
    nothing for a random seed."""

    def validate(self, text: str, pos: int) -> tuple[QValidator.State, str, int]:
        try:
            parse_seed(text)
        except ValueError:
            return QValidator.Invalid, text, pos
        return QValidator.Acceptable, text, pos


class MessageView(QPlainTextEdit):
    """The last message, in a few lines that never grow (the docker has to fit a laptop
    screen); a longer one scrolls, and its tooltip holds all of it."""

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setReadOnly(True)
        self.setFrameShape(QFrame.NoFrame)
        self.setStyleSheet("QPlainTextEdit { background: transparent; }")
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        margin = 2 * int(self.document().documentMargin())
        self.setFixedHeight(MESSAGE_LINES * self.fontMetrics().lineSpacing() + margin)

    def show_text(self, text: str) -> None:
        if self.toPlainText() != text:
            self.setPlainText(text)
            self.setToolTip(text)


class RefreshingComboBox(QComboBox):
    """A combo box that brings its items up to date just before its list opens."""

    def __init__(self, refresh: Callable[[], None], parent: Optional[QWidget] = None):
        super().__init__(parent)
        self._refresh = refresh

    def showPopup(self) -> None:  # noqa: N802 (Qt's name)
        self._refresh()
        super().showPopup()


class Fold(QWidget):
    """A titled section the painter opens and closes (closed at first); its fields go
    into ``form``."""

    def __init__(self, title: str, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.button = QToolButton(self)
        self.button.setText(title)
        self.button.setCheckable(True)
        self.button.setAutoRaise(True)
        self.button.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.button.toggled.connect(self.set_open)
        self.body = QWidget(self)
        self.form = QFormLayout(self.body)
        self.form.setContentsMargins(0, 0, 0, 0)
        self.form.setRowWrapPolicy(QFormLayout.WrapLongRows)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.button)
        layout.addWidget(self.body)
        self.set_open(False)

    def set_open(self, is_open: bool) -> None:
        self.body.setVisible(is_open)
        self.button.setArrowType(Qt.DownArrow if is_open else Qt.RightArrow)
        if self.button.isChecked() != is_open:
            self.button.setChecked(is_open)


class FormScroll(QScrollArea):
    """Scrolls the fields up and down, never sideways: as wide as they need."""

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
        hint = super().minimumSizeHint()
        form = self.widget()
        if form is not None:
            width = (form.minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width()
                     + 2 * self.frameWidth())
            hint.setWidth(max(hint.width(), width))
        hint.setHeight(max(hint.height(), FORM_MIN_HEIGHT))
        return hint


# A LoRA row's entries: (label, name) pairs for the LoRA it may choose (None: none yet).
LoraChoices = Callable[[Optional[str]], "list[tuple[str, Optional[str]]]"]
LORA_COMBO_CHARACTERS = 10


class LoraRowWidget(QWidget):
    """One LoRA row: which LoRA, its weight, and a button that removes the row."""

    def __init__(self, parent: QWidget):
        super().__init__(parent)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(3)
        self.combo = QComboBox(self)
        self.combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.combo.setMinimumContentsLength(LORA_COMBO_CHARACTERS)
        self.combo.setToolTip(LORA_HELP)
        self.weight = QDoubleSpinBox(self)
        self.weight.setRange(-LORA_WEIGHT_MAX, LORA_WEIGHT_MAX)
        self.weight.setSingleStep(0.1)
        self.weight.setDecimals(2)
        self.weight.setValue(1.0)
        self.weight.setToolTip(LORA_WEIGHT_HELP)
        self.remove = QToolButton(self)
        self.remove.setText("\u2715")
        self.remove.setToolTip("Remove this LoRA row")
        row.addWidget(self.combo, 1)
        row.addWidget(self.weight)
        row.addWidget(self.remove)

    @property
    def name(self) -> Optional[str]:
        return self.combo.currentData() or None



class LoraList(QWidget):
    """The LoRA rows and "Add LoRA": at most LORAS_MAX rows; ``full`` is emitted when
    Add is pressed with that many. ``choices(chosen)`` gives a row's entries."""

    full = pyqtSignal()

    def __init__(self, choices: LoraChoices, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self._choices = choices
        self.rows: list[LoraRowWidget] = []
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        header = QHBoxLayout()
        self.title = QLabel("LoRAs", self)
        self.title.setToolTip("LoRAs applied to every job, each at its weight "
                              f"(at most {LORAS_MAX})")
        self.add_button = QPushButton("Add LoRA", self)
        self.add_button.setToolTip(f"Add a LoRA row (a job takes at most {LORAS_MAX})")
        self.add_button.setSizePolicy(QSizePolicy.Maximum, QSizePolicy.Fixed)
        self.add_button.clicked.connect(self._add_clicked)
        header.addWidget(self.title, 1)
        header.addWidget(self.add_button)
        layout.addLayout(header)
        self._rows_layout = QVBoxLayout()
        self._rows_layout.setSpacing(2)
        layout.addLayout(self._rows_layout)
        self._show_count()

    def add_row(self, name: Optional[str] = None, weight: float = 1.0) -> bool:
        """A new row choosing ``name`` at ``weight``; False (no row) when there are
        LORAS_MAX rows already."""
        if len(self.rows) >= LORAS_MAX:
            return False
        row = LoraRowWidget(self)
        row.weight.setValue(weight)
        fill_choices(row.combo, self._choices(name), name)
        row.remove.clicked.connect(lambda _checked=False, row=row: self.remove_row(row))
        self.rows.append(row)
        self._rows_layout.addWidget(row)
        self._show_count()
        return True

    def remove_row(self, row: LoraRowWidget) -> None:
        self.rows.remove(row)
        self._rows_layout.removeWidget(row)
        row.hide()
        row.deleteLater()
        self._show_count()

    def chosen(self) -> "tuple[LoraRow, ...]":
        """(name, weight) of the rows with a LoRA chosen, in order."""
        return tuple((row.name, row.weight.value()) for row in self.rows if row.name)

    def set_rows(self, loras: "tuple[LoraRow, ...]") -> None:
        """Exactly one row per LoRA of ``loras``, in order."""
        for row in list(self.rows):
            self.remove_row(row)
        for name, weight in loras:
            self.add_row(name, weight)

    def refresh(self) -> None:
        """Each row's entries as they are now (the daemon's LoRAs, the model's family)."""
        for row in self.rows:
            fill_choices(row.combo, self._choices(row.name), row.name)

    def _add_clicked(self) -> None:
        if not self.add_row():
            self.full.emit()

    def _show_count(self) -> None:
        count = len(self.rows)
        self.title.setText(f"LoRAs ({count}/{LORAS_MAX})" if count else "LoRAs")
