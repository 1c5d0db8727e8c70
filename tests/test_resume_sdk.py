"""The SDK resumes by itself: a real daemon behind a TCP relay the test can cut, as a network
would (no WebSocket close); the audio goes on, nothing twice, and the resume is reported."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from duplexd._server.server import Daemon, serve_duplexd
from duplexd.client.session import open_session
from duplexd.engines.registry import EngineSet
from duplexd.engines.tone import ToneEngine
from duplexd.protocol import frames as fr

pytestmark = [
    pytest.mark.usefixtures("collect_leaked_sockets"),
    pytest.mark.integration,
    pytest.mark.slow,  # real time: a few seconds of speech
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
    ),
]


class Relay:
    """A TCP relay in front of the daemon; `cut()` drops every connection through it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.streams: list[trio.SocketStream] = []
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[None]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._relay, listeners)

    async def _relay(self, client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        self.streams += [client, server]

        async def pump(a: trio.SocketStream, b: trio.SocketStream) -> None:
            try:
                while data := await a.receive_some(65536):
                    await b.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, client, server)
            nursery.start_soon(pump, server, client)

    async def cut(self) -> None:
        streams, self.streams = self.streams, []
        for stream in streams:
            await trio.aclose_forcefully(stream)


@asynccontextmanager
async def open_relay() -> AsyncIterator[tuple[Daemon, Relay]]:
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(
            lambda task_status: serve_duplexd(
                "127.0.0.1", 0, engines=EngineSet.of(ToneEngine()), task_status=task_status
            )
        )
        relay = Relay(daemon.port)
        await nursery.start(relay.serve)
        yield daemon, relay
        nursery.cancel_scope.cancel()


async def test_the_sdk_resumes_a_dropped_connection_by_itself() -> None:
    async with open_relay() as (_daemon, relay):
        url = f"ws://127.0.0.1:{relay.port}/v1"
        reports: list[dict] = []  # type: ignore[type-arg]
        async with open_session(url, on_resume=reports.append) as session:
            uid = await session.say("Hello there, how are you doing today? " * 2)
            audio: list[fr.Audio] = []
            cut = False
            async for frame in session:
                if isinstance(frame, fr.Audio):
                    audio.append(frame)
                    if len(audio) == 40 and not cut:
                        cut = True
                        await relay.cut()  # the network goes: no close frame either way
                if isinstance(frame, fr.UtteranceDone) and frame.utterance_id == uid:
                    break
            await session.ping()  # sending works on the new connection too
    assert [f.seq for f in audio] == list(range(len(audio)))  # nothing lost, nothing twice
    assert audio[-1].last
    assert len(reports) == 1 and reports[0]["resumed"] is True
    assert reports[0]["lost"] == {"messages": 0}
    assert session.resumes == reports
