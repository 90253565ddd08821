"""Error codes and the exception that carries them.

Codes are stable strings: clients branch on them, so never rename one.
"""

from __future__ import annotations


class ErrorCode:
    BAD_MESSAGE = "bad_message"          # not JSON, not an object, truncated frame
    UNKNOWN_TYPE = "unknown_type"        # a "type" the receiver does not know
    INVALID_FIELD = "invalid_field"      # wrong type or value out of range
    LIMIT_EXCEEDED = "limit_exceeded"    # size, steps, batch, queue length ...
    UNSUPPORTED_VERSION = "unsupported_version"
    NOT_READY = "not_ready"              # message before the handshake
    UNKNOWN_JOB = "unknown_job"
    UNKNOWN_UPLOAD = "unknown_upload"
    QUEUE_FULL = "queue_full"
    MODEL_NOT_FOUND = "model_not_found"
    MODEL_LOAD_FAILED = "model_load_failed"
    OUT_OF_MEMORY = "out_of_memory"
    JOB_FAILED = "job_failed"
    UNSUPPORTED = "unsupported"          # the loaded model or server cannot do this
    JOB_FINISHED = "job_finished"        # cancel of a job that already ended: nothing to stop
    SHUTTING_DOWN = "shutting_down"      # the daemon is stopping: a queued job will not run
    WORKER_LOST = "worker_lost"          # cluster: the worker running the job died; submit again
    INTERNAL = "internal"

    ALL = frozenset(
        v for k, v in vars().items() if k.isupper() and isinstance(v, str)
    )


class CloseCode:
    """Websocket close codes the daemon uses (besides the standard ones websockets sends,
    such as 1009 for a message over ``limits.max_message_bytes``)."""
    GOING_AWAY = 1001        # the daemon shuts down
    OUTBOX_FULL = 4001       # the client did not read: its unsent data passed max_outbox_bytes


class ProtocolError(Exception):
    """A message or frame that breaks the protocol, or a request that breaks a limit.

    ``field`` is a dotted path into the offending message (``"job.width"``),
    or ``None`` when the problem is not tied to one field.
    """

    def __init__(self, code: str, message: str, field: str | None = None,
                 ref: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.ref = ref     # the client's ``ref`` of the message that failed, where it had one

    def __str__(self) -> str:
        where = f" [{self.field}]" if self.field else ""
        return f"{self.code}{where}: {self.message}"
