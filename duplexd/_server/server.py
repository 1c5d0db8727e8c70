"""`serve_duplexd`: the daemon's WebSocket server, one shared pacer for all sessions."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, WebSocketServer, serve_websocket

from .._downlink.pacer import Pacer, open_pacer
from .._ops.trace import debug_transport
from ..engines.registry import EngineSet
from ..protocol.frames import SUBPROTOCOL, WS_PATH
from ..protocol.jsonmode import JSON_SUBPROTOCOL
from .limits import SessionLimits
from .session import Session

log = logging.getLogger("duplexd.server")

MAX_MESSAGE_BYTES = 1 << 20  # one WebSocket message (it may hold several frames)
# CPython hands the GIL to a waiting thread only every `sys.getswitchinterval()` (5 ms by
# default): while a synthesis thread runs Python code, the pacer could wake on time and still
# wait 5 ms to send. 0.25 ms bounds that wait; threads that release the GIL (torch, soxr)
# are not affected.
GIL_SWITCH_INTERVAL_S = 0.00025


@dataclass
class Daemon:
    """What `serve_duplexd` reports through `task_status` once it listens."""

    server: WebSocketServer
    pacer: Pacer
    engines: EngineSet
    sessions: set[Session] = field(default_factory=set)
    sessions_total: int = 0
    max_sessions: int = 0  # 0: unlimited; above it the upgrade is answered 503
    draining: bool = False  # set by the operator side (SIGTERM): new sessions get 503
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> upgrades refused

    @property
    def full(self) -> bool:
        return bool(self.max_sessions) and len(self.sessions) >= self.max_sessions

    @property
    def port(self) -> int:
        return int(self.server.port)

    @property
    def url(self) -> str:
        endpoint = self.server.listeners[0]
        host = str(getattr(endpoint, "address", "127.0.0.1"))
        if ":" in host:
            host = f"[{host}]"
        return f"ws://{host}:{self.port}{WS_PATH}"


async def serve_duplexd(
    host: str,
    port: int,
    *,
    engines: EngineSet,
    limits: SessionLimits | None = None,
    gil_switch_interval_s: float | None = GIL_SWITCH_INTERVAL_S,
    max_sessions: int = 0,
    on_session_closed: Callable[[Session], None] | None = None,
    task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve duplexd sessions on `host:port` (0 picks a free port) until cancelled.

    `task_status.started` receives a `Daemon` (port, url, live sessions). Cancelling it closes
    every session's connection; nothing else is left behind. Above `max_sessions` live sessions
    (0: no limit), or while `Daemon.draining`, a WebSocket upgrade is answered HTTP 503;
    `on_session_closed(session)` runs (trio thread) as each session ends. While it runs, the
    process's GIL
    switch interval is `gil_switch_interval_s` (None leaves it alone); it is restored after.
    """
    limits = limits or SessionLimits()
    saved_interval = sys.getswitchinterval()
    if gil_switch_interval_s is not None:
        sys.setswitchinterval(gil_switch_interval_s)
    try:
        await _serve(host, port, engines, limits, max_sessions, on_session_closed, task_status)
    finally:
        sys.setswitchinterval(saved_interval)


async def _serve(
    host: str,
    port: int,
    engines: EngineSet,
    limits: SessionLimits,
    max_sessions: int,
    on_session_closed: Callable[[Session], None] | None,
    task_status: trio.TaskStatus[Daemon],
) -> None:
    async with open_pacer() as pacer:
        daemon: Daemon | None = None

        async def handler(request: WebSocketRequest) -> None:
            assert daemon is not None
            if request.path.rstrip("/") != WS_PATH:
                await request.reject(404, body=f"duplexd speaks on {WS_PATH}\n".encode())
                return
            refusal = "draining" if daemon.draining else "full" if daemon.full else ""
            if refusal:
                daemon.rejected[refusal] = daemon.rejected.get(refusal, 0) + 1
                with contextlib.suppress(ConnectionClosed, trio.BrokenResourceError):
                    await request.reject(503, body=f"duplexd is {refusal}\n".encode())
                return
            offered = request.proposed_subprotocols  # binary first; JSON: a debugging aid
            subprotocol = next((p for p in (SUBPROTOCOL, JSON_SUBPROTOCOL) if p in offered), None)
            try:
                ws = await request.accept(subprotocol=subprotocol)
            except ConnectionClosed:
                return
            # JSON mode and --trace wrap `ws`; otherwise it is `ws` itself (no per-frame cost)
            session = Session(debug_transport(ws), engines=engines, pacer=pacer, limits=limits)
            daemon.sessions.add(session)
            daemon.sessions_total += 1
            try:
                await session.run()
            finally:
                daemon.sessions.discard(session)
                if on_session_closed is not None:
                    on_session_closed(session)

        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                lambda task_status: serve_websocket(
                    handler,
                    host,
                    port,
                    None,
                    max_message_size=MAX_MESSAGE_BYTES,
                    connect_timeout=10,
                    disconnect_timeout=5,
                    task_status=task_status,
                )
            )
            daemon = Daemon(server=server, pacer=pacer, engines=engines, max_sessions=max_sessions)
            log.info("listening", extra={"url": daemon.url, "engines": engines.names()})
            task_status.started(daemon)
