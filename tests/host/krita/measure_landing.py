"""How long an Upscale result holds Krita's main loop while it lands, in the full
application under Xvfb: ``.venv/bin/python tests/host/krita/measure_landing.py [SIDE...]``
(default 2048 4096: a 2048 canvas upscaled 2x to 4096, a 4096 one to 8192; ``--zip`` measures
another build of the plugin, e.g. an older commit's).

For each side a daemon (Lanczos, no model) and a fresh Krita run the landing probe
(tests/host/krita/land_probe): the docker's Upscale button is pressed on a SIDE x SIDE
document in a view, and a 10 ms heartbeat timer on Qt's thread records the longest gap
of the main loop (the UI freeze a painter feels) and every gap over 50 ms with the
docker's message at the time; each call of the plugin's KritaDocument is timed (longest,
total seconds, count). Prints the figures; asserts nothing (the landing's correctness is
tested in tests/test_krita_host.py). An 8192 landing needs about 2 GB of memory.
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.daemon_process import DaemonProcess  # noqa: E402
from benchmarks.krita_env import isolated_env  # noqa: E402

SCREEN = "1366x768x24"
# ATELIER_LAND_PROFILE=1: `perf record` Qt's thread during the job, the top functions printed
PROFILE = os.environ.get("ATELIER_LAND_PROFILE") == "1"
# innermost frames of threads that wait (the client's, the pixel worker's when idle)
IDLE_FRAMES = ("threading.py:wait", "threading.py:_wait_for_tstate_lock", "thread.py:_worker",
               "queue.py:get", "connection.py:recv_events", "messages.py:get_next_frame")


def measure(side: int, daemon: DaemonProcess, root: Path, plugin_zip: Path) -> dict:
    home = root / f"krita-{side}"
    pykrita = home / "data" / "krita" / "pykrita"
    pykrita.mkdir(parents=True)
    with zipfile.ZipFile(plugin_zip) as archive:
        archive.extractall(pykrita)
    shutil.copytree(HERE / "land_probe" / "atelier_land_probe", pykrita / "atelier_land_probe")
    shutil.copy(HERE / "land_probe" / "atelier_land_probe.desktop", pykrita)
    (home / "config").mkdir()
    (home / "config" / "kritarc").write_text(
        "[python]\nenable_atelier_krita=true\nenable_atelier_land_probe=true\n\n"
        f"[atelier_krita]\nhost=127.0.0.1\nport={daemon.port}\n")
    out = root / f"landing-{side}.json"
    perf = {"ATELIER_LAND_PERF": str(root / f"perf-{side}.data")} if PROFILE else {}
    for _ in range(3):     # xvfb-run -a races other X servers starting at the same moment
        proc = subprocess.run(["xvfb-run", "-a", "-s", f"-screen 0 {SCREEN}", "krita",
                               "--nosplash"],
                              env=isolated_env(home, ATELIER_LAND_OUT=str(out),
                                               ATELIER_LAND_SIDE=str(side), **perf),
                              cwd=root, capture_output=True, text=True, timeout=900)
        if out.exists() or "could not connect to display" not in proc.stderr:
            break
    if not out.exists():
        raise RuntimeError(f"Krita wrote no figures for {side}; its output ended with:\n"
                           + (proc.stdout + proc.stderr)[-3000:])
    figures = json.loads(out.read_text())
    if perf:
        report = subprocess.run(["perf", "report", "--stdio", "--no-children", "-g", "none",
                                 "--sort", "dso,sym", "-i", perf["ATELIER_LAND_PERF"]],
                                capture_output=True, text=True)
        figures["profile"] = [line for line in report.stdout.splitlines()
                              if line.strip() and not line.startswith("#")][:30]
    return figures


def report(side: int, figures: dict) -> None:
    print(f"\n== {side}x{side} upscaled 2x to {2 * side}x{2 * side} ==")
    if not figures.get("ok"):
        print(figures.get("error"))
        return
    print(f"message: {figures['message']}")
    print(f"job {figures['job_s']} s; longest main-loop gap {figures['longest_gap_s']} s "
          f"(idle before the job: {figures['idle_longest_s']} s; the click {figures['click_s']} s)")
    print(f"document {figures['extent']}, layers {figures['layers']}, Edit > {figures['undo']}")
    print("KritaDocument calls (longest s, total s, count):")
    for name, (longest, total, count) in sorted(figures["calls"].items(),
                                                key=lambda item: -item[1][0]):
        print(f"  {name:24s} {longest:7.3f} {total:8.3f} {count:5d}")
    print("main-loop gaps over 50 ms (at s, gap s, docker message):")
    for at, gap, what in figures["gaps"]:
        print(f"  {at:8.2f} {gap:6.3f}  {what}")
    print("Python code running while the main loop was held over 100 ms, sampled every 50 ms "
          "(held s: Qt's thread | other threads not waiting):")
    shown = None
    for held, stacks in figures["stall_samples"]:
        busy = {who: where for who, where in stacks.items()
                if who == "main" or not where.startswith(IDLE_FRAMES)}
        line = " | ".join(f"{who}: {where}" for who, where in busy.items())
        if line != shown:
            print(f"  {held:6.2f} {line}")
            shown = line
    if "profile" in figures:
        print("where Qt's thread spent its time (perf, share of samples, library, function):")
        for line in figures["profile"]:
            print("  " + line)

def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sides", nargs="*", type=int, default=[2048, 4096])
    parser.add_argument("--zip", type=Path, default=None,
                        help="the plugin zip to measure (default: built from this tree), "
                             "e.g. one built from an older commit to compare")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="atelier-landing-") as tmp:
        root = Path(tmp)
        plugin_zip = args.zip
        if plugin_zip is None:
            built = subprocess.run([sys.executable, str(REPO / "krita_plugin" / "build.py"),
                                    "--out", str(root)], capture_output=True, text=True,
                                   check=True)
            plugin_zip = Path(built.stdout.strip())
        daemon = DaemonProcess(root / "atelier-home").start()
        try:
            for side in args.sides:
                figures = measure(side, daemon, root, plugin_zip)
                report(side, figures)
                print("raw:", json.dumps(figures))
        finally:
            daemon.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
