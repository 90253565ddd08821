"""Small widgets the docker is made of; plain Qt, no Krita."""

from __future__ import annotations

from typing import Callable, Optional

from PyQt5.QtCore import QSize, Qt
from PyQt5.QtGui import QValidator
from PyQt5.QtWidgets import (QComboBox, QFormLayout, QFrame, QPlainTextEdit, QScrollArea,
                             QToolButton, QVBoxLayout, QWidget)

from .jobs import parse_seed

MESSAGE_LINES = 2          # a longer message scrolls; its tooltip holds all of it
FORM_MIN_HEIGHT = 44       # the scrolling fields never shrink below this (the status line)


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
