"""One connection's bounded queue of what the daemon still has to send it.

A client that stops reading must not make the daemon buffer without limit. What waits is
counted in bytes: messages by their encoded size, previews by their pixels, result images
by their header only (their pixels are the job's kept outcome, shared, not a copy).
Past a quarter of the bound previews are dropped (their ``progress`` then says
``preview: false``); past the bound the connection is to be closed with
``CloseCode.OUTBOX_FULL``, and what waited is let go: the job layer still holds the
results, which the client can ``fetch`` after reconnecting.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from typing import Any, Union

from protocol.codec import encode_message
from protocol.frames import HEADER_SIZE, FrameKind, ImageFrame, encode_frame
from protocol.messages import Progress

Payload = Union[str, bytes]


class OutboxFull(Exception):
    """The connection's unsent data passed its bound."""


class Outbox:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.preview_bytes = max_bytes // 4     # backlog past which previews are dropped
        self._items: collections.deque[tuple[Union[ImageFrame, str], int]] = collections.deque()
        self._bytes = 0
        self._ready = asyncio.Event()
        self._dropped_previews: set[tuple[str, int]] = set()   # (job id, step)
        self.closed = False
        self.previews_dropped = 0

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def put(self, item: Any) -> None:
        """Queue ``item`` (a message record or an ImageFrame); raises OutboxFull past the
        bound, after which the outbox takes nothing more."""
        if self.closed:
            return
        item = self._thin_previews(item)
        if item is None:
            return
        if not isinstance(item, ImageFrame):
            item = encode_message(item)      # encoded once: its size is what it costs
        size = _counted_size(item)
        if self._bytes + size > self.max_bytes:
            full = OutboxFull(f"{self._bytes + size} bytes wait to be sent; the limit is "
                              f"{self.max_bytes}")
            self.close()
            raise full
        self._items.append((item, size))
        self._bytes += size
        self._ready.set()

    def _thin_previews(self, item: Any) -> Any:
        """``item``, or None for a preview frame to drop; a progress whose preview will be
        dropped is rewritten to announce none."""
        if isinstance(item, Progress) and item.preview and self._bytes > self.preview_bytes:
            self._dropped_previews.add((item.job_id, item.step))
            self.previews_dropped += 1
            return dataclasses.replace(item, preview=False)
        if isinstance(item, ImageFrame) and item.kind == FrameKind.PREVIEW:
            key = (item.id, item.index)
            if key in self._dropped_previews:
                self._dropped_previews.discard(key)
                return None
        return item

    async def get(self) -> Payload:
        """The next payload to send, encoded now (a result frame is copied only here)."""
        while not self._items:
            if self.closed:
                raise OutboxFull("the outbox was closed")
            self._ready.clear()
            await self._ready.wait()
        item, size = self._items.popleft()
        self._bytes -= size
        return encode_frame(item) if isinstance(item, ImageFrame) else item

    def close(self) -> None:
        self.closed = True
        self._items.clear()
        self._bytes = 0
        self._ready.set()


def _counted_size(item: Union[ImageFrame, str]) -> int:
    if isinstance(item, ImageFrame):
        return HEADER_SIZE if item.kind == FrameKind.RESULT else HEADER_SIZE + len(item.data)
    return len(item)
