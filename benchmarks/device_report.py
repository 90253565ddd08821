"""What ``benchmarks/device_run.sh`` reads back from the reports it wrote: a compact summary
of a whole run, and the compile cost a generation report shows (to plan the next step).

    python -m benchmarks.device_report summary OUT_DIR
    python -m benchmarks.device_report compile-seconds OUT_DIR/sd15-b1.json

Standard library only (no torch), so it is quick and works whatever the run left behind:
a step that was cut off has no JSON, and its line in ``steps.txt`` says why.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from .measure import format_table

STEPS_FILE = "steps.txt"          # one line per step, written by device_run.sh
STEP_FIELDS = ("step", "status", "rc", "seconds", "limit_s", "report")


def read_steps(out: Path) -> list[dict[str, str]]:
    path = out / STEPS_FILE
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text("utf-8").splitlines():
        if line.strip():
            steps.append(dict(zip(STEP_FIELDS, line.split("\t"))))
    return steps


def _load(path: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None


def _row(report: dict[str, Any], path: str, batch: int) -> Optional[dict[str, Any]]:
    for row in report.get("rows", []):
        if row.get("path") == path and row.get("batch") == batch and row.get("status") == "ok":
            return row
    return None


def compile_seconds(report: dict[str, Any]) -> Optional[float]:
    """What compilation added to the Atelier load (its compile warm-up runs at load): the
    Atelier path's load time less the stock path's, which reads the same weights plainly.
    None when the report lacks either row."""
    batches = report.get("settings", {}).get("batches") or [1]
    atelier, stock = _row(report, "atelier", batches[0]), _row(report, "stock", batches[0])
    if atelier is None or stock is None or atelier.get("load_s") is None \
            or stock.get("load_s") is None:
        return None
    return max(0.0, atelier["load_s"] - stock["load_s"])


def _protocol_lines(report: dict[str, Any]) -> list[str]:
    table = [[f"{r['size']}", r["format"], r["protocol_ms"], r["plain_socket_ms"],
              r["bare_websocket_ms"], r["ratio"], r.get("png_encode_ms")]
             for r in report.get("rows", [])]
    return [format_table(["px", "format", "protocol ms", "plain ms", "bare ws ms", "ratio",
                          "png encode ms"], table)]


def _generation_lines(report: dict[str, Any]) -> list[str]:
    s = report.get("settings", {})
    gpu = report.get("machine", {}).get("gpu") or "no GPU"
    compiled = {None: "compile default", True: "compiled", False: "not compiled"}[s.get("compile")]
    if s.get("compile_mode", "default") != "default":
        compiled += f" (mode {s['compile_mode']})"
    lines = [f"{report.get('model', '?')}: {s.get('width')}x{s.get('height')}, {s.get('steps')} "
             f"steps, {s.get('dtype')} (Atelier {s.get('atelier_dtype')}), {compiled}, "
             f"{s.get('device')} ({gpu}), matmul "
             f"{report.get('hardware', {}).get('matmul_tflops', 0):.3g} TFLOP/s"]
    gpu_run = str(s.get("device", "")).startswith("cuda")
    table = []
    for r in report.get("rows", []):
        if r.get("status") != "ok":
            table.append([r["path"], r["batch"]] + [None] * 7 + ["skipped"])
            continue
        share = r.get("floor_share")
        table.append([r["path"], r["batch"], r["s_per_image"], r["s_per_image_min"],
                      r.get("it_per_s"), r["peak_gpu_mb"] if gpu_run else r.get("rss_mb"),
                      r.get("load_s"), r.get("first_call_s"),
                      None if share is None else f"{share * 100:.1f}%", ""])
    lines.append(format_table(["path", "batch", "s/image", "best", "it/s",
                               "peak GPU MB" if gpu_run else "RSS MB", "load s", "1st call s",
                               "floor", "note"], table))
    for batch, figures in report.get("summary", {}).items():
        shown = ", ".join(f"{k} {v:.3g}" for k, v in figures.items()
                          if v is not None and not k.endswith("_best"))
        lines.append(f"batch {batch}: {shown}")
    extra = compile_seconds(report)
    if extra is not None:
        lines.append(f"compilation at load: ~{extra:.0f} s (Atelier load less stock load)")
    return lines


def summary(out: Path) -> str:
    """The whole run in a few lines: each step's outcome, then each report's table."""
    lines = []
    steps = read_steps(out)
    if steps:
        lines.append(format_table(list(STEP_FIELDS), [[st.get(k, "") for k in STEP_FIELDS]
                                                      for st in steps]))
    reports = [st["report"] for st in steps if st.get("report") not in (None, "", "-")]
    reports += sorted(p.name for p in out.glob("*.json") if p.name not in reports)
    for name in reports:
        report = _load(out / name)
        if report is None:
            continue
        lines.append("")
        lines.append(f"== {name}")
        if report.get("benchmark") == "protocol_cost":
            lines += _protocol_lines(report)
        elif report.get("benchmark") == "generation":
            lines += _generation_lines(report)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("summary", help="summarise a run's folder").add_argument("out", type=Path)
    sub.add_parser("compile-seconds", help="compile cost in one generation report "
                   "(whole seconds; nothing printed when unknown)").add_argument("report", type=Path)
    args = p.parse_args(argv)
    if args.command == "summary":
        print(summary(args.out))
        return 0
    report = _load(args.report)
    seconds = None if report is None else compile_seconds(report)
    if seconds is not None:
        print(round(seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
