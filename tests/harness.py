"""Test harness: a real Session over an in-memory WebSocket, under any trio clock.

`open_pair()` runs a server-side `Session` and yields the client's raw trio-websocket
connection; `open_client()` does the same and handshakes with the SDK. Synthesis runs inline
on the trio thread (`inline_offload`), so a `MockClock(autojump_threshold=0)` can only jump
when the whole session is really idle, and virtual times are exact.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing
from trio_websocket import WebSocketConnection, wrap_client_stream, wrap_server_stream

from duplexd import _frames as fr
from duplexd._codec import Decoder, encode
from duplexd._config import SessionLimits
from duplexd._engines import EngineSet
from duplexd._pacer import Pacer, open_pacer
from duplexd._session import Session
from duplexd.client import ClientSession, session_over
from duplexd.engines.base import Engine
from duplexd.engines.tone import ToneEngine

TEST_LIMITS = SessionLimits(ring_frames=1024)


async def inline_offload(fn: Callable[..., Any], *args: Any) -> Any:
    await trio.lowlevel.checkpoint()
    return fn(*args)


class Pair:
    def __init__(self, client: WebSocketConnection, pacer: Pacer) -> None:
        self.client = client
        self.pacer = pacer
        self.sessions: list[Session] = []
        self.decoder = Decoder(peer="server")

    async def send(self, *frames: fr.ClientFrame) -> None:
        await self.client.send_message(b"".join(encode(f) for f in frames))

    async def receive(self) -> list[fr.Frame]:
        """The frames of the next message (decoded as a spec-only client would)."""
        message = await self.client.get_message()
        assert isinstance(message, bytes)
        self.decoder.receive_data(message)
        frames = list(self.decoder)
        self.decoder.check_boundary()
        return frames


@asynccontextmanager
async def open_pair(
    engine: Engine | None = None,
    limits: SessionLimits = TEST_LIMITS,
    offload: Any = inline_offload,
    sessions: int = 1,
) -> AsyncIterator[list[Pair]]:
    """`sessions` independent sessions on one shared pacer; yields their client sides."""
    engines = EngineSet.of(engine or ToneEngine())
    async with open_pacer() as pacer, trio.open_nursery() as nursery:
        pairs = []
        for _ in range(sessions):
            client_stream, server_stream = trio.testing.memory_stream_pair()

            async def serve(stream: Any = server_stream, bucket: list[Session] = []) -> None:
                request = await wrap_server_stream(nursery, stream)
                ws = await request.accept(subprotocol=fr.SUBPROTOCOL)
                session = Session(ws, engines=engines, pacer=pacer, limits=limits, offload=offload)
                bucket.append(session)
                await session.run()

            pair_sessions: list[Session] = []
            nursery.start_soon(serve, server_stream, pair_sessions)
            ws = await wrap_client_stream(
                nursery, client_stream, "localhost", fr.WS_PATH, subprotocols=[fr.SUBPROTOCOL]
            )
            pair = Pair(ws, pacer)
            pair.sessions = pair_sessions
            pairs.append(pair)
        yield pairs
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_client(
    engine: Engine | None = None,
    limits: SessionLimits = TEST_LIMITS,
    hello: fr.Hello | None = None,
    on_frame: Callable[[fr.ServerFrame, float], None] | None = None,
) -> AsyncIterator[ClientSession]:
    async with (
        open_pair(engine, limits) as (pair,),
        session_over(pair.client, hello or fr.Hello(), on_frame=on_frame) as session,
    ):
        yield session
