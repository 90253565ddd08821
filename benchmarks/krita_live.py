"""The Krita plugin's share of a live update, measured inside real Krita (``kritarunner``).

    kritarunner -s krita_live OUT.json DAEMON_URL SIDE UPDATES

Run by ``benchmarks.live_latency`` with ``benchmarks/`` and ``krita_plugin/`` on
PYTHONPATH. For a SIDE x SIDE document with three paint layers it repeats what the
docker's Live mode does for one canvas change, with the plugin's own functions and in
their order: the checksum the Live timer polls (``KritaDocument.pixels_checksum``), the
canvas read on Qt's thread (``controller._read_canvas``), the request and the uploads
(``build_request``, ``prepare_inputs``, done on the plugin's pixel thread), the submit
of the live job and the wait for its result through the plugin's own client, the result
back into layer pixels (``finished_images``) and its write into the live layer
(``KritaDocument.write_layer``). Each part is timed on its own; the round trip is split
by the daemon's own ``result.seconds`` (the job on its worker). The 300 ms debounce is a
deliberate wait and is not counted.
"""

from __future__ import annotations

import json
import time
import traceback
from typing import Any, Callable

from krita import Krita

from atelier_krita.controller import _read_canvas
from atelier_krita.geometry import range_for_family
from atelier_krita.host import KritaDocument
from atelier_krita.jobs import JobSettings, Mode, UploadIds, build_request, plan_job
from atelier_krita.live import LIVE_SESSION
from atelier_krita.protocol.client import AtelierClient
from atelier_krita.protocol.events import JobDone
from atelier_krita.protocol.frames import new_id
from atelier_krita.protocol.messages import Accepted, Cancelled, Error
from atelier_krita.protocol.schema import to_dict
from atelier_krita.work import finished_images, prepare_inputs

LAYERS = 3


def _paint(node: Any, side: int, shade: int) -> None:
    row = bytes((shade, (shade * 3) % 256, (shade * 7) % 256, 255)) * side
    node.setPixelData(row * side, 0, 0, side, side)


def _timed(record: dict[str, list[float]], name: str, action: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    value = action()
    record.setdefault(name, []).append(time.perf_counter() - started)
    return value


def measure(url: str, side: int, updates: int) -> dict[str, Any]:
    app = Krita.instance()
    native = app.createDocument(side, side, "live-bench", "RGBA", "U8", "", 72.0)
    layers = [native.createNode(f"paint {i}", "paintlayer") for i in range(LAYERS)]
    for i, node in enumerate(layers):
        native.rootNode().addChildNode(node, None)
        _paint(node, side, 40 * i)
    # Where a view shows the document this is the active layer, the one strokes land on;
    # headless Krita has none, so every poll reads every layer (the report says which).
    native.setActiveNode(layers[-1])
    native.refreshProjection()
    document = KritaDocument(native)
    live = native.createNode("[Atelier live]", "paintlayer")
    native.rootNode().addChildNode(live, None)

    client = AtelierClient(url, reconnect=False, client_name="krita-live-benchmark").start()
    client.wait_connected(timeout=30)
    settings = JobSettings(prompt="a stone wall", strength=0.5, steps=4, seed=1, previews=False)
    plan = plan_job(Mode.REFINE, settings, document.extent, None, range_for_family("sd15"))
    times: dict[str, list[float]] = {}
    for update in range(updates + 1):            # the first is a warm-up, dropped below
        _paint(layers[-1], side, 90 + update)     # the painter's stroke: Krita's work
        native.refreshProjection()
        # The Live timer's polls over the debounce (the last one fires the send); a poll
        # now and then reads every layer (PixelWatch's sweep): its cost is checksum_max.
        polls = []
        for _ in range(4):
            started = time.perf_counter()
            document.pixels_checksum(live)
            polls.append(time.perf_counter() - started)
            time.sleep(0.1)
        times.setdefault("checksum", []).append(polls[-1])
        times.setdefault("checksum_max", []).append(max(polls))
        read = _timed(times, "read_canvas", lambda: _read_canvas(document, plan, settings, (live,)))
        ids = UploadIds(image=new_id())
        request = _timed(times, "build_request", lambda: build_request(plan, settings, ids))
        prepared = _timed(times, "prepare_inputs",
                          lambda: prepare_inputs(read, plan, settings, ids))
        started = time.perf_counter()
        ref = client.submit(request, list(prepared.uploads.values()), live=LIVE_SESSION)
        accepted = client.wait_for(lambda e: isinstance(e, (Accepted, Error))
                                   and getattr(e, "ref", None) == ref, timeout=120)
        if isinstance(accepted, Error):
            raise RuntimeError(f"the daemon refused the live job: {accepted.message}")
        done = client.wait_for(lambda e: isinstance(e, (JobDone, Cancelled, Error))
                               and getattr(e, "job_id", None) == accepted.job_id, timeout=300)
        if not isinstance(done, JobDone):
            raise RuntimeError(f"the live job did not finish: {done!r}")
        times.setdefault("round_trip", []).append(time.perf_counter() - started)
        times.setdefault("daemon_job", []).append(done.result.seconds)
        images = _timed(times, "finished_images",
                        lambda: finished_images(done, plan.region, prepared.clip))
        _timed(times, "write_layer", lambda: document.write_layer(live, images[0].bgra, plan.region))
    client.close()
    native.close()
    active = native.activeNode()
    return {"side": side, "updates": updates, "layers": LAYERS, "request": to_dict(request),
            "active_layer": active.name() if active is not None else None,
            "model_extent": [plan.model_extent.width, plan.model_extent.height],
            "seconds": {name: values[1:] for name, values in times.items()}}


def __main__(args: list[str]) -> None:
    out, url, side, updates = args[0], args[1], int(args[2]), int(args[3])
    try:
        report = {"ok": True, **measure(url, side, updates)}
    except Exception:
        report = {"ok": False, "error": traceback.format_exc()}
    with open(out, "w") as handle:
        json.dump(report, handle)
