"""`make install-service DESTDIR=...`: a wheel of this checkout into its own venv under
/opt/duplexd (runtime dependencies only), the units, the configuration and the docs their
Documentation= names, into a temporary root; the units pass `systemd-analyze verify`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
UNITS = ("duplexd.service", "duplexd@.service", "duplexd-worker@.service", "duplexd-model.service")
SOCKETS = ("duplexd-workers.socket", "duplexd-workers-ready.socket")  # the workers' shared ports


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    done = subprocess.run(
        ["make", "-s", "install-service", f"DESTDIR={root}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def test_the_service_venv_holds_the_daemon_and_no_dev_tools(staged: Path) -> None:
    venv = staged / "opt/duplexd/venv"
    version = subprocess.run(
        [str(venv / "bin/duplexd"), "--version"], capture_output=True, text=True, timeout=120
    )
    assert version.returncode == 0 and version.stdout.startswith("duplexd "), version.stderr
    (site,) = venv.glob("lib/python3*/site-packages")
    names = {p.name for p in site.iterdir()}
    assert {"duplexd", "torch", "trio"} <= names
    assert not names & {"pytest", "hypothesis", "bench", "tests", "mypy", "ruff"}
    assert not list(site.glob("duplexd/.venv"))  # the working tree's venv is not copied


def test_units_config_and_docs_are_installed(staged: Path) -> None:
    for unit in UNITS:
        text = (staged / "etc/systemd/system" / unit).read_text()
        assert "ExecStart=/opt/duplexd/venv/bin/duplexd serve" in text
        doc = next(line for line in text.splitlines() if line.startswith("Documentation="))
        assert (staged / doc.removeprefix("Documentation=file:///")).is_file()
    assert (staged / "etc/duplexd/duplexd.toml").read_text().startswith("#")


@pytest.mark.parametrize("unit", (*UNITS, *SOCKETS))
def test_systemd_analyze_verify_accepts_the_units(staged: Path, unit: str, tmp_path: Path) -> None:
    """(Verified against this host's systemd with the binary's path inside the staging root:
    `verify --root` would want a whole system there.)"""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt install systemd)")
    for name in (*UNITS, *SOCKETS):  # (a unit's Sockets= must resolve beside it)
        text = (staged / "etc/systemd/system" / name).read_text()
        (tmp_path / name).write_text(text.replace("/opt/duplexd/", f"{staged}/opt/duplexd/"))
    path = tmp_path / unit
    done = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
