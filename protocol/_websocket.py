"""Find the websocket client: the copy vendored into an add-on, else the installed one."""

from __future__ import annotations

try:  # add-on zips carry websockets inside this package
    from ._vendor.websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
    from ._vendor.websockets.sync.client import connect
except ImportError:
    from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
    from websockets.sync.client import connect

__all__ = ["connect", "ConnectionClosed", "InvalidStatus", "WebSocketException"]
