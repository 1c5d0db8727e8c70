"""sd_notify over a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from duplexd._ops.sdnotify import Notifier, watchdog_interval_s


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(10)
    yield sock, path
    sock.close()


@pytest.mark.unit
def test_notifier_path_and_abstract_sockets(systemd: tuple[socket.socket, str]) -> None:
    sock, path = systemd
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n.ready("serving")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving"
    n.close()

    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"duplexd-test-{os.getpid()}"
    abstract.bind("\0" + name)
    abstract.settimeout(5)
    try:
        m = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert m.watchdog()
        assert abstract.recv(4096) == b"WATCHDOG=1"
        m.close()
    finally:
        abstract.close()


@pytest.mark.unit
def test_no_socket_is_a_no_op_and_watchdog_env() -> None:
    assert not Notifier.from_env({}).ready()
    missing = Notifier.from_env({"NOTIFY_SOCKET": "/nonexistent/x.sock"})
    assert not missing.ready()
    missing.close()
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000"}) == 2.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({}) is None


@pytest.mark.integration
def test_daemon_ready_watchdog_stopping_in_order(systemd: tuple[socket.socket, str]) -> None:
    """`duplexd serve` under a fake systemd: READY=1 (with STATUS) once it listens, WATCHDOG=1
    at half of WATCHDOG_USEC, then SIGTERM gives STOPPING=1 and exit status 0."""
    sock, path = systemd
    env = {
        **os.environ,
        "NOTIFY_SOCKET": path,
        "WATCHDOG_USEC": "400000",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("DUPLEXD_CONFIG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "duplexd", "serve", "--engine", "tone", "--port", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        received: list[bytes] = []
        while not any(m.startswith(b"READY=1") for m in received):
            received.append(sock.recv(4096))
        ready_at = time.monotonic()
        watchdogs = 0
        while watchdogs < 2:
            msg = sock.recv(4096)
            received.append(msg)
            watchdogs += msg == b"WATCHDOG=1"
        assert time.monotonic() - ready_at < 2.0  # pinged every 0.2 s
        proc.send_signal(signal.SIGTERM)
        while not any(m.startswith(b"STOPPING=1") for m in received):
            received.append(sock.recv(4096))
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        stderr = proc.stderr.read().decode()
        proc.stderr.close()
    kinds = [m.split(b"\n")[0].split(b"=")[0] for m in received if m != b"WATCHDOG=1"]
    assert kinds == [b"STATUS", b"READY", b"STOPPING"], (received, stderr)
    ready = next(m for m in received if m.startswith(b"READY=1"))
    assert ready.startswith(b"READY=1\nSTATUS=serving ws://127.0.0.1:"), ready
    first_ready = received.index(ready)
    assert b"WATCHDOG=1" in received[first_ready:]
