"""A Starlette websocket as the session's transport (server.Transport), so the gateway runs
the daemon's own ``Session``."""

from __future__ import annotations

from http import HTTPStatus
from typing import AsyncIterator, Union

from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

MESSAGE_TOO_BIG = 1009


class StarletteTransport:
    def __init__(self, websocket: WebSocket, max_message_bytes: int):
        self.websocket = websocket
        self.max_message_bytes = max_message_bytes

    async def __aiter__(self) -> AsyncIterator[Union[str, bytes]]:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            if len(data) > self.max_message_bytes:     # as websockets' max_size does
                await self.close(MESSAGE_TOO_BIG, "message too big")
                return
            yield data

    async def send(self, data: Union[str, bytes]) -> None:
        try:
            if isinstance(data, str):
                await self.websocket.send_text(data)
            else:
                await self.websocket.send_bytes(data)
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            raise ConnectionClosed(None, Close(1006, "")) from exc

    async def close(self, code: int, reason: str) -> None:
        try:
            await self.websocket.close(code, reason)
        except (RuntimeError, OSError):
            pass      # already closed


async def refuse(websocket: WebSocket, status: HTTPStatus, body: str) -> None:
    """Refuse the opening handshake with an HTTP status, as the daemon does; where the
    server cannot send one (no denial-response extension), close with policy violation."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(PlainTextResponse(body, status_code=status))
    else:
        await websocket.close(1008, body.strip()[:120])
