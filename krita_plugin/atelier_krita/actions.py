"""The docker's Krita actions and their default shortcuts (Settings > Configure Krita >
Keyboard Shortcuts changes them). Pure data and a clash check; no Krita here.

Krita 5.1 already uses Ctrl+Shift+G (quick clipping group), Ctrl+Shift+A (deselect) and
Escape (tools cancel what they do with it), so the defaults are keys its own default
shortcut scheme leaves free: ``shortcut_clashes`` checks them against a list of taken
sequences (the test in the real application passes every action's shortcut)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class ActionSpec:
    name: str          # Krita action id
    text: str          # menu text (Tools > Scripts)
    shortcut: str      # default, in QKeySequence's portable text


GENERATE = ActionSpec("atelier_generate", "Atelier: Generate", "Ctrl+Shift+Return")
CANCEL = ActionSpec("atelier_cancel", "Atelier: Cancel", "Shift+Escape")
APPLY = ActionSpec("atelier_apply", "Atelier: Apply result", "Ctrl+Alt+A")
ACTIONS = (GENERATE, CANCEL, APPLY)
MENU = "tools/scripts"

_ALIASES = {"enter": "return", "esc": "escape", "ins": "insert", "del": "delete",
            "pgup": "pgup", "pageup": "pgup", "pgdown": "pgdown", "pagedown": "pgdown"}
_MODIFIERS = ("ctrl", "alt", "shift", "meta")


def normalize(sequence: str) -> str:
    """``sequence`` in one spelling: modifiers in a fixed order, lower case, aliases folded
    ("Shift+Ctrl+Enter" and "ctrl+shift+return" are the same)."""
    parts = [part.strip().lower() for part in sequence.replace(" ", "").split("+") if part]
    if sequence.rstrip().endswith("++"):
        parts.append("+")
    mods = [m for m in _MODIFIERS if m in parts]
    keys = [_ALIASES.get(p, p) for p in parts if p not in _MODIFIERS]
    return "+".join(mods + keys)


def shortcut_clashes(ours: Iterable[ActionSpec], taken: Iterable[str]) -> dict[str, str]:
    """Our action names whose default shortcut is among ``taken``, with the sequence."""
    used = {normalize(sequence) for sequence in taken if sequence}
    return {spec.name: spec.shortcut for spec in ours if normalize(spec.shortcut) in used}
