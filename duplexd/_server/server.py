"""`serve_duplexd`: the daemon's WebSocket server, one shared pacer for all sessions.

Each accepted WebSocket becomes a `Connection` (handshake, then an open `Session`) in the
server's nursery; the `Daemon` knows the live sessions, refuses upgrades while draining or
full (HTTP 503), and is what `task_status.started()` reports.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import socket
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, WebSocketServer

from .._downlink.pacer import Pacer, open_pacer
from .._ops.auth import Authenticator, AuthError, Principal
from .._ops.settings import SessionLimits, TlsSettings
from .._ops.trace import Tracer, debug_session
from .._uplink.services import UplinkServices
from ..engines.registry import EngineSet
from ..protocol.frames import SUBPROTOCOL, WS_PATH
from ..protocol.jsonmode import JSON_SUBPROTOCOL
from .churn import ChurnRate, paced
from .connection import Connection
from .handshake import Offload
from .limits import TRANSPORT_MESSAGE_BYTES, CarriedBudgets
from .listen import Listener, endpoint, open_listeners
from .session import Session
from .synthesis import synthesis_offloads

log = logging.getLogger("duplexd.server")

CONNECT_TIMEOUT_S = 10.0  # the WebSocket upgrade must complete within this
DISCONNECT_TIMEOUT_S = 5.0  # the closing handshake must complete within this
# How much of a connection's data one read takes (trio-websocket's default: 4 KiB). A client's
# large message cost the loop 11-19 ms per MiB in 4 KiB reads, 4.4-9.2 ms in 16 KiB reads and
# 2.9-7.5 ms in 64 KiB reads (`python -m bench.receive_cost`, one core): 16 KiB takes most of
# the gain and keeps each read a short step (~0.1 ms) between other sessions' frames.
RECEIVE_BUFFER_BYTES = 16 * 1024
# CPython hands the GIL to a waiting thread only every `sys.getswitchinterval()` (5 ms by
# default): while a synthesis thread runs Python code, the pacer could wake on time and still
# wait 5 ms to send. 0.25 ms bounds that wait; threads that release the GIL (torch, soxr)
# are not affected.
GIL_SWITCH_INTERVAL_S = 0.00025


def _take(counts: dict[str, int], key: str) -> None:
    if key:
        counts[key] = counts.get(key, 0) + 1


def _give_back(counts: dict[str, int], key: str) -> None:
    if key:
        left = counts.pop(key) - 1
        if left:
            counts[key] = left


def is_loopback(address: str) -> bool:
    """Whether `address` is this machine (the app next to the daemon, or a local proxy): the
    per-address limit is for clients from elsewhere."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address in ("localhost", "")


@dataclass(frozen=True)
class Refused:
    """An upgrade refused before anything of a session exists."""

    status: int  # HTTP
    reason: str  # counted in `Daemon.rejected` (duplexd_sessions_rejected_total{reason})
    text: str  # the response body: what to do
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


class Daemon:
    """The running server: its sessions and what it refuses. Trio thread only."""

    def __init__(
        self,
        server: WebSocketServer,
        *,
        endpoint: tuple[str, int],
        churn: ChurnRate,
        pacer: Pacer,
        engines: EngineSet,
        limits: SessionLimits,
        authenticator: Authenticator,
        tls: bool,
        max_sessions: int,
        max_sessions_per_address: int,
        max_sessions_per_subject: int,
        trusted_proxies: Collection[str],
        uplink_services: UplinkServices | None,
        tracer: Tracer | None,
        offload: Offload,
        on_session_opened: Callable[[Session], None] | None,
        on_session_closed: Callable[[Session], None] | None,
    ) -> None:
        self.server = server
        self.endpoint = endpoint  # the first listener's (address, port)
        self.churn = churn  # turns to accept a connection or end one with an Error
        self.pacer = pacer
        self.engines = engines
        self.max_sessions = max_sessions  # 0: unlimited; above it the upgrade is answered 503
        self.max_sessions_per_address = max_sessions_per_address  # 0: unlimited; then 429
        self.trusted_proxies = frozenset(trusted_proxies)
        self.by_address: dict[str, int] = {}  # client address -> connections in
        self.max_sessions_per_subject = max_sessions_per_subject  # 0: unlimited; then 429
        self.by_subject: dict[str, int] = {}  # authenticated subject -> connections in
        self.sessions: set[Session] = set()  # open (past the handshake)
        self._by_id: dict[bytes, Session] = {}
        self.connecting = 0  # accepted, still in their handshake
        self.sessions_total = 0  # connections accepted since start
        self.draining = False  # set by the operator side (SIGTERM): new sessions get 503
        self.inherited = False  # serving on sockets systemd passed (socket activation)
        self.accepting = trio.CancelScope()  # the accept loops' (`stop_accepting`)
        self.rejected: dict[str, int] = {}  # reason -> upgrades refused
        self._limits = limits
        self.carried = CarriedBudgets(limits)  # what closed sessions left of their budgets
        self.authenticator = authenticator
        self.tls = tls
        self._uplink_services = uplink_services
        self._tracer = tracer
        self._offload = offload
        self._synthesis_offloads = synthesis_offloads(engines, offload)
        self._on_session_opened = on_session_opened
        self._on_session_closed = on_session_closed

    @property
    def full(self) -> bool:
        """Whether `max_sessions` connections (open or in their handshake) are in."""
        in_use = len(self.sessions) + self.connecting
        return bool(self.max_sessions) and in_use >= self.max_sessions

    def stop_accepting(self) -> None:
        """Accept no more connections (the open ones go on); the listening sockets are closed
        here. With socket activation they are the workers' shared socket: the connections
        waiting in it go to the other workers, or wait for the next one systemd starts."""
        self.accepting.cancel()

    @property
    def port(self) -> int:
        return self.endpoint[1]

    @property
    def url(self) -> str:
        host = self.endpoint[0]
        if ":" in host:
            host = f"[{host}]"
        return f"{'wss' if self.tls else 'ws'}://{host}:{self.port}{WS_PATH}"

    def client_address(self, request: WebSocketRequest) -> str:
        """The client's address: the peer's, or, when the peer is a trusted proxy, the last
        address its X-Forwarded-For header added."""
        remote = request.remote
        peer = str(getattr(remote, "address", remote))
        if peer in self.trusted_proxies:
            for name, value in reversed(request.headers):
                if name.lower() == b"x-forwarded-for":
                    last = value.decode("latin-1").rsplit(",", 1)[-1].strip()
                    return last or peer
        return peer

    def _admit(self, request: WebSocketRequest, address: str) -> Principal | Refused:
        """Who is asking, or why not (`Refused`: an HTTP status, a reason to count, what the
        client reads). In this order: the path, the subprotocol, the token (a client that is
        not let in takes no slot and learns nothing about the daemon's load), the drain, the
        session limits, the budget its closed sessions left (a client in debt waits it out
        before it costs the daemon another handshake). Nothing of a session exists yet."""
        if urlsplit(request.path).path.rstrip("/") != WS_PATH:
            return Refused(404, "path", f"duplexd speaks on {WS_PATH}")
        if not {SUBPROTOCOL, JSON_SUBPROTOCOL} & set(request.proposed_subprotocols):
            return Refused(400, "subprotocol", f"offer the WebSocket subprotocol {SUBPROTOCOL}")
        try:
            principal = self.authenticator.check(request.headers, request.path, address)
        except AuthError as exc:
            retry = [(b"Retry-After", str(exc.retry_after_s).encode())] if exc.retry_after_s else []
            reason = "auth" if exc.status == 401 else "auth_lockout"
            return Refused(exc.status, reason, f"{exc}", retry)
        if self.draining:
            return Refused(503, "draining", "duplexd is draining: try another instance")
        if self.full:
            return Refused(503, "full", f"duplexd is full ({self.max_sessions} sessions)")
        per_address = self.max_sessions_per_address
        if (
            per_address
            and self.by_address.get(address, 0) >= per_address
            and not is_loopback(address)
        ):
            return Refused(429, "address", f"{per_address} sessions from {address} already")
        per_subject = self.max_sessions_per_subject
        subject = principal.subject
        if per_subject and subject and self.by_subject.get(subject, 0) >= per_subject:
            return Refused(429, "subject", f"{per_subject} sessions of {subject} already")
        if (wait_s := self.carried.wait_s((address, subject), trio.current_time())) > 0:
            retry_s = math.ceil(wait_s)
            return Refused(
                429,
                "budget",
                f"your last session spent its budget (frames or loop time, SPEC.md §10):"
                f" retry in {retry_s} s",
                [(b"Retry-After", str(retry_s).encode())],
            )
        return principal

    async def handle(self, request: WebSocketRequest) -> None:
        """One WebSocket upgrade request: refused (HTTP 400, 404, 429, 503) before anything
        of a session exists, or served until it closes."""
        address = self.client_address(request)
        admitted = self._admit(request, address)
        if isinstance(admitted, Refused):
            self.rejected[admitted.reason] = self.rejected.get(admitted.reason, 0) + 1
            try:
                with contextlib.suppress(ConnectionClosed, trio.BrokenResourceError):
                    await request.reject(
                        admitted.status,
                        extra_headers=[*admitted.headers, (b"Connection", b"close")],
                        body=f"{admitted.text}\n".encode(),
                    )
            finally:
                await _close_refused(request)
            return
        offered = request.proposed_subprotocols  # binary first; JSON: a debugging aid
        subprotocol = SUBPROTOCOL if SUBPROTOCOL in offered else JSON_SUBPROTOCOL
        subject = admitted.subject
        _take(self.by_address, address)
        _take(self.by_subject, subject)
        try:
            await self._serve(request, subprotocol, address, subject)
        finally:
            _give_back(self.by_address, address)
            _give_back(self.by_subject, subject)

    async def _serve(
        self, request: WebSocketRequest, subprotocol: str, address: str, subject: str
    ) -> None:
        try:
            ws = await request.accept(subprotocol=subprotocol)
        except ConnectionClosed:
            return
        self.sessions_total += 1
        self.connecting += 1
        transport, record_dir = debug_session(ws, self._tracer)  # (else `ws` itself)
        connection = Connection(
            transport,
            engines=self.engines,
            pacer=self.pacer,
            limits=self._limits,
            uplink_services=self._uplink_services,
            offload=self._offload,
            synthesis_offloads=self._synthesis_offloads,
            on_open=self._opened,
            on_close=self._closed,
            draining=lambda: self.draining,
            client=address,
            subject=subject,
            sessions=self,
            on_resumed=self._resumed,
            carried=self.carried,
            churn=self.churn,
            uplink_record_dir=record_dir,
        )
        try:
            await connection.run()
        finally:
            if connection.session is None and connection.resumed is None:
                self.connecting -= 1

    def resumable(self, session_id: bytes) -> Session | None:
        """The open session `session_id`, for a Hello that resumes it."""
        return self._by_id.get(session_id)

    def _opened(self, session: Session) -> None:
        self.connecting -= 1
        self.sessions.add(session)
        self._by_id[session.id] = session
        if self._on_session_opened is not None:
            self._on_session_opened(session)

    def _resumed(self, session: Session) -> None:
        self.connecting -= 1  # the session it joined holds the slot

    def _closed(self, session: Session) -> None:
        self.sessions.discard(session)
        self._by_id.pop(session.id, None)
        if self._on_session_closed is not None:
            self._on_session_closed(session)


async def _close_refused(request: WebSocketRequest) -> None:
    """Close the TCP (or TLS) stream of a refused upgrade once its answer is out.

    trio-websocket leaves it open until the client closes it: after `reject` the connection
    has a close reason, so its `aclose` returns at once, and the server's handler waits for
    the reader task, which reads until the client hangs up. A client could so hold any number
    of refused connections (each a descriptor and two tasks, outside every session limit), and
    their hang-ups all at once came as one burst of work (the attack bench: ~370 of them
    together, 50-100 ms of the loop). This needs one thing beyond trio-websocket's public
    API: the request's connection (`WebSocketRequest._connection`) and its stream
    (`._stream`), as DirectSend uses it; without them the connection is left as before.
    Closing the stream ends the reader task. The answer says `Connection: close`; a client
    that sent more after its request (none should before its answer) may get a reset instead
    of the end of the answer. Cancelled, the stream is closed all the same."""
    stream = getattr(getattr(request, "_connection", None), "_stream", None)
    if isinstance(stream, trio.abc.Stream):
        await trio.aclose_forcefully(stream)


async def serve_duplexd(
    host: str,
    port: int,
    *,
    engines: EngineSet,
    limits: SessionLimits | None = None,
    authenticator: Authenticator | None = None,
    tls: TlsSettings | None = None,
    max_sessions: int = 0,
    max_sessions_per_address: int = 0,
    max_sessions_per_subject: int = 0,
    trusted_proxies: Collection[str] = (),
    churn_per_s: float = 0.0,
    churn_burst: int = 8,
    uplink_services: UplinkServices | None = None,
    tracer: Tracer | None = None,
    offload: Offload = trio.to_thread.run_sync,
    gil_switch_interval_s: float | None = GIL_SWITCH_INTERVAL_S,
    on_session_opened: Callable[[Session], None] | None = None,
    on_session_closed: Callable[[Session], None] | None = None,
    inherited: list[socket.socket] | None = None,
    task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve duplexd sessions on `host:port` (0 picks a free port) until cancelled.

    `task_status.started` receives the `Daemon` (port, url, live sessions). Cancelling it closes
    every session's connection; nothing else is left behind. Above `max_sessions` connections
    (0: no limit), or while `Daemon.draining`, a WebSocket upgrade is answered HTTP 503; above
    `max_sessions_per_address` from one client address other than loopback (0: no limit; the
    address behind a proxy in `trusted_proxies` is its X-Forwarded-For), or
    `max_sessions_per_subject` of one authenticated subject (0: no limit), HTTP 429.
    Connections are accepted, and ended with an Error, at most `churn_per_s` a second,
    `churn_burst` at once (0, the default here: as fast as they come; the daemon's own default,
    `server.churn_per_s`, is 400; `churn.ChurnRate`).
    `authenticator`: who may open a session (checked in the WebSocket upgrade; None: anybody);
    `tls`: serve wss:// with this certificate. `uplink_services`: what uplinks share (None: a
    Hello asking for uplink audio is refused). `tracer`: records the sessions it selects
    (`duplexd serve --trace`). `on_session_opened(session)` and `on_session_closed(session)`
    run (trio thread) as each session opens (past its Hello) and as each open session ends.
    While it runs, the process's GIL switch interval is `gil_switch_interval_s` (None leaves
    it alone); it is restored after. `inherited`: listening sockets to serve on instead of
    `host:port` (socket activation: `listen.inherited_sockets`).
    """

    saved_interval = sys.getswitchinterval()
    if gil_switch_interval_s is not None:
        sys.setswitchinterval(gil_switch_interval_s)
    try:
        async with open_pacer() as pacer, trio.open_nursery() as nursery:
            listeners = await open_listeners(host, port, tls, inherited)
            churn = ChurnRate(churn_per_s, churn_burst)
            server = WebSocketServer(
                lambda request: daemon.handle(request),
                # (trio-websocket's annotation names trio's two socket listeners, but it only
                # serves them, as any trio Listener; their addresses are read here: `endpoint`)
                cast(list[Listener], paced(listeners, churn)),
                handler_nursery=nursery,  # (connections outlive the accept loops: a drain)
                max_message_size=TRANSPORT_MESSAGE_BYTES,
                receive_buffer_size=RECEIVE_BUFFER_BYTES,
                connect_timeout=CONNECT_TIMEOUT_S,
                disconnect_timeout=DISCONNECT_TIMEOUT_S,
            )
            daemon = Daemon(
                server,
                endpoint=endpoint(listeners[0]),
                churn=churn,
                pacer=pacer,
                engines=engines,
                limits=limits or SessionLimits(),
                authenticator=authenticator or Authenticator(),
                tls=bool(tls and tls.cert),
                max_sessions=max_sessions,
                max_sessions_per_address=max_sessions_per_address,
                max_sessions_per_subject=max_sessions_per_subject,
                trusted_proxies=trusted_proxies,
                uplink_services=uplink_services,
                tracer=tracer,
                offload=offload,
                on_session_opened=on_session_opened,
                on_session_closed=on_session_closed,
            )
            daemon.inherited = bool(inherited)
            await nursery.start(_accept, server, listeners, daemon.accepting)
            log.info("listening", extra={"url": daemon.url, "engines": engines.names()})
            task_status.started(daemon)
    finally:
        sys.setswitchinterval(saved_interval)


async def _accept(
    server: WebSocketServer,
    listeners: list[Listener],
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept connections until `scope` is cancelled (`Daemon.stop_accepting`) or the daemon
    stops; then close the listening sockets (the connections accepted go on)."""
    try:
        with scope:
            await server.run(task_status=task_status)
    finally:
        for listener in listeners:
            with trio.CancelScope(shield=True):
                await listener.aclose()
