"""`DirectSend` (duplexd/_server/direct.py): the writer's binary messages written with one
`writev`, over real trio-websocket connections on real TCP sockets. What the client reads is
exactly what was sent, in order, when the socket takes it whole and when it does not (a client
that does not read for a while)."""

from __future__ import annotations

import pytest
import trio
import wsproto.frame_protocol as fp
from trio_websocket import ConnectionClosed, open_websocket_url, serve_websocket

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
