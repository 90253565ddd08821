"""Finished job outcomes kept on disk, so that a restarted daemon can still answer ``fetch``.

One file per job, ``<job_id>.outcome``, in a folder private to the daemon (mode 0o700)::

    {"version":1,"job_id":"...","owner":"<sha256 hex of the client key>",
     "finished":<wall-clock seconds>,"records":N,"payload_bytes":M}\\n
    N records: 1-byte kind (b"F" a binary frame, b"M" a JSON message)
               + 4-byte big-endian length + that many bytes

Frames and messages are stored with the protocol's own codecs, so what a client gets after a
restart is exactly what it would have got before. Files are written to a temp file in the same
folder and moved into place with ``os.replace``: a reader sees the old outcome or the whole new
one. Only a digest of the owner's key reaches the disk.

Bounds: an outcome is kept ``keep_s`` seconds of wall-clock time after it finished (so the age
carries over a restart), and all outcomes together stay within ``keep_bytes`` (the oldest go
first). An outcome bigger than ``keep_bytes`` on its own is not kept at all.

Threads: ``put`` may run on an encoder thread while ``get`` runs on the event loop. The index
is guarded by a lock; a put writes its temp file outside the lock and only moves it into place
and updates the index under it. ``get`` reads the file outside the lock.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import struct
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional

from protocol.codec import decode_message, encode_message
from protocol.errors import ProtocolError
from protocol.frames import ImageFrame, decode_frame, encode_frame
from protocol.messages import SERVER_MESSAGES

log = logging.getLogger("atelier.spool")

FORMAT_VERSION = 1
SUFFIX = ".outcome"
TEMP_SUFFIX = ".tmp"
HEADER_MAX = 1024                       # bytes of the JSON header line, newline included
_JOB_ID = re.compile(r"[0-9a-f]{32}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_RECORD = struct.Struct(">cI")          # kind tag, payload length
TAG_FRAME = b"F"
TAG_MESSAGE = b"M"


class SpoolError(Exception):
    """An outcome could not be written to the spool folder (the disk, not the caller)."""


class _CorruptOutcome(Exception):
    """A spool file that cannot be read back as the outcome it claims to hold."""


@dataclass(frozen=True)
class _Entry:
    """What the index knows of one file without reading its payload."""
    size: int          # bytes on disk, header included
    finished: float    # wall-clock seconds


@dataclass(frozen=True)
class _Header:
    job_id: str
    owner: str         # sha256 hex digest of the owner's key
    finished: float
    records: int
    payload_bytes: int


def is_job_id(value: object) -> bool:
    """32 lowercase hex digits: the only strings that may name a spool file."""
    return isinstance(value, str) and _JOB_ID.fullmatch(value) is not None


def owner_digest(owner: str) -> str:
    return hashlib.sha256(owner.encode("utf-8")).hexdigest()


class OutcomeSpool:
    def __init__(self, folder: Path, keep_s: float = 3600.0, keep_bytes: int = 1 << 30,
                 clock: Callable[[], float] = time.time) -> None:
        if keep_s < 0 or keep_bytes < 0:
            raise ValueError(f"spool bounds must not be negative (keep_s={keep_s}, "
                             f"keep_bytes={keep_bytes})")
        self._folder = Path(folder)
        self._keep_s = keep_s
        self._keep_bytes = keep_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._index: dict[str, _Entry] = {}
        self._total = 0
        self._folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self._folder, 0o700)   # mkdir's mode is cut by the umask, and the folder may be old
        self._scan()
        self.expire()

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return self._total

    # ------------------------------------------------------------------ writing
    def put(self, job_id: str, owner: str, outcome: list[Any]) -> None:
        """Keep ``outcome`` (ImageFrames and server message records) for ``owner``.

        Replaces an earlier outcome of the same job. Too big for ``keep_bytes``: not kept (and
        an earlier one dropped). ValueError/TypeError for a bad id, owner or item; SpoolError
        when the folder cannot be written.
        """
        if not is_job_id(job_id):
            raise ValueError(f"job id {job_id!r} is not 32 lowercase hex digits")
        if not isinstance(owner, str) or not owner:
            raise ValueError("an outcome needs an owner key (a non-empty string)")
        records = [_encode_item(item) for item in outcome]
        payload_bytes = sum(_RECORD.size + len(payload) for _, payload in records)
        finished = self._clock()
        header = (json.dumps({"version": FORMAT_VERSION, "job_id": job_id,
                              "owner": owner_digest(owner), "finished": finished,
                              "records": len(records), "payload_bytes": payload_bytes},
                             separators=(",", ":")) + "\n").encode("ascii")
        size = len(header) + payload_bytes
        if size > self._keep_bytes:
            log.info("outcome of job %s is %d bytes, more than the spool keeps (%d): "
                     "not kept on disk", job_id, size, self._keep_bytes)
            self.discard(job_id)
            return
        temp = self._write_temp(job_id, header, records)
        try:
            with self._lock:
                os.replace(temp, self._path(job_id))
                old = self._index.pop(job_id, None)
                if old is not None:
                    self._total -= old.size
                self._index[job_id] = _Entry(size, finished)
                self._total += size
        except OSError as exc:
            _remove(temp)
            raise SpoolError(f"cannot move the outcome of job {job_id} into "
                             f"{self._folder}: {exc}") from exc
        self.expire()

    def _write_temp(self, job_id: str, header: bytes, records: list[tuple[bytes, bytes]]) -> Path:
        try:
            fd, name = tempfile.mkstemp(prefix=f".{job_id}.", suffix=TEMP_SUFFIX,
                                        dir=self._folder)
        except OSError as exc:
            raise SpoolError(f"cannot create a file in {self._folder}: {exc}") from exc
        temp = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(header)
                for tag, payload in records:
                    f.write(_RECORD.pack(tag, len(payload)))
                    f.write(payload)
        except OSError as exc:
            _remove(temp)
            raise SpoolError(f"cannot write the outcome of job {job_id} to {temp}: {exc}") from exc
        return temp

    # ------------------------------------------------------------------ reading
    def get(self, job_id: str, owner: str) -> Optional[list[Any]]:
        """The outcome of ``job_id`` if ``owner`` put it and it is still kept, else None.

        Unknown, expired, corrupt and someone else's all look the same. Reads the whole file:
        call it off the event loop when outcomes are large.
        """
        if not is_job_id(job_id) or not isinstance(owner, str):
            return None
        self.expire()
        with self._lock:
            entry = self._index.get(job_id)
        if entry is None:
            return None
        path = self._path(job_id)
        try:
            with open(path, "rb") as f:
                header = _read_header(f, job_id)
                if not hmac.compare_digest(header.owner, owner_digest(owner)):
                    log.info("fetch of job %s by a client that does not own it", job_id)
                    return None
                return _read_records(f, header)
        except _CorruptOutcome as exc:
            log.warning("spool file %s is corrupt, removing it: %s", path, exc)
            self._drop_if_same(job_id, entry)
            return None
        except FileNotFoundError:
            # Expired or discarded since the lookup, or removed by someone else.
            if self._drop_if_same(job_id, entry):
                log.warning("spool file %s disappeared from under the spool", path)
            return None
        except OSError as exc:
            log.warning("cannot read spool file %s: %s", path, exc)
            return None

    # ------------------------------------------------------------------ bounds
    def expire(self) -> None:
        """Drop outcomes older than ``keep_s``, then the oldest until within ``keep_bytes``."""
        now = self._clock()
        with self._lock:
            doomed = [job_id for job_id, e in self._index.items()
                      if now - e.finished >= self._keep_s]
            for job_id in doomed:
                self._forget(job_id)
            if self._total > self._keep_bytes:
                # sorted() is stable: equal times go in the order they were put
                for job_id, _ in sorted(self._index.items(), key=lambda kv: kv[1].finished):
                    if self._total <= self._keep_bytes:
                        break
                    self._forget(job_id)

    def discard(self, job_id: str) -> None:
        """Forget a job's outcome; nothing happens for an unknown or malformed id."""
        if not is_job_id(job_id):
            return
        with self._lock:
            self._forget(job_id)
            _remove(self._path(job_id))   # also a file the index never knew (a failed scan)

    # ------------------------------------------------------------------ internals
    def _path(self, job_id: str) -> Path:
        return self._folder / f"{job_id}{SUFFIX}"

    def _forget(self, job_id: str) -> None:
        """With the lock held: drop the index entry and its file."""
        entry = self._index.pop(job_id, None)
        if entry is not None:
            self._total -= entry.size
            _remove(self._path(job_id))

    def _drop_if_same(self, job_id: str, entry: _Entry) -> bool:
        """Drop ``job_id`` unless a put replaced the entry read before (that file is new)."""
        with self._lock:
            if self._index.get(job_id) is not entry:
                return False
            self._forget(job_id)
            return True

    def _scan(self) -> None:
        """Rebuild the index from the folder, reading only each file's header."""
        found: list[tuple[str, _Entry]] = []
        for path in self._folder.iterdir():
            name = path.name
            if name.endswith(TEMP_SUFFIX):
                log.info("removing %s, left over from an interrupted write", path)
                _remove(path)
                continue
            job_id = name[:-len(SUFFIX)] if name.endswith(SUFFIX) else ""
            if not is_job_id(job_id) or not path.is_file() or path.is_symlink():
                log.warning("ignoring %s in the spool folder: not a spool file", path)
                continue
            try:
                with open(path, "rb") as f:
                    header = _read_header(f, job_id)
                    size = os.fstat(f.fileno()).st_size
                    expected = f.tell() + header.payload_bytes
                if size != expected:
                    raise _CorruptOutcome(f"{size} bytes on disk, the header says {expected}")
            except (_CorruptOutcome, OSError) as exc:
                log.warning("removing unreadable spool file %s: %s", path, exc)
                _remove(path)
                continue
            found.append((job_id, _Entry(size, header.finished)))
        found.sort(key=lambda item: item[1].finished)
        with self._lock:
            for job_id, entry in found:
                self._index[job_id] = entry
                self._total += entry.size


def _encode_item(item: Any) -> tuple[bytes, bytes]:
    if isinstance(item, ImageFrame):
        return TAG_FRAME, encode_frame(item)
    if isinstance(item, SERVER_MESSAGES):
        return TAG_MESSAGE, encode_message(item).encode("utf-8")
    raise TypeError(f"an outcome holds ImageFrames and server messages, not {type(item).__name__}")


def _read_header(f: BinaryIO, job_id: str) -> _Header:
    line = f.readline(HEADER_MAX)
    if not line.endswith(b"\n"):
        raise _CorruptOutcome(f"no header line within {HEADER_MAX} bytes")
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise _CorruptOutcome(f"header is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _CorruptOutcome("header is not a JSON object")
    if data.get("version") != FORMAT_VERSION:
        raise _CorruptOutcome(f"format version {data.get('version')!r}, "
                             f"this daemon reads {FORMAT_VERSION}")
    if data.get("job_id") != job_id:
        raise _CorruptOutcome(f"header names job {data.get('job_id')!r}, the file name {job_id}")
    owner, finished = data.get("owner"), data.get("finished")
    records, payload_bytes = data.get("records"), data.get("payload_bytes")
    if not isinstance(owner, str) or _DIGEST.fullmatch(owner) is None:
        raise _CorruptOutcome("header has no owner digest")
    if not isinstance(finished, (int, float)) or isinstance(finished, bool):
        raise _CorruptOutcome(f"header finish time {finished!r} is not a number")
    for key, value in (("records", records), ("payload_bytes", payload_bytes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _CorruptOutcome(f"header {key} {value!r} is not a count")
    return _Header(job_id, owner, float(finished), records, payload_bytes)


def _read_records(f: BinaryIO, header: _Header) -> list[Any]:
    body = f.read(header.payload_bytes + 1)
    if len(body) != header.payload_bytes:
        raise _CorruptOutcome(f"{len(body)} payload bytes, the header says "
                             f"{header.payload_bytes} (truncated?)")
    view = memoryview(body)
    items: list[Any] = []
    at = 0
    for n in range(header.records):
        if at + _RECORD.size > len(body):
            raise _CorruptOutcome(f"record {n} of {header.records} is cut short")
        tag, length = _RECORD.unpack_from(body, at)
        at += _RECORD.size
        if at + length > len(body):
            raise _CorruptOutcome(f"record {n} says {length} bytes, {len(body) - at} are left")
        payload = view[at:at + length]
        at += length
        try:
            if tag == TAG_FRAME:
                items.append(decode_frame(bytes(payload)))
            elif tag == TAG_MESSAGE:
                items.append(decode_message(bytes(payload), accept=SERVER_MESSAGES))
            else:
                raise _CorruptOutcome(f"record {n} has unknown kind {tag!r}")
        except ProtocolError as exc:
            raise _CorruptOutcome(f"record {n} does not decode: {exc}") from None
    if at != len(body):
        raise _CorruptOutcome(f"{len(body) - at} bytes after the last record")
    return items


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("cannot remove spool file %s: %s", path, exc)
