"""Live painting's latency, from a canvas change to the live result, split into the
plugin's, the protocol's and the model's shares.

    python -m benchmarks.live_latency [--side 512] [--updates 10] [--json out/live.json]

Three processes, as when an artist paints: the daemon (``atelier serve --model tiny``),
real Krita (``kritarunner``) running the plugin's own live-update code against it
(``benchmarks/krita_live.py``), and this process, which runs the same request directly
on Atelier's generator for the model's share. Shares per update (medians):

- plugin: the plugin's work in Krita: the checksum poll that fires the send, canvas read,
  request and uploads, result to layer pixels, the write into the live layer (the longest
  poll, one that reads every layer, is shown beside them);
- protocol: the round trip at the plugin's client minus the daemon's job time
  (``result.seconds``): websocket transport, framing, queueing, the submit checks;
- daemon: the daemon's job time minus the model's (fastest run against fastest run);
- model: Atelier's generator called directly with the same request and canvas.

The goal of issue 15 is plugin + protocol + daemon under 50 ms at 512x512. The 300 ms
debounce (a deliberate wait for the stroke to end) is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from backend.models.accel import AccelOptions
from backend.models.store import ModelStore
from backend.pipelines.generator import DiffusionGenerator
from protocol.client import make_upload
from protocol.frames import PixelFormat
from protocol.messages import GenerateRequest
from protocol.schema import from_dict

from .daemon_process import REPO, DaemonProcess
from .krita_env import isolated_env
from .measure import format_table, machine, median, time_calls, write_json

PLUGIN_PARTS = ("checksum", "read_canvas", "build_request", "prepare_inputs",
                "finished_images", "write_layer")


def krita_share(url: str, side: int, updates: int, scratch: Path) -> dict[str, Any]:
    """``benchmarks/krita_live.py`` in real Krita; its JSON report."""
    runner = shutil.which("kritarunner")
    if runner is None:
        raise SystemExit("kritarunner not found: the plugin's share is measured in real Krita "
                         "(apt-get install -y krita python3-pyqt5)")
    # The plugin as Krita users install it: the built zip, with its vendored websockets.
    built = subprocess.run([sys.executable, str(REPO / "krita_plugin" / "build.py"),
                            "--out", str(scratch / "dist")], capture_output=True, text=True,
                           check=True).stdout.strip()
    plugin = scratch / "plugin"
    zipfile.ZipFile(built).extractall(plugin)
    out = scratch / "krita-live.json"
    home = scratch / "krita-home"
    env = isolated_env(home, QT_QPA_PLATFORM="offscreen",
                       PYTHONPATH=os.pathsep.join([str(REPO / "benchmarks"), str(plugin)]))
    proc = subprocess.run([runner, "-s", "krita_live", str(out), url, str(side), str(updates)],
                          env=env, cwd=scratch, capture_output=True, text=True, timeout=1800)
    if not out.exists():
        raise SystemExit("Krita wrote no report:\n" + (proc.stdout + proc.stderr)[-3000:])
    report = json.loads(out.read_text())
    if not report["ok"]:
        raise SystemExit("the Krita side failed:\n" + report["error"])
    return report


def model_share(home: Path, request: GenerateRequest, side: int, repeats: int) -> list[float]:
    """The same job on Atelier's generator, called directly (no daemon, no protocol),
    with the speed levers ``atelier serve`` applies on this device."""
    store = ModelStore("cpu", torch.float32, home, [],
                       accel=AccelOptions.for_choice("cpu", "auto"))
    generator = DiffusionGenerator(store)
    store.load("tiny")
    canvas = bytes((90, 200, 120, 255)) * (side * side)
    upload = make_upload(PixelFormat.RGBA8, side, side, canvas)
    uploads = {request.init_image: upload}
    try:
        return time_calls(lambda: generator.generate(request, dict(uploads), lambda *_: None,
                                                     lambda: False), repeats)
    finally:
        store.release()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--home", type=Path, default=None,
                        help="Atelier home for the tiny model (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="atelier-live-") as tmp:
        scratch = Path(tmp)
        home = args.home or scratch / "home"
        daemon = DaemonProcess(home).start()
        try:
            krita = krita_share(daemon.url, args.side, args.updates, scratch)
        finally:
            daemon.stop()
        request = from_dict(GenerateRequest, krita["request"])
        model = model_share(home, request, args.side, args.updates)

    seconds = krita["seconds"]
    parts = {name: median(seconds[name]) for name in PLUGIN_PARTS}
    plugin = sum(parts.values())
    protocol = median([rt - job for rt, job in zip(seconds["round_trip"], seconds["daemon_job"])])
    model_s = median(model)
    # Best against best: the two run in different processes at different moments, so a
    # burst of load elsewhere would otherwise fall on one of them only.
    daemon_s = max(min(seconds["daemon_job"]) - min(model), 0.0)
    overhead = plugin + protocol + daemon_s
    rows = [[f"plugin: {name}", value * 1000] for name, value in parts.items()]
    rows.append(["(a Live poll reading every layer: longest)", max(seconds["checksum_max"]) * 1000])
    rows += [["plugin (sum)", plugin * 1000], ["protocol (round trip - daemon job)", protocol * 1000],
             ["daemon (job - model)", daemon_s * 1000], ["model (direct)", model_s * 1000],
             ["overhead outside the model", overhead * 1000],
             ["change -> live result (no debounce)", (overhead + model_s) * 1000]]
    print(f"live update at {args.side}x{args.side}, {krita['layers']} paint layers "
          f"(active: {krita.get('active_layer') or 'none, so every poll reads all'}), tiny model, "
          f"{request.steps} steps at strength {request.strength}, medians of {args.updates}:")
    print(format_table(["share", "ms"], rows))
    print(f"overhead outside the model: {overhead * 1000:.1f} ms per update (goal: under 50 ms)")
    if args.json is not None:
        write_json(args.json, {"benchmark": "live_latency", "machine": machine(),
                               "side": args.side, "updates": args.updates,
                               "request": krita["request"], "seconds": seconds,
                               "active_layer": krita.get("active_layer"),
                               "model_seconds": model,
                               "ms": {row[0]: row[1] for row in rows}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
