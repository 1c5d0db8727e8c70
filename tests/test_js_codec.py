"""The browser client's node tests (duplexd/web/test/*.test.mjs): the JS codec against the golden
vectors (whole, every split, one byte at a time), a round-trip property over every frame type,
the decoder's errors, the session over an in-memory socket, the jitter buffer and the resampler.
Runs `node --test` when node (18.15+) is installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WEB_TESTS = ROOT / "duplexd" / "web" / "test"
VECTORS = ROOT / "protocol" / "vectors" / "vectors.json"
MIN_TESTS = 130  # 24 round-trip properties, ~20 codec/session/audio tests, one per vector


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not installed (apt install nodejs)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
    major, minor = (int(x) for x in version.strip().lstrip("v").split(".")[:2])
    if (major, minor) < (18, 15):
        pytest.skip(f"node {version.strip()} has no --test-reporter (18.15+ needed)")
    return node


@pytest.mark.integration
def test_js_codec_and_client_pass_their_node_tests() -> None:
    node = _node()
    files = sorted(str(p) for p in WEB_TESTS.glob("*.test.mjs"))
    assert len(files) >= 4, files
    run = subprocess.run(
        [node, "--test", "--test-reporter=tap", *files],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    out = run.stdout
    counts = re.finditer(r"^# (tests|pass|fail|cancelled) (\d+)$", out, re.M)
    summary = {m[1]: int(m[2]) for m in counts}
    failures = [line for line in out.splitlines() if line.startswith("not ok")]
    assert run.returncode == 0, (
        f"node --test failed: {failures}\n{out[-4000:]}\n{run.stderr[-2000:]}"
    )
    assert summary.get("fail") == 0 and summary.get("cancelled") == 0, summary
    assert summary.get("pass", 0) >= MIN_TESTS, summary
    assert summary["pass"] == summary["tests"], summary
    # one passing test per golden vector: the JS codec checks every case the Python one does
    cases = json.loads(VECTORS.read_text(encoding="utf-8"))
    vector_tests = re.findall(r"^ok \d+ - (?:valid|invalid) vector (\S+)", out, re.M)
    assert sorted(vector_tests) == sorted(c["name"] for c in cases)
