"""`serve_duplexd`: the daemon's WebSocket server, one shared pacer for all sessions."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, WebSocketServer, serve_websocket

from ._config import SessionLimits
from ._engines import EngineSet
from ._frames import SUBPROTOCOL, WS_PATH
from ._pacer import Pacer, open_pacer
from ._session import Session

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
    task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve duplexd sessions on `host:port` (0 picks a free port) until cancelled.

    `task_status.started` receives a `Daemon` (port, url, live sessions). Cancelling it closes
    every session's connection; nothing else is left behind. While it runs, the process's GIL
    switch interval is `gil_switch_interval_s` (None leaves it alone); it is restored after.
    """
    limits = limits or SessionLimits()
    saved_interval = sys.getswitchinterval()
    if gil_switch_interval_s is not None:
        sys.setswitchinterval(gil_switch_interval_s)
    try:
        await _serve(host, port, engines, limits, task_status)
    finally:
        sys.setswitchinterval(saved_interval)


async def _serve(
    host: str,
    port: int,
    engines: EngineSet,
    limits: SessionLimits,
    task_status: trio.TaskStatus[Daemon],
) -> None:
    async with open_pacer() as pacer:
        daemon: Daemon | None = None

        async def handler(request: WebSocketRequest) -> None:
            assert daemon is not None
            if request.path.rstrip("/") != WS_PATH:
                await request.reject(404, body=f"duplexd speaks on {WS_PATH}\n".encode())
                return
            subprotocol = SUBPROTOCOL if SUBPROTOCOL in request.proposed_subprotocols else None
            try:
                ws = await request.accept(subprotocol=subprotocol)
            except ConnectionClosed:
                return
            session = Session(ws, engines=engines, pacer=pacer, limits=limits)
            daemon.sessions.add(session)
            daemon.sessions_total += 1
            try:
                await session.run()
            finally:
                daemon.sessions.discard(session)

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
            daemon = Daemon(server=server, pacer=pacer, engines=engines)
            log.info("listening", extra={"url": daemon.url, "engines": engines.names()})
            task_status.started(daemon)
