"""The benchmark scripts run end to end on the CPU and write the report they promise.

Smoke runs only: the tiny model, a few steps, one repetition. No timing thresholds; the
figures must exist and be positive, which fails if a path stopped measuring anything.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import generation, protocol_cost

ROW_FIGURES = ("s_per_batch", "s_per_image", "it_per_s", "first_call_s", "rss_mb")


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


def test_generation_benchmark_smoke(tmp_path: Path, atelier_home: Path):
    out = tmp_path / "generation.json"
    assert generation.main(["--model", "tiny", "--steps", "3", "--batch", "1", "2",
                            "--repeats", "1", "--warmup", "1", "--low-memory",
                            "--home", str(atelier_home), "--json", str(out)]) == 0
    report = json.loads(out.read_text("utf-8"))
    assert {"machine", "settings", "model", "hardware", "work", "rows", "summary"} <= set(report)
    assert _positive(report["hardware"]["matmul_tflops"])
    assert set(report["work"]) == {"1", "2"}
    # batch 2 does more arithmetic per call than batch 1
    assert report["work"]["2"]["per_step_flop"] > report["work"]["1"]["per_step_flop"] > 0

    rows = {(r["path"], r["batch"]): r for r in report["rows"]}
    for path in ("stock", "atelier", "daemon", "atelier-lowmem"):
        for batch in (1, 2):
            row = rows[(path, batch)]
            assert row["status"] == "ok", row
            for key in ROW_FIGURES:
                assert _positive(row[key]), (path, batch, key, row[key])
            assert _positive(row["floor_share"])
            assert row["peak_gpu_mb"] is None          # CPU run: no GPU figure invented
    for path in ("atelier", "daemon", "atelier-lowmem"):
        assert _positive(rows[(path, 1)]["first_preview_s"])
    assert rows[("stock", 1)]["first_preview_s"] is None   # stock diffusers has no previews
    assert _positive(rows[("stock", 1)]["load_s"]) and _positive(rows[("atelier", 1)]["load_s"])
    assert "fuse_qkv" in rows[("atelier", 1)]["levers"]["applied"]
    assert "vae_tiling" in rows[("atelier-lowmem", 1)]["levers"]["applied"]
    # optional features either ran or say why not
    for path in ("atelier+tiling", "atelier+depth"):
        row = rows[(path, 1)]
        assert row["status"] == "ok" or row["reason"], row
    for batch in ("1", "2"):
        summary = report["summary"][batch]
        assert _positive(summary["speedup_atelier_vs_stock"])
        assert _positive(summary["speedup_daemon_vs_stock"])
        assert _positive(summary["speedup_atelier_vs_stock_best"])


def test_protocol_cost_benchmark_smoke(tmp_path: Path):
    out = tmp_path / "protocol.json"
    assert protocol_cost.main(["--sizes", "64", "128", "--repeats", "1", "--warmup", "1",
                               "--json", str(out)]) == 0
    report = json.loads(out.read_text("utf-8"))
    rows = {(r["size"], r["format"]): r for r in report["rows"]}
    assert set(rows) == {(64, "raw"), (64, "png"), (128, "raw"), (128, "png")}
    for (size, fmt), row in rows.items():
        for key in ("protocol_ms", "plain_socket_ms", "bare_websocket_ms", "ratio"):
            assert _positive(row[key]), (size, fmt, key)
        if fmt == "raw":
            assert row["payload_bytes"] == size * size * 4
            assert row["png_encode_ms"] is None
        else:
            assert 0 < row["payload_bytes"] < size * size * 4 and _positive(row["png_encode_ms"])


def test_seam_benchmark_smoke(tmp_path: Path, atelier_home: Path):
    from benchmarks import seams

    out = tmp_path / "seams.json"
    assert seams.main(["--model", "tiny", "--size", "64", "--steps", "2", "--seeds", "1",
                       "--device", "cpu", "--home", str(atelier_home), "--json", str(out)]) == 0
    report = json.loads(out.read_text("utf-8"))
    assert report["model"] == "tiny"
    for tiling in ("none", "both"):
        for axis in ("x", "y"):
            assert _positive(report["mean"][tiling][axis])
