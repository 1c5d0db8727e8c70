"""`python -m bench` end to end: a tiny run (2 sessions, 2 s, tone, with the baseline)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LEVEL_KEYS = {
    "sessions": int,
    "jitter_ms": dict,
    "server_jitter_ms": dict,
    "fal_ms": dict,
    "barge_in_ms": dict,
    "underruns": int,
    "frames": int,
    "cpu_percent": float,
    "rss_mb": float,
}


def _check_level(level: dict) -> None:
    for key, kind in LEVEL_KEYS.items():
        assert key in level, key
        assert isinstance(level[key], kind | int if kind is float else kind), (key, level[key])
    for key in ("jitter_ms", "server_jitter_ms"):
        assert set(level[key]) >= {"p50", "p95", "p99", "max"}
        for q in ("p50", "p95", "p99", "max"):
            assert level[key][q] is not None and math.isfinite(level[key][q]), (key, q)
            assert 0 <= level[key][q] < 1000, (key, q, level[key][q])
    assert set(level["fal_ms"]) >= {"p50", "p95", "p99"}
    assert set(level["barge_in_ms"]) >= {"p50", "p95", "p99"}
    assert level["fal_ms"]["p50"] > 0
    assert level["frames"] > 0
    assert level["cpu_percent"] > 0
    assert level["rss_mb"] > 0
    assert level["session_errors"] == 0 and level["connect_failures"] == 0, level["errors"]
    assert level["stale_after_interrupted"] == 0


@pytest.mark.integration
def test_tiny_bench_writes_the_schema(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    plots = tmp_path / "plots"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--engine",
            "tone",
            "--sessions",
            "2",
            "--duration",
            "2",
            "--interrupt-fraction",
            "1",
            "--json",
            str(out),
            "--plots",
            str(plots),
            "--no-progress",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| server pacing error p95 (ms) |" in proc.stdout
    doc = json.loads(out.read_text())
    for key, kind in (("engine", str), ("device", str), ("duration_s", float), ("git_rev", str)):
        assert isinstance(doc[key], kind), key
    assert doc["engine"] == "tone" and doc["duration_s"] == 2.0
    assert [lv["sessions"] for lv in doc["levels"]] == [2]
    level = doc["levels"][0]
    _check_level(level)
    _check_level(level["baseline"])
    barge = level["barge_in_ms"]["p50"]  # None if no barge-in happened in 2 s
    assert barge is None or 0 < barge < 1000
    assert {p.name for p in plots.iterdir()} >= {"fal_cdf.png", "barge_in_cdf.png"}
