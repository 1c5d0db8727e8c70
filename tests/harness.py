"""Test harness: a real Session over an in-memory WebSocket, under any trio clock.

`open_pair()` runs a server-side `Session` and yields the client's raw trio-websocket
connection; `open_client()` does the same and handshakes with the SDK. Synthesis runs inline
on the trio thread (`inline_offload`), so a `MockClock(autojump_threshold=0)` can only jump
when the whole session is really idle, and virtual times are exact.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import trio
import trio.testing
from trio_websocket import WebSocketConnection, wrap_client_stream, wrap_server_stream

from duplexd._downlink.pacer import Pacer, open_pacer
from duplexd._ops.settings import SessionLimits
from duplexd._server.churn import ChurnRate
from duplexd._server.connection import Connection
from duplexd._server.limits import CarriedBudgets
from duplexd._uplink.services import UplinkServices
from duplexd._uplink.vad import VadModel
from duplexd.client.session import ClientSession, session_over
from duplexd.engines.base import Engine
from duplexd.engines.registry import EngineSet
from duplexd.engines.tone import ToneEngine
from duplexd.protocol import frames as fr
from duplexd.protocol.codec import Decoder, encode

# idle sessions are closed after a day of virtual time: a MockClock can jump far while a test
# waits for a worker thread (ASR), and no test here means to idle out unless it says so
# (and a dropped connection ends its session at once: tests of resuming turn it on)
TEST_LIMITS = SessionLimits(ring_frames=1024, idle_timeout_s=86_400.0, resume_window_s=0.0)


async def inline_offload(fn: Callable[..., Any], *args: Any) -> Any:
    await trio.lowlevel.checkpoint()
    return fn(*args)


_VAD_MODEL: VadModel | None = None


def inline_uplink_services(transcriber: Any = None, turn_model: Any = None) -> UplinkServices:
    """Uplink services whose work runs inline (exact virtual times, the turn model's too);
    one VAD model for all. No `turn_model`: turns end after a fixed silence."""
    global _VAD_MODEL
    if _VAD_MODEL is None:
        _VAD_MODEL = VadModel()
    return UplinkServices(
        vad_model=_VAD_MODEL, offload=inline_offload, transcriber=transcriber, turn_model=turn_model
    )


class Sessions:
    """The harness's open sessions by id, for Hellos that resume one (as the daemon's)."""

    def __init__(self) -> None:
        self.connections: list[Connection] = []

    def resumable(self, session_id: bytes) -> Any:
        for c in self.connections:
            if c.session is not None and c.session.id == session_id and not c.done:
                return c.session
        return None


class Pair:
    def __init__(self, client: WebSocketConnection, pacer: Pacer) -> None:
        self.client = client
        self.pacer = pacer
        self.connect_again: Callable[[], Any] = lambda: None  # another pair, same server
        self.sessions: list[Connection] = []  # the server side (error_code, session, phase)
        self.decoder = Decoder(peer="server")
        self.stream: Any = None  # the client's raw byte stream (to vanish without a close)
        self.done = trio.Event()  # set once the server side's `Connection.run()` has returned

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
    uplink_services: UplinkServices | None = None,
    stream_pair: Callable[[int], tuple[Any, Any]] | None = None,
    draining: Callable[[], bool] = lambda: False,
    carried: CarriedBudgets | None = None,
    churn: ChurnRate | None = None,
) -> AsyncIterator[list[Pair]]:
    """`sessions` independent sessions on one shared pacer; yields their client sides.

    `stream_pair(i)` makes session i's (client, server) byte streams (default: unbounded
    `trio.testing.memory_stream_pair`; see `bounded_stream_pair` for back-pressure)."""
    engines = EngineSet.of(engine or ToneEngine())
    registry = Sessions()
    async with open_pacer() as pacer, trio.open_nursery() as nursery:

        async def serve(stream: Any, bucket: list[Connection], done: trio.Event) -> None:
            request = await wrap_server_stream(nursery, stream)
            ws = await request.accept(subprotocol=fr.SUBPROTOCOL)
            connection = Connection(
                ws,
                engines=engines,
                pacer=pacer,
                limits=limits,
                offload=offload,
                uplink_services=uplink_services or inline_uplink_services(),
                draining=draining,
                sessions=registry,
                carried=carried,
                churn=churn,
                client="10.0.0.1",  # every pair: one client (for `carried`)
            )
            bucket.append(connection)
            registry.connections.append(connection)
            await connection.run()
            done.set()

        async def connect(i: int) -> Pair:
            if stream_pair is None:
                client_stream, server_stream = trio.testing.memory_stream_pair()
            else:
                client_stream, server_stream = stream_pair(i)
            done = trio.Event()
            pair_sessions: list[Connection] = []
            nursery.start_soon(serve, server_stream, pair_sessions, done)
            ws = await wrap_client_stream(
                nursery, client_stream, "localhost", fr.WS_PATH, subprotocols=[fr.SUBPROTOCOL]
            )
            pair = Pair(ws, pacer)
            pair.sessions = pair_sessions
            pair.stream = client_stream
            pair.done = done
            pair.connect_again = lambda: connect(i)
            return pair

        pairs = [await connect(i) for i in range(sessions)]
        yield pairs
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_client(
    engine: Engine | None = None,
    limits: SessionLimits = TEST_LIMITS,
    hello: fr.Hello | None = None,
    on_frame: Callable[[fr.ServerFrame, float], None] | None = None,
    uplink_services: Any = None,
) -> AsyncIterator[ClientSession]:
    async with (
        open_pair(engine, limits, uplink_services=uplink_services) as (pair,),
        session_over(pair.client, hello or fr.Hello(), on_frame=on_frame) as session,
    ):
        yield session


class _BoundedPipe:
    """A one-way in-memory byte pipe that holds at most `limit` bytes (like a socket buffer).

    `send_all` waits until the whole write fits (writes are atomic: a cancelled one leaves
    nothing behind), so a reader that stops reading soon blocks its writer.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buf = bytearray()
        self.send_closed = False
        self.receive_closed = False
        self.blocked_at: float | None = None  # when a write first had to wait for room
        self.lot = trio.lowlevel.ParkingLot()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.send_closed:
            raise trio.ClosedResourceError
        while self.buf and len(self.buf) + len(data) > self.limit and not self.receive_closed:
            if self.blocked_at is None:
                self.blocked_at = trio.current_time()
            await self.lot.park()
        if self.receive_closed:
            raise trio.BrokenResourceError
        self.buf += data
        self.lot.unpark_all()
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.receive_closed:
            raise trio.ClosedResourceError
        while not self.buf and not self.send_closed:
            await self.lot.park()
        n = len(self.buf) if max_bytes is None else min(max_bytes, len(self.buf))
        data = bytes(self.buf[:n])
        del self.buf[:n]
        self.lot.unpark_all()
        await trio.lowlevel.checkpoint()
        return data


class _BoundedStream(trio.abc.Stream):
    def __init__(self, outgoing: _BoundedPipe, incoming: _BoundedPipe) -> None:
        self.outgoing = outgoing
        self.incoming = incoming

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.outgoing.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.incoming.receive_some(max_bytes)

    async def aclose(self) -> None:
        self.outgoing.send_closed = True
        self.incoming.receive_closed = True
        self.outgoing.lot.unpark_all()
        self.incoming.lot.unpark_all()
        await trio.lowlevel.checkpoint()


def bounded_stream_pair(limit: int = 16384) -> tuple[_BoundedStream, _BoundedStream]:
    """(client, server) streams whose each direction buffers at most `limit` bytes.
    `server.outgoing.blocked_at` tells when the server first had to wait for the client."""
    up, down = _BoundedPipe(limit), _BoundedPipe(limit)
    return _BoundedStream(up, down), _BoundedStream(down, up)


@contextmanager
def no_collection_pauses() -> Iterator[None]:
    """For a real-time measurement made in this process: collect now, then none until the end.
    By the time the slow tests run, pytest's heap holds over a thousand tests' objects, and a
    full collection of it stops every thread here (a daemon in-process, its clients, their
    clocks) for tens of ms, which the measurement would blame on the daemon. The daemon process
    itself freezes its heap after start (`Service`)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@asynccontextmanager
async def running_daemon(
    engine: Engine | None = None, uplink_services: UplinkServices | None = None
) -> AsyncIterator[Any]:
    """A real daemon (`serve_duplexd`, `engine` or the tone engine, `uplink_services` for
    sessions with an uplink) on a free loopback port."""
    from duplexd._server.server import serve_duplexd

    async with trio.open_nursery() as nursery:
        daemon = await nursery.start(
            lambda task_status: serve_duplexd(
                "127.0.0.1",
                0,
                engines=EngineSet.of(engine or ToneEngine()),
                uplink_services=uplink_services,
                task_status=task_status,
            )
        )
        yield daemon
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def running_service(settings: Any) -> AsyncIterator[Any]:
    """A `Service` of `settings` (tone engine, its side port on a free port), started."""
    from duplexd._server.service import Service

    service = Service(
        settings, engines=EngineSet.of(ToneEngine()), handle_signals=False, http_port=0, environ={}
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        yield service
        service.request_stop()


async def http_request(
    port: int, path: str, host: str = "127.0.0.1:1"
) -> tuple[int, dict[str, str], bytes]:
    """GET `path` from 127.0.0.1:`port` (one request, then close): status, headers
    (lowercased names), body."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        await stream.send_all(request.encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body
