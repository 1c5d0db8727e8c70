"""Where a client written from SPEC.md alone found the daemon and the spec disagreeing, or the
spec silent: each case as the spec now states it, against a real daemon on 127.0.0.1 (real
sockets, real clock) through the spec-only client (`spec_client.py`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import spec_client as sc
import trio
from trio_websocket import ConnectionClosed

from duplexd._server.server import Daemon, serve_duplexd
from duplexd.engines.registry import EngineSet
from duplexd.engines.tone import ToneEngine

pytestmark = pytest.mark.integration
FRAME_TOO_LARGE = 2  # SPEC §8
MAX_MESSAGE_BYTES = 1 << 20  # SPEC §10, info.limits.max_message_bytes


@pytest.fixture
async def daemon() -> AsyncIterator[Daemon]:
    async with trio.open_nursery() as nursery:
        d: Daemon = await nursery.start(
            lambda task_status: serve_duplexd(
                "127.0.0.1", 0, engines=EngineSet.of(ToneEngine()), task_status=task_status
            )
        )
        yield d
        nursery.cancel_scope.cancel()


async def read_until_closed(client: sc.SpecClient) -> tuple[list[sc.Frame], int | None]:
    """Every frame until the server closes, and its close code."""
    frames: list[sc.Frame] = []
    with trio.fail_after(10):
        try:
            while True:
                frames += (await client.receive())[1]
        except ConnectionClosed as closed:
            return frames, closed.reason.code if closed.reason else None


@pytest.mark.parametrize("in_one_message", [True, False], ids=["one message", "many messages"])
async def test_a_burst_of_pings_from_a_client_that_reads_gets_every_pong(
    daemon: Daemon, in_one_message: bool
) -> None:
    """More PINGs at once than answers may wait (`max_pending_answers`, 1024), from a client
    that reads as it sends: every PONG comes, in order, and no ERROR (SPEC §10: the server
    reads on as the answers go out)."""
    n = 3_000 if in_one_message else 1_100
    async with sc.open_spec_client(daemon.url) as client:
        welcome = await client.handshake()
        assert welcome["info"]["limits"]["max_pending_answers"] < n
        got: list[sc.Frame] = []

        async def read() -> None:
            while len(got) < n:
                got.extend((await client.receive())[1])

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                if in_one_message:
                    await client.send(*[sc.ping(i) for i in range(n)])
                else:
                    for i in range(n):
                        await client.send(sc.ping(i))
        assert [f.type for f in got] == [sc.PONG] * n
        assert [f["nonce"] for f in got] == list(range(n))


def pings_over(n_bytes: int) -> bytes:
    """PING frames (14 bytes each), more than `n_bytes` of them in all."""
    return b"".join(sc.ping(n) for n in range(n_bytes // 14 + 1))


async def test_a_message_over_max_message_bytes_is_an_error_frame_then_1009(
    daemon: Daemon,
) -> None:
    """SPEC §2/§10: over `max_message_bytes`, ERROR FRAME_TOO_LARGE, then close 1009, and none
    of the message's frames acted upon (no PONG)."""
    async with sc.open_spec_client(daemon.url) as client:
        welcome = await client.handshake()
        assert welcome["info"]["limits"]["max_message_bytes"] == MAX_MESSAGE_BYTES
        await client.send(pings_over(MAX_MESSAGE_BYTES))
        frames, code = await read_until_closed(client)
    assert [f.type for f in frames] == [sc.ERROR]
    assert frames[0]["code"] == FRAME_TOO_LARGE
    assert "max_message_bytes" in frames[0]["message"]
    assert code == 1009


async def test_a_message_far_over_the_limit_is_closed_1009_without_error(daemon: Daemon) -> None:
    """SPEC §2: the one error close without ERROR: a message over twice the limit is not read
    to its end (the server does not buffer it)."""
    async with sc.open_spec_client(daemon.url) as client:
        await client.handshake()
        await client.send(pings_over(2 * MAX_MESSAGE_BYTES))
        frames, code = await read_until_closed(client)
    assert frames == [] and code == 1009
