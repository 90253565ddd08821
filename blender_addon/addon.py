"""Registration, and the one session the add-on holds while it is enabled.

Blender add-ons are modules that Blender registers and unregisters; the
session (protocol client + jobs) is created in :func:`register` and closed in
:func:`unregister`, and the timer that pumps it lives exactly as long.
"""

from __future__ import annotations

import traceback
from typing import Optional

import bpy

from .runtime import ACTIVE_INTERVAL, IDLE_INTERVAL, Session

_session: Optional[Session] = None


def current_session() -> Optional[Session]:
    """The enabled add-on's session (None while unregistered)."""
    return _session


def _tick() -> Optional[float]:
    session = _session
    if session is None:
        return None   # unregistered: stop the timer
    try:
        active = session.pump()
    except Exception:  # noqa: BLE001  keep pumping; the traceback goes to the console
        traceback.print_exc()
        return IDLE_INTERVAL
    return ACTIVE_INTERVAL if active else IDLE_INTERVAL


@bpy.app.handlers.persistent
def _pack_before_save(*_args) -> None:
    from . import host
    try:
        host.pack_waiting_images()
    except RuntimeError:  # an image that cannot be packed must not stop the save
        traceback.print_exc()


def ensure_timer() -> None:
    if not bpy.app.timers.is_registered(_tick):
        bpy.app.timers.register(_tick, first_interval=ACTIVE_INTERVAL, persistent=True)


def register() -> None:
    global _session
    from . import asset_ops, operators, panels, properties
    properties.register()
    for cls in operators.CLASSES + asset_ops.CLASSES + panels.CLASSES:
        bpy.utils.register_class(cls)
    from . import multiview_ops   # its panel sits inside panels' main one
    multiview_ops.register()
    _session = Session()
    ensure_timer()
    if _pack_before_save not in bpy.app.handlers.save_pre:
        bpy.app.handlers.save_pre.append(_pack_before_save)


def unregister() -> None:
    global _session
    from . import asset_ops, operators, panels, properties
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)
    while _pack_before_save in bpy.app.handlers.save_pre:
        bpy.app.handlers.save_pre.remove(_pack_before_save)
    _pack_before_save()   # nothing waits for a save that no handler will see
    if _session is not None:
        _session.live.stop()   # its timer and handlers go with it
        _session.close_client()
        _session = None
    from . import multiview_ops
    multiview_ops.unregister()
    for cls in reversed(operators.CLASSES + asset_ops.CLASSES + panels.CLASSES):
        bpy.utils.unregister_class(cls)
    properties.unregister()
