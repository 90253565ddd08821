"""Live painting's latest-wins rule (issue 15), against a real daemon on the tiny model: a
burst of canvas updates in one live session runs only the newest states, never a backlog."""

from __future__ import annotations

import time

from protocol import JobDone, PixelFormat
from protocol.client import AtelierClient, make_upload
from protocol.messages import Accepted, Cancelled, Error, GenerateRequest, Status

UPDATE = dict(kind="img2img", width=64, height=64, steps=8, strength=0.5, seed=11,
              prompt="live canvas")


def canvas(i: int):
    """The i-th state of a painter's canvas: a flat colour that changes with each stroke."""
    return make_upload(PixelFormat.RGB8, 64, 64, bytes([i % 256, 255 - i % 256, 90]) * 64 * 64)


def test_a_burst_of_live_updates_runs_only_the_newest(fresh_daemon):
    with AtelierClient(fresh_daemon.url) as client, AtelierClient(fresh_daemon.url) as other:
        client.wait_connected()
        other.wait_connected()
        other_ref = other.submit(GenerateRequest(width=64, height=64, steps=2, seed=1))
        refs, queued = [], []
        for i in range(100):
            frame = canvas(i)
            refs.append(client.submit(GenerateRequest(**UPDATE, init_image=frame.id), [frame],
                                      live="canvas"))
            if i % 20 == 19:
                client.get_status()
        ends: dict[str, object] = {}
        ids: dict[str, str] = {}
        deadline = time.monotonic() + 180
        while len(ends) < len(refs):
            assert time.monotonic() < deadline, f"{len(ends)} of {len(refs)} jobs ended"
            event = client.next_event(60)
            if isinstance(event, Accepted):
                ids[event.job_id] = event.ref
            elif isinstance(event, (JobDone, Cancelled)) or (
                    isinstance(event, Error) and event.job_id):
                ends[event.job_id] = event
            elif isinstance(event, Error):
                raise AssertionError(event)
            elif isinstance(event, Status):
                queued.append(event.queue_length)
        order = {ref: i for i, ref in enumerate(refs)}
        done = sorted(order[ids[j]] for j, e in ends.items() if isinstance(e, JobDone))
        superseded = [e for e in ends.values() if isinstance(e, Cancelled)]
        assert done and done[-1] == 99                       # the newest state always runs
        assert len(done) <= 10, f"{len(done)} of 100 updates ran: a backlog"
        assert len(superseded) == 100 - len(done)
        assert all(e.reason == "superseded" for e in superseded)
        assert max(queued) <= 2      # one live update waiting at most, beside the other's job
        # the other client's ordinary job was not starved by the burst
        other.wait_for(lambda e: isinstance(e, JobDone), 60)
        assert other_ref
        # the last result is the last canvas's: the same request alone gives the same pixels
        last = next(e for j, e in ends.items() if isinstance(e, JobDone) and order[ids[j]] == 99)
        frame = canvas(99)
        alone = client.run_job(GenerateRequest(**UPDATE, init_image=frame.id), [frame], 120)
        assert alone.images[0].data == last.images[0].data
