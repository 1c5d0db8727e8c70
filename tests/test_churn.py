"""Connection churn at a bounded rate (duplexd/_server/churn.py), and refused upgrades closed.

A burst of connections (opened together, or timing out together) must not put its work
between two ticks of the pacer: accepts and error closes take turns from one token bucket.
Virtual times are exact (MockClock); the refused-upgrade tests use real sockets.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing
import trustme
from harness import TEST_LIMITS, Pair, open_pair
from test_admission import open_daemon
from test_bad_input import assert_healthy, expect_error

from duplexd._ops.settings import TlsSettings
from duplexd._server.churn import ChurnRate, PacedListener
from duplexd.protocol import frames as fr


@pytest.mark.unit
async def test_turns_come_in_a_burst_then_at_the_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    churn = ChurnRate(100.0, burst=3)
    t0 = trio.current_time()
    times = []
    for _ in range(6):
        await churn.wait()
        times.append(trio.current_time() - t0)
    assert times == pytest.approx([0.0, 0.0, 0.0, 0.01, 0.02, 0.03], abs=1e-9)
    assert churn.waited == 3
    assert churn.waited_s == pytest.approx(0.03)  # 10 ms each
    await trio.sleep(1.0)  # the bucket refills to its burst, no further
    t1 = trio.current_time()
    for _ in range(4):
        await churn.wait()
    assert trio.current_time() - t1 == pytest.approx(0.01)


@pytest.mark.unit
async def test_waiters_take_turns_one_by_one(autojump_clock: trio.testing.MockClock) -> None:
    churn = ChurnRate(50.0, burst=1)
    t0 = trio.current_time()
    times: list[float] = []

    async def take() -> None:
        await churn.wait()
        times.append(trio.current_time() - t0)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(take)
    assert sorted(times) == pytest.approx([0.0, 0.02, 0.04, 0.06, 0.08], abs=1e-9)


@pytest.mark.unit
async def test_a_cancelled_wait_takes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    churn = ChurnRate(10.0, burst=1)
    await churn.wait()
    with trio.move_on_after(0.05):
        await churn.wait()  # the next turn is 0.1 s away
    t = trio.current_time()
    await churn.wait()  # so the turn it did not take is still there at 0.1 s
    assert trio.current_time() == pytest.approx(t + 0.05)
    with trio.CancelScope() as scope:
        scope.cancel()
        await churn.wait()  # cancelled at once, even with a turn free
    assert scope.cancelled_caught


@pytest.mark.unit
async def test_rate_zero_never_waits(autojump_clock: trio.testing.MockClock) -> None:
    churn = ChurnRate(0.0)
    t0 = trio.current_time()
    for _ in range(1000):
        await churn.wait()
    assert trio.current_time() == t0
    assert churn.waited == 0


@pytest.mark.unit
@pytest.mark.parametrize(("rate", "burst"), [(-1.0, 8), (math.inf, 8), (math.nan, 8), (10.0, 0)])
def test_bad_rates_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        ChurnRate(rate, burst)


class _Backlog(trio.abc.Listener[trio.abc.Stream]):
    """Test double of a listening socket: `arrive(n)` queues n connections."""

    def __init__(self) -> None:
        self.left = 0
        self.queued = trio.Event()
        self.accepted_at: list[float] = []

    def arrive(self, n: int) -> None:
        self.left += n
        self.queued.set()

    async def accept(self) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        assert self.left, "accepted with nothing queued"
        self.left -= 1
        if not self.left:
            self.queued = trio.Event()
        self.accepted_at.append(trio.current_time())
        _client, server = trio.testing.memory_stream_pair()
        return server

    async def aclose(self) -> None:
        pass


class _PacedBacklog(PacedListener):
    async def wait_for_connection(self) -> None:  # (the socket's readability, in the double)
        assert isinstance(self.inner, _Backlog)
        await self.inner.queued.wait()


async def _accept_forever(listener: PacedListener) -> None:
    while True:
        await listener.accept()


@pytest.mark.unit
async def test_a_burst_of_connections_is_accepted_at_the_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """20 connections queued: 8 (the burst) at once, then one every 2.5 ms (400 a second)."""
    backlog = _Backlog()
    backlog.arrive(20)
    listener = _PacedBacklog(backlog, ChurnRate(400.0, burst=8))  # type: ignore[arg-type]
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_accept_forever, listener)
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    got = [t - t0 for t in backlog.accepted_at]
    assert got == pytest.approx([0.0] * 8 + [0.0025 * n for n in range(1, 13)], abs=1e-9)


@pytest.mark.unit
async def test_an_idle_listener_holds_no_turn(autojump_clock: trio.testing.MockClock) -> None:
    """A burst after a quiet spell gets the burst, not one more (the listener takes its turn
    only once a connection is waiting), and Error closes meanwhile get every turn."""
    backlog = _Backlog()
    churn = ChurnRate(400.0, burst=8)
    listener = _PacedBacklog(backlog, churn)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_accept_forever, listener)
        await trio.sleep(5.0)
        t0 = trio.current_time()
        for _ in range(8):
            await churn.wait()  # the idle listener took none of the eight
        assert trio.current_time() == t0
        await trio.sleep(5.0)
        t1 = trio.current_time()
        backlog.arrive(10)
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    got = [t - t1 for t in backlog.accepted_at]
    assert got == pytest.approx([0.0] * 8 + [0.0025, 0.005], abs=1e-9)
    assert churn.waited == 2


async def error_times(
    pairs: list[Pair], beside: Callable[[], Awaitable[None]] | None = None
) -> list[float]:
    """When (from now, sorted) each of `pairs` got its Error UNEXPECTED_FRAME and was closed;
    `beside` runs meanwhile."""
    t0 = trio.current_time()
    ended: list[float] = []

    async def wait_error(pair: Pair) -> None:
        await expect_error(pair, fr.ErrorCode.UNEXPECTED_FRAME)
        ended.append(trio.current_time() - t0)

    async with trio.open_nursery() as nursery:
        for pair in pairs:
            nursery.start_soon(wait_error, pair)
        if beside is not None:
            await beside()
    return sorted(ended)


@pytest.mark.unit
async def test_connections_failing_together_end_one_turn_apart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Ten connections that never send a Hello time out in the same instant; their Errors go
    out two at once, then one every 10 ms (a bystander keeps its grid meanwhile)."""
    limits = attrs.evolve(TEST_LIMITS, hello_timeout_s=2.0)
    churn = ChurnRate(100.0, burst=2)
    async with open_pair(limits=limits, sessions=11, churn=churn) as pairs:
        silent, good = pairs[:10], pairs[10]

        async def bystander() -> None:
            await trio.sleep(1.9)
            await assert_healthy(good)  # plays across the timeouts, on its grid

        ended = await error_times(silent, beside=bystander)
        want = [2.0, 2.0] + [2.0 + 0.01 * n for n in range(1, 9)]
        assert ended == pytest.approx(want, abs=1e-9)


@pytest.mark.unit
async def test_a_long_wait_for_the_turn_still_ends_with_the_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Turns far apart (5 a second): the eighth connection to time out waits 1.4 s for its
    turn, longer than an Error's send may take, and still gets its Error then."""
    limits = attrs.evolve(TEST_LIMITS, hello_timeout_s=2.0)
    async with open_pair(limits=limits, sessions=8, churn=ChurnRate(5.0, burst=1)) as pairs:
        ended = await error_times(pairs)
        assert ended == pytest.approx([2.0 + 0.2 * n for n in range(8)], abs=1e-9)


UPGRADE = (
    "GET /v1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Protocol: {protocol}\r\n\r\n"
)


async def _refused(port: int, protocol: str) -> bytes:
    """Upgrade with `protocol` on a raw socket; everything the daemon sends until it closes."""
    sock = trio.socket.socket()
    with sock:
        await sock.connect(("127.0.0.1", port))
        await sock.send(UPGRADE.format(protocol=protocol).encode())
        got = b""
        with trio.fail_after(10):  # generous: the close comes at once
            while chunk := await sock.recv(65536):
                got += chunk
    return got


@pytest.mark.integration
async def test_a_refused_upgrade_is_closed_by_the_daemon() -> None:
    """trio-websocket leaves a refused connection open until the client hangs up: the daemon
    closes it after its answer, so a client cannot hold refused connections."""
    async with open_daemon() as daemon:
        answer = await _refused(daemon.port, "not-duplexd")
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert answer.endswith(f"offer the WebSocket subprotocol {fr.SUBPROTOCOL}\n".encode())


@pytest.mark.integration
async def test_a_refused_upgrade_over_tls_is_closed_too(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    tls = TlsSettings(cert=str(cert_path), key=str(key_path))
    async with open_daemon(tls=tls) as daemon:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        stream = await trio.open_ssl_over_tcp_stream(
            "127.0.0.1", daemon.port, ssl_context=context, https_compatible=True
        )
        async with stream:
            await stream.send_all(UPGRADE.format(protocol="not-duplexd").encode())
            got = b""
            with trio.fail_after(10):
                while chunk := await stream.receive_some():
                    got += chunk
        assert got.startswith(b"HTTP/1.1 400 ")


@pytest.mark.integration
async def test_refused_upgrades_hold_nothing() -> None:
    """Fifty refused upgrades (HTTP 503, the daemon full) left open by their client: the
    daemon has closed every one of them, and still serves."""
    async with open_daemon(max_sessions=1) as daemon:
        holder = trio.socket.socket()
        with holder:
            await holder.connect(("127.0.0.1", daemon.port))
            await holder.send(UPGRADE.format(protocol=fr.SUBPROTOCOL).encode())
            with trio.fail_after(10):
                assert b" 101 " in await holder.recv(65536)  # the one session slot, held
            socks = []
            try:
                for _ in range(50):
                    sock = trio.socket.socket()
                    socks.append(sock)
                    await sock.connect(("127.0.0.1", daemon.port))
                    await sock.send(UPGRADE.format(protocol=fr.SUBPROTOCOL).encode())
                with trio.fail_after(10):
                    for sock in socks:
                        got = b""
                        while chunk := await sock.recv(65536):  # (b"": the daemon closed it)
                            got += chunk
                        assert got.startswith(b"HTTP/1.1 503 ")
            finally:
                for sock in socks:
                    sock.close()
            assert daemon.rejected == {"full": 50}
