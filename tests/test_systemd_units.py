"""The shipped unit files pass `systemd-analyze verify` (skipped where it is not installed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SOCKETS = ("duplexd-workers.socket", "duplexd-workers-ready.socket")


@pytest.mark.parametrize(
    "unit",
    ["duplexd.service", "duplexd@.service", "duplexd-worker@.service", "duplexd-model.service"],
)
def test_unit_verifies(unit: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: unit files not verified")
    text = (DEPLOY / unit).read_text()
    assert "Type=notify" in text
    assert "MemoryDenyWriteExecute=yes" not in text.replace("# MemoryDenyWriteExecute=yes", "")
    # the real ExecStart points into /opt; verify checks that it is executable
    text = text.replace("/opt/duplexd/venv/bin/duplexd", sys.executable)
    name = unit.replace("@.", "@0.")
    (tmp_path / name).write_text(text)
    for socket_unit in SOCKETS:  # the workers' shared ports, beside them
        (tmp_path / socket_unit).write_text((DEPLOY / socket_unit).read_text())
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and "Failed to connect to" not in line and "bus" not in line.lower()
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr
