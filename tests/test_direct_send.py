"""`DirectSend` (duplexd/_server/direct.py): the writer's binary messages written with one
`writev`, over real trio-websocket connections on real TCP sockets. What the client reads is
exactly what was sent, in order, when the socket takes it whole and when it does not (a client
that does not read for a while)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio
import wsproto.frame_protocol as fp
from trio_websocket import ConnectionClosed, open_websocket_url, serve_websocket

from duplexd._downlink.contract import NOT_SENT, PARTLY_SENT, SENT
from duplexd._server.direct import DirectSend, frame_header

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("length", [0, 1, 125, 126, 65535, 65536, 1 << 20])
def test_the_header_is_wsprotos(length: int) -> None:
    proto = fp.FrameProtocol(client=False, extensions=[])
    wire = proto.send_data(b"x" * length, fin=True)
    assert wire == frame_header(length) + b"x" * length


async def test_messages_arrive_whole_and_in_order_even_when_the_socket_is_full() -> None:
    messages = [bytes([i % 251]) * (1000 + 7919 * i % 150_000) for i in range(120)]
    sent = trio.Event()
    stats: dict[str, int] = {}

    async def handler(request: object) -> None:
        ws = await request.accept()  # type: ignore[attr-defined]
        direct = DirectSend.of(ws)
        assert direct is not None
        for m in messages:
            await direct.send(m)
        stats.update(direct=direct.direct, waited=direct.waited, fallbacks=direct.fallbacks)
        sent.set()
        await ws.get_message()  # (until the client closes)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        port = server.port
        async with open_websocket_url(f"ws://127.0.0.1:{port}/") as client:
            await trio.sleep(0.3)  # not reading yet: the server's socket fills up
            got = [await client.get_message() for _ in messages]
            await sent.wait()
            await client.ping()  # (the server's reader answers, on the same socket)
        nursery.cancel_scope.cancel()
    assert got == messages
    assert stats["direct"] + stats["fallbacks"] == len(messages)
    assert stats["waited"] > 0  # (some did not fit: their rest waited for the socket)


async def test_a_closed_connection_is_left_to_trio_websocket() -> None:
    async def handler(request: object) -> None:
        ws = await request.accept()  # type: ignore[attr-defined]
        direct = DirectSend.of(ws)
        assert direct is not None
        await direct.send(b"first")
        with pytest.raises(ConnectionClosed):
            while True:  # the client closed: the message goes to send_message, which says so
                await ws.get_message()
        with pytest.raises(ConnectionClosed):
            await direct.send(b"after the close")
        assert direct.fallbacks == 1
        done.set()

    done = trio.Event()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        async with open_websocket_url(f"ws://127.0.0.1:{server.port}/") as client:
            assert await client.get_message() == b"first"
        with trio.fail_after(5):
            await done.wait()
        nursery.cancel_scope.cancel()


def test_anything_but_a_websocket_connection_gets_none() -> None:
    assert DirectSend.of(object()) is None


async def accept_direct(request: Any) -> tuple[Any, DirectSend]:
    """Accept, the server's socket taking 64 KiB at most (whatever the system's defaults: a
    message of 500 KB goes out in part), and its DirectSend."""
    ws = await request.accept()
    ws._stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
    direct = DirectSend.of(ws)
    assert direct is not None
    return ws, direct


async def test_send_now_writes_at_once_or_not_at_all_and_a_rest_goes_out_first() -> None:
    """The pacer's tick (`send_now`): whole messages while the socket takes them; nothing
    while a send holds the connection; when the socket takes only part, the rest goes out
    before anything else the connection sends (here trio-websocket's own `send_message`, then
    `send`): the client reads every message whole, in order."""
    big = [bytes([i]) * 500_000 for i in range(1, 30)]
    results: list[int] = []
    order: list[bytes] = []
    done = trio.Event()

    async def handler(request: object) -> None:
        ws, direct = await accept_direct(request)
        assert DirectSend.of(ws) is not None  # (asked again: the same lock, no second wrap)
        assert direct.send_now(b"now") == SENT
        order.append(b"now")
        lock = ws._stream_lock
        lock.acquire_nowait()
        assert direct.send_now(b"held") == NOT_SENT  # (a send of trio-websocket's holds it)
        lock.release()
        for m in big:  # the client does not read yet: the socket fills up
            result = direct.send_now(m)
            results.append(result)
            if result != NOT_SENT:
                order.append(m)
            if result == PARTLY_SENT:
                assert direct.send_now(b"behind a rest") == NOT_SENT
            if result != SENT:
                break
        await ws.send_message(b"after the rest")  # waits for the socket: the rest goes first
        order.append(b"after the rest")
        await direct.send(b"last")
        order.append(b"last")
        await direct.flush()  # (nothing left: returns at once)
        done.set()
        await ws.get_message()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        async with open_websocket_url(f"ws://127.0.0.1:{server.port}/") as client:
            await trio.sleep(0.3)  # not reading yet
            got = []
            with trio.fail_after(10):
                while not got or got[-1] != b"last":
                    got.append(await client.get_message())
                await done.wait()
        nursery.cancel_scope.cancel()
    assert PARTLY_SENT in results  # (the socket filled up mid-message)
    assert got == order


async def test_flush_sends_the_rest_when_nobody_else_sends() -> None:
    big = bytes(range(256)) * 2048  # 512 KiB: more than the socket takes at once
    done = trio.Event()

    async def handler(request: object) -> None:
        ws, direct = await accept_direct(request)
        assert direct.send_now(big) == PARTLY_SENT
        await direct.flush()
        done.set()
        await ws.get_message()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        async with open_websocket_url(f"ws://127.0.0.1:{server.port}/") as client:
            with trio.fail_after(10):
                assert await client.get_message() == big
                await done.wait()
        nursery.cancel_scope.cancel()
