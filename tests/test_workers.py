"""Workers: several daemons on one port by socket activation (deploy/duplexd-workers.socket and
deploy/duplexd-worker@.service), started here as systemd starts them (the shared listening
socket as fd 3, LISTEN_FDS and LISTEN_PID: `bench.daemon.start_worker`). Both accept from the
one socket; a SIGTERM drains one, which stops accepting, and every new session goes to the
other, with no balancer in front. The two run the tone engine with different default voices,
so Welcome.voice tells which one took a session. Both are also given the shared readiness
socket (deploy/duplexd-workers-ready.socket, fd 4): its /readyz is 200 while either accepts,
and nobody answers it once neither does."""

from __future__ import annotations

import http.client
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from test_haproxy import DRAINING, by_daemon, hold_sessions, wait_ready
from test_service import CLIENT_SOCKET_LEAK, http_get, samples, until

from bench.daemon import (
    Server,
    ServerFailed,
    free_port,
    listening_socket,
    start_server,
    start_worker,
)
from duplexd.client.session import open_session

pytestmark = [
    pytest.mark.usefixtures("collect_leaked_sockets"),
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.filterwarnings(CLIENT_SOCKET_LEAK),
]


def worker_argv(voice: str, http_port: int) -> list[str]:
    return [sys.executable, "-m", "duplexd", "serve", "--engine=tone", f"--voice={voice}",
            "--port=1", f"--http-port={http_port}", "--drain-timeout=20",
            "--log-format=json", "--log-level=info"]  # fmt: skip


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        s.stop()


async def shared_readyz(port: int) -> tuple[int, str] | None:
    """GET /readyz on the workers' shared readiness port: None if nobody answers (left in
    the listening socket's queue for 2 s, as systemd's holds it while no worker runs)."""
    with trio.move_on_after(2):
        try:
            return await http_get(port, "/readyz")
        except OSError:
            pass
    return None


@pytest.fixture
def ready() -> Iterator[socket.socket]:
    """The workers' shared readiness socket, held here to the end as systemd holds it."""
    with listening_socket() as sock:
        yield sock


async def test_two_workers_share_one_port_and_one_drains(
    servers: list[Server], ready: socket.socket
) -> None:
    http_a, http_b = free_port(), free_port()
    ready_port = ready.getsockname()[1]
    with listening_socket() as sock:
        port = sock.getsockname()[1]
        a = start_worker("a", sock, worker_argv("low", http_a), ready=ready)
        servers.append(a)
        b = start_worker("b", sock, worker_argv("high", http_b), ready=ready)
        servers.append(b)
    # (--port=1 is not bound: the workers serve on the socket they were given)
    assert a.url == b.url == f"ws://127.0.0.1:{port}/v1"
    await wait_ready(http_a)
    await wait_ready(http_b)
    # the shared readiness port: /readyz of whichever worker takes the connection
    assert await shared_readyz(ready_port) == (200, "ready\n")
    assert (await http_get(ready_port, "/metrics"))[0] == 404  # (each worker's own port)

    async with trio.open_nursery() as nursery:
        sessions, results, release = await hold_sessions(nursery, a.url, 20, spacing_s=0.01)
        # one queue, two processes taking from it: both took some
        by_voice = await by_daemon(sessions, http_a, http_b, at_least=1)

        # every session starts an utterance; then worker A gets SIGTERM mid-utterance
        release.set()
        await until(lambda: sum(s.started for s in sessions) == 20)
        a.proc.send_signal(signal.SIGTERM)
        await wait_ready(http_a, DRAINING)  # (its loop has the signal: it accepts no more)
        # A accepts no more: every new session is B's, and none is refused; and B alone
        # answers the shared /readyz: still ready, as the host is
        for _ in range(8):
            async with open_session(a.url) as late:
                assert late.welcome.voice == "high"
            assert await shared_readyz(ready_port) == (200, "ready\n")
    # A's sessions heard their utterance to the end, then were told to go away
    assert sorted(results["going_away"]) == ["low"] * len(by_voice["low"])
    assert results["done"].count("low") == len(by_voice["low"])
    assert a.proc.wait(20) == 0
    assert b.proc.poll() is None
    m_b = samples((await http_get(http_b, "/metrics"))[1])
    assert m_b["duplexd_sessions_total"] == len(by_voice["high"]) + 8
    # the daemon's process keeps its modules and models out of the collector's full walks
    assert m_b["duplexd_gc_frozen_objects"] > 10_000
    assert m_b["duplexd_gc_longest_full_collection_seconds"] >= 0
    assert m_b["duplexd_gc_swept_objects_total"] == 0  # (no sweep due in a test this short)
    # no worker left: the check waits in the socket's queue, unanswered (a balancer's fails)
    b.proc.send_signal(signal.SIGTERM)
    assert b.proc.wait(20) == 0
    assert await shared_readyz(ready_port) is None


def test_a_passed_descriptor_that_is_not_a_listening_socket_is_one_line() -> None:
    """LISTEN_FDS names fd 3, but fd 3 is a socket that is not listening: one line, exit 2."""
    with socket.socket() as sock:  # bound, not listening
        sock.bind(("127.0.0.1", 0))
        sock.set_inheritable(True)
        with pytest.raises(ServerFailed) as failed:
            start_worker("bad", sock, worker_argv("low", 0))
    assert "fd 3 is not a listening TCP socket: use ListenStream= in the .socket unit" in str(
        failed.value
    )
    assert "(exit 2)" in str(failed.value) and "Traceback" not in str(failed.value)
    assert start_server  # (the same start as any bench server)


def test_the_readiness_socket_alone_is_one_line() -> None:
    """Only the shared readiness socket passed (the worker unit's Sockets= lacks the
    WebSocket port's unit): one line that says what to add, exit 2."""
    with listening_socket() as ready, pytest.raises(ServerFailed) as failed:
        start_worker("bad", ready, worker_argv("low", 0), sock_name="ready")
    assert (
        "socket activation: only the shared readiness socket was passed: give the worker its"
        " WebSocket port too (Sockets=duplexd-workers.socket duplexd-workers-ready.socket)"
    ) in str(failed.value)
    assert "(exit 2)" in str(failed.value) and "Traceback" not in str(failed.value)


async def test_the_shared_readiness_port_speaks_https_with_the_side_port(
    servers: list[Server], ready: socket.socket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `[tls]` and `server.http_tls` the side port is https, and so is the workers' shared
    readiness port (one worker here): a client that trusts the CA reads 200 "ready" there."""
    import ssl

    import trustme

    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "s.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("DUPLEXD_TLS__CERT", str(tmp_path / "s.pem"))
    monkeypatch.setenv("DUPLEXD_TLS__KEY", str(tmp_path / "s.pem"))
    monkeypatch.setenv("DUPLEXD_SERVER__HTTP_TLS", "true")
    http_port = free_port()
    with listening_socket() as sock:
        servers.append(start_worker("tls", sock, worker_argv("low", http_port), ready=ready))

    def get() -> tuple[int, bytes]:
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        port = ready.getsockname()[1]
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
        try:
            conn.request("GET", "/readyz")
            answer = conn.getresponse()
            return answer.status, answer.read()
        finally:
            conn.close()

    with trio.fail_after(30):
        while True:  # (ready once the worker has loaded its model and listens)
            try:
                status, body = await trio.to_thread.run_sync(get)
            except (OSError, http.client.HTTPException):
                await trio.sleep(0.1)
                continue
            if status == 200:
                break
            await trio.sleep(0.1)
    assert body == b"ready\n"
