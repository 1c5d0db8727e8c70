"""DEVELOPMENT.md cannot rot: every ```sh block in it runs here, or says why it cannot.

Each shell block is preceded by a marker comment:

- ``<!-- doc: run [timeout=S] -->``: run with bash (-e -u -o pipefail) from the repository
  root; it must exit 0.
- ``<!-- doc: start port=P -->``: a daemon: started (in its own process group) before the
  blocks run, ready once port P accepts connections, stopped with SIGTERM at the end.
- ``<!-- doc: needs CMD -->``: run like ``run`` if CMD is installed, else skipped naming it.
- ``<!-- doc: skip: REASON -->``: not run (GPU, sound card, ptrace, the suite itself...);
  the ``make`` targets it names are still checked with ``make -n`` (they exist and expand).

A block without a marker fails the test. Blocks that use ``make`` need an up-to-date
``.venv`` (``make -q install``); CI's ``make test`` provides it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "DEVELOPMENT.md"
DEFAULT_TIMEOUT_S = 120
START_TIMEOUT_S = 60

pytestmark = pytest.mark.integration

_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)
_MARKER = re.compile(r"<!-- doc: (run|start|needs|skip)\b:?\s*(.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    line: int
    kind: str  # run | start | needs | skip | missing
    arg: str
    code: str

    @property
    def id(self) -> str:
        first = self.code.strip().splitlines()[0] if self.code.strip() else ""
        return f"L{self.line}:{first[:40]}"

    def option(self, name: str, default: int) -> int:
        m = re.search(rf"\b{name}=(\d+)", self.arg)
        return int(m.group(1)) if m else default


def parse_guide(text: str) -> list[Block]:
    blocks = []
    for m in _BLOCK.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        marker = _MARKER.match(before)
        kind, arg = (marker.group(1), marker.group(2)) if marker else ("missing", before)
        blocks.append(Block(line, kind, arg, m.group(1)))
    return blocks


BLOCKS = parse_guide(GUIDE.read_text(encoding="utf-8"))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUPLEXD_")}
    env.pop("LOG_LEVEL", None)
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_CURRENT_TEST", None)
    env.pop("MAKEFLAGS", None)
    env.pop("MFLAGS", None)
    return env


def _venv_ready() -> str:
    """Why the guide's commands cannot run here ("" if they can)."""
    if not (ROOT / ".venv" / "bin" / "duplexd").exists():
        return "no .venv with duplexd: run `make install`"
    if shutil.which("make") is None:
        return "make is not installed"
    done = subprocess.run(["make", "-q", "install"], cwd=ROOT, env=_env(), capture_output=True)
    if done.returncode != 0:
        return ".venv is out of date (pyproject.toml or the C sources changed): `make install`"
    return ""


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def guide_env() -> Iterator[None]:
    """The daemons of the guide's `start` blocks, running while the other blocks run."""
    why = _venv_ready()
    if why:
        pytest.skip(why)
    (ROOT / "out").mkdir(exist_ok=True)
    procs: list[tuple[Block, subprocess.Popen[bytes], Path]] = []
    try:
        for block in (b for b in BLOCKS if b.kind == "start"):
            port = block.option("port", 0)
            assert port, f"line {block.line}: a start block needs port=P"
            if _port_open(port):
                pytest.fail(f"port {port} is in use: DEVELOPMENT.md line {block.line} needs it")
            log = ROOT / "out" / f"doc-daemon-{port}.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    ["bash", "-c", block.code],
                    cwd=ROOT,
                    env=_env(),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            procs.append((block, proc, log))
        for block, proc, log in procs:
            port = block.option("port", 0)
            deadline = time.monotonic() + START_TIMEOUT_S
            while not _port_open(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"line {block.line}: no daemon on {port}:\n{log.read_text()}")
                time.sleep(0.1)
        yield
    finally:
        for _, proc, _ in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # its own session: make and duplexd
        for _, proc, _ in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _make_lines(code: str) -> list[list[str]]:
    """The `make ...` commands of a block, as argv (comments and $(...) arguments dropped)."""
    out = []
    for raw in code.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line.startswith("make "):
            continue
        line = re.sub(r"\S*\$\([^)]*\)", "", line)  # PID=$(pgrep ...): left out
        args = shlex.split(line)[1:]
        out.append(args)
    return out


def test_every_block_has_a_marker() -> None:
    missing = [f"line {b.line}" for b in BLOCKS if b.kind == "missing"]
    assert not missing, f"```sh blocks without a <!-- doc: ... --> marker: {missing}"
    assert sum(b.kind == "run" for b in BLOCKS) >= 10
    skipped = [b for b in BLOCKS if b.kind == "skip"]
    assert all(b.arg for b in skipped), "a skip marker must give its reason"


RUNNABLE = [b for b in BLOCKS if b.kind in ("run", "needs")]


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.id)
def test_block_runs(block: Block, guide_env: None) -> None:
    if block.kind == "needs" and shutil.which(block.arg.split()[0]) is None:
        pytest.skip(f"{block.arg.split()[0]} is not installed")
    timeout = block.option("timeout", DEFAULT_TIMEOUT_S)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.code],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, (
        f"DEVELOPMENT.md line {block.line} failed ({done.returncode}):\n{block.code}\n"
        f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
    )


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind == "skip"], ids=lambda b: b.id)
def test_skipped_block_targets_exist(block: Block, guide_env: None) -> None:
    commands = _make_lines(block.code)
    for args in commands:
        done = subprocess.run(
            ["make", "-n", *args], cwd=ROOT, env=_env(), capture_output=True, text=True
        )
        assert done.returncode == 0, f"line {block.line}: make -n {args}: {done.stderr}"
    if not commands:
        pytest.skip(block.arg)


@pytest.mark.parametrize(
    "name",
    [
        "install", "run", "test", "test-unit", "test-integration", "lint", "fix", "typecheck",
        "ci", "cov", "bench", "spy-top", "spy-record", "profile-engine", "tsan",
    ],
)  # fmt: skip
def test_makefile_has_the_guide_targets(name: str) -> None:
    text = (ROOT / "Makefile").read_text()
    assert re.search(rf"^{re.escape(name)}:", text, re.M), f"make {name} is missing"


def test_trace_written_by_the_guide_has_no_audio(guide_env: None) -> None:
    """Runs after the trace block (file order): the guide's claim about --trace holds."""
    path = ROOT / "out" / "trace.jsonl"
    if not path.exists():
        pytest.skip("the trace block did not run")
    text = path.read_text()
    # no audio bytes: no "pcm" field (Welcome's info.codec may name the codec "pcm")
    assert '"type":"audio"' in text and '"pcm":' not in text
