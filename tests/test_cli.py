"""`python -m duplexd serve | say` as subprocesses: the real command line, real sockets."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
TIMEOUT_S = 30


def _env() -> dict[str, str]:
    """The environment without any DUPLEXD_* setting that could change the daemon."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DUPLEXD_")}


class Daemon:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_line(self, needle: str) -> str:
        """The first stderr line containing `needle` (fails after TIMEOUT_S or at EOF)."""
        while True:
            try:
                line = self.lines.get(timeout=TIMEOUT_S)
            except queue.Empty:
                pytest.fail(f"no {needle!r} line within {TIMEOUT_S} s: {self.seen}")
            if line is None:
                pytest.fail(f"daemon exited ({self.proc.poll()}) before {needle!r}: {self.seen}")
            self.seen.append(line)
            if needle in line:
                return line


@contextmanager
def serve(tmp_path: Path, *args: str) -> Iterator[Daemon]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "duplexd", "serve", "--engine", "tone", "--port", "0", *args],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    daemon = Daemon(proc)
    try:
        yield daemon
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=TIMEOUT_S)
        daemon.thread.join(timeout=TIMEOUT_S)  # it reads to EOF, then the pipe can close
        assert proc.stderr is not None
        proc.stderr.close()


def stop(daemon: Daemon) -> int:
    """SIGTERM; the exit code (the daemon must be gone within a few seconds)."""
    daemon.proc.send_signal(signal.SIGTERM)
    return daemon.proc.wait(timeout=10)


def test_serve_say_wav_and_sigterm(tmp_path: Path) -> None:
    with serve(tmp_path, "--log-format", "json") as daemon:
        event = json.loads(daemon.wait_for_line('"listening"'))
        assert event["event"] == "listening"
        url = event["url"]
        assert url.startswith("ws://127.0.0.1:") and url.endswith("/v1")
        out = tmp_path / "x.wav"
        said = subprocess.run(
            [
                sys.executable,
                "-m",
                "duplexd",
                "say",
                "Hello there, how are you today?",
                "--url",
                url,
                "--out",
                str(out),
            ],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        assert said.returncode == 0, said.stderr
        assert "x.wav" in said.stdout
        with wave.open(str(out), "rb") as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (48_000, 1, 2)
            nframes = w.getnframes()
        # tone: 30 characters x 60 ms = 90 frames of 960 samples, plus the END frame
        assert nframes == 960 * 91
        assert nframes / 48_000 > 1.0
        assert stop(daemon) == 0


def test_text_log_format_is_plain(tmp_path: Path) -> None:
    with serve(tmp_path, "--log-format", "text") as daemon:
        line = daemon.wait_for_line("listening")
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)
        assert "ws://127.0.0.1:" in line
        assert not line.lstrip().startswith("{")
        assert stop(daemon) == 0


def test_unknown_engine_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "duplexd", "serve", "--engine", "nope", "--port", "0"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 2
    assert "nope" in done.stderr and "tone" in done.stderr
    assert "Traceback" not in done.stderr


def _run(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "duplexd", *args],
        cwd=tmp_path,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def test_a_public_address_without_auth_refuses_to_start(tmp_path: Path) -> None:
    done = _run(tmp_path, "serve", "--engine", "tone", "--host", "0.0.0.0", "--port", "0")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "duplexd: config: server.host: '0.0.0.0' is not loopback and no auth is configured:"
        " set [auth] token_file or secret_file, or pass --insecure-no-auth"
    ]


def test_chat_refuses_interims_out_of_range_in_one_line(tmp_path: Path) -> None:
    done = _run(tmp_path, "chat", "--no-mic", "--interim-ms", "-5")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "duplexd chat: --interim-ms takes 0 (final transcripts only) to 10000 ms (300 is a good"
        " start); got -5"
    ]


def test_a_server_token_on_the_command_line_is_refused(tmp_path: Path) -> None:
    done = _run(tmp_path, "serve", "--engine", "tone", "--token", "s3cret")
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert "DUPLEXD_SERVER__TOKEN" in line and "s3cret" not in line


@pytest.mark.parametrize("command", ["serve", "serve-model"])
def test_workers_are_systemds_one_line_says_how(tmp_path: Path, command: str) -> None:
    done = _run(tmp_path, command, "--engine", "tone", "--workers", "4")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"duplexd {command}: --workers is not a flag: systemd runs the workers of one port"
        " (it restarts a dead one, drains each on stop): sudo systemctl enable --now"
        " duplexd-workers.socket duplexd-workers-ready.socket duplexd-worker@9091"
        " duplexd-worker@9092"
        ' (README, "Workers")'
    ]


def test_token_command_prints_one_token(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    assert _run(tmp_path, "token", "--new-secret", str(secret)).returncode == 0
    env = {**_env(), "DUPLEXD_AUTH__SECRET_FILE": str(secret)}
    done = _run(tmp_path, "token", "--subject", "alice", "--ttl", "60", env=env)
    assert done.returncode == 0, done.stderr
    [token] = done.stdout.splitlines()
    assert token.startswith("dx1.") and token.count(".") == 2
    no_secret = _run(tmp_path, "token", "--subject", "alice")
    assert no_secret.returncode == 2 and len(no_secret.stderr.splitlines()) == 1
