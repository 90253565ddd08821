"""The daemon's limits, checked before a job is queued and advertised in ``welcome``."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import GenerateRequest, Limits


@dataclass(frozen=True)
class ServerLimits:
    max_message_bytes: int = 256 * 1024 * 1024
    max_side: int = 2048
    max_pixels: int = 2048 * 2048
    max_batch: int = 8
    max_steps: int = 150
    max_queue: int = 32
    max_uploads: int = 16                       # uploads waiting for a submit, per connection
    # Upload bytes held for a client: its waiting uploads plus those of its queued and
    # running jobs; and the same for all clients together.
    max_upload_bytes: int = 512 * 1024 * 1024
    max_total_upload_bytes: int = 2 * 1024 * 1024 * 1024
    max_connections: int = 64
    # Messages and previews waiting to be sent to one connection (result images are shared
    # with the daemon's kept results and count only their headers). Previews are dropped
    # past a quarter of it; past all of it the connection is closed (CloseCode.OUTBOX_FULL).
    max_outbox_bytes: int = 16 * 1024 * 1024
    # Kind "upscale" works in tiles of the model's size, so its output may be larger than a
    # generation: memory grows with the image only in its pixel buffers (PROTOCOL.md).
    max_upscale_side: int = 8192
    max_upscale_pixels: int = 8192 * 8192

    def advertised(self) -> Limits:
        return Limits(max_message_bytes=self.max_message_bytes, max_pixels=self.max_pixels,
                      max_side=self.max_side, max_batch=self.max_batch,
                      max_steps=self.max_steps, max_queue=self.max_queue,
                      max_uploads=self.max_uploads, max_upload_bytes=self.max_upload_bytes,
                      max_total_upload_bytes=self.max_total_upload_bytes,
                      max_connections=self.max_connections,
                      max_outbox_bytes=self.max_outbox_bytes,
                      max_upscale_side=self.max_upscale_side,
                      max_upscale_pixels=self.max_upscale_pixels)

    def size_limits(self, kind: str) -> tuple[int, int, str]:
        """(longest side, most pixels, what they limit) of a ``kind`` job's output."""
        if kind == "upscale":
            return self.max_upscale_side, self.max_upscale_pixels, "an upscale's"
        return self.max_side, self.max_pixels, "the"

    def check_request(self, job: GenerateRequest) -> None:
        """Size, steps and batch limits; raises ProtocolError naming the field and limit."""
        max_side, max_pixels, whose = self.size_limits(job.kind)
        for name in ("width", "height"):
            value = getattr(job, name)
            if value % 8:
                raise ProtocolError(ErrorCode.INVALID_FIELD,
                                    f"{name} must be a multiple of 8, got {value}", f"job.{name}")
            if value > max_side:
                raise ProtocolError(ErrorCode.LIMIT_EXCEEDED,
                                    f"{name} {value} is over {whose} limit of {max_side}",
                                    f"job.{name}")
        if job.width * job.height > max_pixels:
            raise ProtocolError(ErrorCode.LIMIT_EXCEEDED,
                                f"{job.width}x{job.height} is over {whose} limit of "
                                f"{max_pixels} pixels", "job.width")
        if job.steps is not None and job.steps > self.max_steps:
            raise ProtocolError(ErrorCode.LIMIT_EXCEEDED,
                                f"steps {job.steps} is over the limit of {self.max_steps}",
                                "job.steps")
        if job.batch_size > self.max_batch:
            raise ProtocolError(ErrorCode.LIMIT_EXCEEDED,
                                f"batch_size {job.batch_size} is over the limit of "
                                f"{self.max_batch}", "job.batch_size")

    def check_frame(self, width: int, height: int) -> None:
        """An upload is resized to its job's size, so it may be larger than a job, up to
        4x a side and 4x the pixels: a PNG's header claims what it decodes to, so this also
        bounds what a small compressed file can make the daemon hold."""
        if width > self.max_side * 4 or height > self.max_side * 4:
            raise ProtocolError(ErrorCode.LIMIT_EXCEEDED,
                                f"uploaded image {width}x{height} is over the limit of "
                                f"{self.max_side * 4} pixels a side", "frame")
        if width * height > self.max_pixels * 4:
            raise ProtocolError(ErrorCode.LIMIT_EXCEEDED,
                                f"uploaded image {width}x{height} is over the limit of "
                                f"{self.max_pixels * 4} pixels", "frame")
