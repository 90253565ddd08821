"""The outcome spool on real files: what a daemon put is there for its owner after a restart,
for no one else, and only within its bounds. A restart is a new OutcomeSpool on the same folder.
"""

from __future__ import annotations

import hashlib
import logging
import stat
import struct
import threading
import zlib
from pathlib import Path
from typing import Any

import pytest

from backend.spool import OutcomeSpool
from protocol.codec import encode_message
from protocol.errors import ErrorCode
from protocol.frames import FrameKind, ImageFrame, PixelFormat, new_id
from protocol.messages import Cancelled, Error, GenerateRequest, ImageInfo, Result

OWNER = "0123456789abcdef0123456789abcdef"
STRANGER = "fedcba9876543210fedcba9876543210"


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def png(width: int, height: int) -> bytes:
    """A real, tiny RGBA PNG file."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    rows = b"".join(b"\x00" + bytes([10, 200, 30, 255]) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def rgba_frame(job_id: str, index: int = 0, side: int = 8) -> ImageFrame:
    data = bytes((i * 7 + index) % 256 for i in range(side * side * 4))
    return ImageFrame(FrameKind.RESULT, PixelFormat.RGBA8, index, side, side, job_id, data)


def done_outcome(job_id: str) -> list[Any]:
    """Two RESULT frames (raw and PNG) and the Result that follows them."""
    frames = [rgba_frame(job_id, 0),
              ImageFrame(FrameKind.RESULT, PixelFormat.PNG, 1, 4, 3, job_id, png(4, 3))]
    params = GenerateRequest(prompt="a red brick wall", width=8, height=8, steps=4, seed=7,
                             batch_size=2, output_format="png")
    result = Result(job_id=job_id,
                    images=[ImageInfo(index=0, width=8, height=8, format="rgba8", seed=7),
                            ImageInfo(index=1, width=4, height=3, format="png", seed=8)],
                    params=params, tiling="none", model="tiny", seconds=0.41)
    return [*frames, result]


def outcome_bytes(outcome: list[Any], tmp: Path) -> int:
    """The size of ``outcome`` on disk, measured by putting it in a scratch spool (with a
    clock whose times print as long as the tests' own: the header holds the time)."""
    spool = OutcomeSpool(tmp, keep_bytes=1 << 40, clock=Clock())
    spool.put("0" * 32, OWNER, outcome)
    return spool.total_bytes


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_outcomes_survive_a_restart(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    done, cancelled, failed = new_id(), new_id(), new_id()
    outcomes = {
        done: done_outcome(done),
        cancelled: [Cancelled(job_id=cancelled)],
        failed: [Error(code=ErrorCode.JOB_FAILED, message="RuntimeError: boom", job_id=failed)],
    }
    spool = OutcomeSpool(folder)
    for job_id, outcome in outcomes.items():
        spool.put(job_id, OWNER, outcome)
    written = spool.total_bytes
    assert written == sum(p.stat().st_size for p in folder.iterdir())

    restarted = OutcomeSpool(folder)
    assert restarted.total_bytes == written
    for job_id, outcome in outcomes.items():
        assert restarted.get(job_id, OWNER) == outcome
    # what comes back is the protocol's own types, not look-alikes
    back = restarted.get(done, OWNER)
    assert back is not None
    assert isinstance(back[0], ImageFrame) and back[0].format == PixelFormat.RGBA8
    assert back[1].data == outcomes[done][1].data
    assert isinstance(back[2], Result) and back[2].params.seed == 7


def test_folder_is_private_and_holds_no_key(tmp_path: Path) -> None:
    folder = tmp_path / "home" / "spool"
    spool = OutcomeSpool(folder)
    job_id = new_id()
    spool.put(job_id, OWNER, [Cancelled(job_id=job_id)])
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    blob = (folder / f"{job_id}.outcome").read_bytes()
    assert OWNER.encode() not in blob
    assert hashlib.sha256(OWNER.encode()).hexdigest().encode() in blob


def test_someone_elses_outcome_is_none(tmp_path: Path) -> None:
    spool = OutcomeSpool(tmp_path)
    job_id = new_id()
    spool.put(job_id, OWNER, [Cancelled(job_id=job_id)])
    assert spool.get(job_id, STRANGER) is None
    assert spool.get(job_id, "") is None
    assert spool.get(new_id(), OWNER) is None          # unknown looks the same
    assert spool.get(job_id, OWNER) == [Cancelled(job_id=job_id)]   # still there for its owner


def test_expiry_by_age_carries_over_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    spool = OutcomeSpool(tmp_path, keep_s=60.0, clock=clock)
    old, young = new_id(), new_id()
    spool.put(old, OWNER, [Cancelled(job_id=old)])
    clock.now += 30
    spool.put(young, OWNER, [Cancelled(job_id=young)])
    clock.now += 29
    assert spool.get(old, OWNER) == [Cancelled(job_id=old)]

    clock.now += 2    # old is 61 s old, young 31 s
    restarted = OutcomeSpool(tmp_path, keep_s=60.0, clock=clock)
    assert restarted.get(old, OWNER) is None
    assert restarted.get(young, OWNER) == [Cancelled(job_id=young)]
    assert files(tmp_path) == [f"{young}.outcome"]

    clock.now += 30
    restarted.expire()
    assert files(tmp_path) == [] and restarted.total_bytes == 0


def test_expiry_by_bytes_evicts_oldest_first(tmp_path: Path) -> None:
    one = outcome_bytes(done_outcome("0" * 32), tmp_path / "scratch")
    folder = tmp_path / "spool"
    clock = Clock()
    spool = OutcomeSpool(folder, keep_bytes=3 * one, clock=clock)
    ids = [new_id() for _ in range(5)]
    for job_id in ids:
        spool.put(job_id, OWNER, done_outcome(job_id))
        clock.now += 1
    assert spool.total_bytes == 3 * one
    assert [spool.get(j, OWNER) is not None for j in ids] == [False, False, True, True, True]
    assert files(folder) == sorted(f"{j}.outcome" for j in ids[2:])

    # a restart with a smaller budget keeps the newest
    smaller = OutcomeSpool(folder, keep_bytes=one, clock=clock)
    assert files(folder) == [f"{ids[4]}.outcome"]
    assert smaller.get(ids[4], OWNER) == done_outcome(ids[4])


def test_too_large_outcome_is_not_kept(tmp_path: Path) -> None:
    job_id = new_id()
    size = outcome_bytes(done_outcome(job_id), tmp_path / "scratch")
    folder = tmp_path / "spool"
    spool = OutcomeSpool(folder, keep_bytes=size - 1)
    small = new_id()
    spool.put(small, OWNER, [Cancelled(job_id=small)])
    spool.put(job_id, OWNER, done_outcome(job_id))
    assert spool.get(job_id, OWNER) is None
    assert files(folder) == [f"{small}.outcome"]      # and it pushed nothing out
    assert spool.get(small, OWNER) == [Cancelled(job_id=small)]


def test_replacing_an_outcome_counts_it_once(tmp_path: Path) -> None:
    spool = OutcomeSpool(tmp_path)
    job_id = new_id()
    spool.put(job_id, OWNER, done_outcome(job_id))
    spool.put(job_id, OWNER, [Cancelled(job_id=job_id)])
    assert spool.get(job_id, OWNER) == [Cancelled(job_id=job_id)]
    assert spool.total_bytes == (tmp_path / f"{job_id}.outcome").stat().st_size
    spool.discard(job_id)
    assert spool.get(job_id, OWNER) is None
    assert files(tmp_path) == [] and spool.total_bytes == 0


@pytest.mark.parametrize("damage", ["truncated", "cut_at_record", "flipped", "bad_header",
                                    "empty", "other_job"])
def test_corrupt_file_is_none_and_removed(tmp_path: Path, damage: str,
                                          caplog: pytest.LogCaptureFixture) -> None:
    job_id = new_id()
    OutcomeSpool(tmp_path).put(job_id, OWNER, done_outcome(job_id))
    path = tmp_path / f"{job_id}.outcome"
    blob = path.read_bytes()
    header_end = blob.index(b"\n") + 1
    spool = OutcomeSpool(tmp_path)     # the index is built from the sound file
    if damage == "truncated":
        path.write_bytes(blob[:-10])
    elif damage == "cut_at_record":     # ends exactly where the Result record starts
        result_record = 5 + len(encode_message(done_outcome(job_id)[-1]).encode())
        path.write_bytes(blob[:-result_record])
    elif damage == "flipped":          # the magic of the first frame
        at = header_end + 5
        path.write_bytes(blob[:at] + b"XXXX" + blob[at + 4:])
    elif damage == "bad_header":
        path.write_bytes(b"{not json\n" + blob[header_end:])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "other_job":
        path.write_bytes(blob.replace(job_id.encode(), new_id().encode(), 1))
    with caplog.at_level(logging.WARNING, logger="atelier.spool"):
        assert spool.get(job_id, OWNER) is None
    assert not path.exists()
    assert spool.total_bytes == 0
    assert any("corrupt" in r.getMessage() for r in caplog.records)


def test_restart_drops_stray_and_unreadable_files(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    good, cut = new_id(), new_id()
    spool = OutcomeSpool(tmp_path)
    spool.put(good, OWNER, done_outcome(good))
    spool.put(cut, OWNER, done_outcome(cut))
    cut_path = tmp_path / f"{cut}.outcome"
    cut_path.write_bytes(cut_path.read_bytes()[:-1])       # a short file, seen from its header
    (tmp_path / f".{good}.abc123.tmp").write_bytes(b"half a write")
    (tmp_path / "notes.txt").write_text("not ours")
    with caplog.at_level(logging.INFO, logger="atelier.spool"):
        restarted = OutcomeSpool(tmp_path)
    assert files(tmp_path) == sorted([f"{good}.outcome", "notes.txt"])
    assert restarted.total_bytes == (tmp_path / f"{good}.outcome").stat().st_size
    assert restarted.get(good, OWNER) == done_outcome(good)
    assert restarted.get(cut, OWNER) is None
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "interrupted write" in messages and "unreadable" in messages and "notes.txt" in messages


@pytest.mark.parametrize("job_id", ["../x", "../" + "a" * 29, "A" * 32, "a" * 31, "a" * 33,
                                    "/etc/passwd", "a" * 31 + "/", "a" * 32 + "\x00", ""])
def test_bad_job_ids_touch_no_file(tmp_path: Path, job_id: str) -> None:
    folder = tmp_path / "spool"
    spool = OutcomeSpool(folder)
    # a file an unchecked id could reach
    (tmp_path / "x.outcome").write_bytes(b"outside")
    assert spool.get(job_id, OWNER) is None
    spool.discard(job_id)
    with pytest.raises(ValueError, match="32 lowercase hex"):
        spool.put(job_id, OWNER, [Cancelled(job_id="0" * 32)])
    assert files(tmp_path) == ["spool", "x.outcome"]
    assert (tmp_path / "x.outcome").read_bytes() == b"outside"
    assert files(folder) == []


def test_put_refuses_what_is_not_an_outcome(tmp_path: Path) -> None:
    spool = OutcomeSpool(tmp_path)
    with pytest.raises(TypeError, match="not dict"):
        spool.put(new_id(), OWNER, [{"type": "result"}])
    with pytest.raises(ValueError, match="owner"):
        spool.put(new_id(), "", [Cancelled(job_id="0" * 32)])
    assert files(tmp_path) == []


def test_put_on_one_thread_get_on_another(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """An encoder thread puts (and so evicts) while the loop thread gets: every get is a whole
    outcome or None, and the byte count matches the folder at the end."""
    one = outcome_bytes(done_outcome("0" * 32), tmp_path / "scratch")
    folder = tmp_path / "spool"
    spool = OutcomeSpool(folder, keep_bytes=4 * one)
    ids = [new_id() for _ in range(12)]
    done = threading.Event()

    def encoder() -> None:
        try:
            for _ in range(10):
                for job_id in ids:
                    spool.put(job_id, OWNER, done_outcome(job_id))
        finally:
            done.set()

    thread = threading.Thread(target=encoder)
    caplog.set_level(logging.WARNING, logger="atelier.spool")
    thread.start()
    seen = 0
    while not done.is_set():
        for job_id in ids:
            got = spool.get(job_id, OWNER)
            if got is not None:
                assert got == done_outcome(job_id)
                seen += 1
    thread.join()
    assert seen > 0
    assert spool.total_bytes == sum(p.stat().st_size for p in folder.iterdir()) <= 4 * one
    assert not any(name.endswith(".tmp") for name in files(folder))
    assert caplog.records == []      # an eviction racing a get is no corruption
