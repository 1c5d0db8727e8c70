"""A tiny HTTP/1.1 server on trio (h11): the operator's side port (/healthz, /readyz, /metrics).

`serve_http(host, port, handler, task_status=)` answers GET and HEAD with whatever
`handler(request)` returns, synchronously on the trio thread (so a handler can read the daemon's
state without locks, and a wedged event loop shows up as a health check that times out).
Keep-alive is supported; each request must arrive within `REQUEST_TIMEOUT_S`; bodies sent to
us are read and ignored. Cancelling `serve_http` closes the listeners and every connection.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from typing import Any

import h11
import trio

log = logging.getLogger("duplexd.http")

REQUEST_TIMEOUT_S = 10.0
MAX_REQUEST_BYTES = 16384
_PHRASES = frozenset(int(s) for s in HTTPStatus)
_CLOSED = (trio.BrokenResourceError, trio.ClosedResourceError)


@dataclass(frozen=True)
class Request:
    """What a handler sees of a GET or HEAD."""

    path: str  # the target without its query
    target: str  # as sent, query included
    headers: list[tuple[bytes, bytes]]  # names lowercased
    peer: str  # the client's address


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()  # more of them (Content-Security-Policy...)


Handler = Callable[[Request], Response]


async def serve_http(
    host: str,
    port: int,
    handler: Handler,
    *,
    ssl_context: ssl.SSLContext | None = None,
    sockets: list[socket.socket] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `handler` on `host:port` (0 picks a free port) until cancelled, or on the
    listening `sockets` given (socket activation: then `host` and `port` are not used); over
    TLS (https) with `ssl_context`, whose handshake runs within the request timeout.

    `task_status.started` receives the port it listens on.
    """
    serve = partial(_serve_connection, handler=handler)
    if sockets:
        plain = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in sockets]
        given: list[trio.abc.Listener[Any]] = list(plain)
        if ssl_context is not None:
            given = [trio.SSLListener(p, ssl_context, https_compatible=True) for p in plain]
        _listening(host, int(sockets[0].getsockname()[1]), task_status)
        await trio.serve_listeners(serve, given)
    elif ssl_context is None:
        listeners = await trio.open_tcp_listeners(port, host=host or None)
        bound = listeners[0].socket.getsockname()[1]
        _listening(host, bound, task_status)
        await trio.serve_listeners(serve, listeners)
    else:
        secure = await trio.open_ssl_over_tcp_listeners(
            port, ssl_context, host=host or None, https_compatible=True
        )
        transport = secure[0].transport_listener
        assert isinstance(transport, trio.SocketListener)
        bound = transport.socket.getsockname()[1]
        _listening(host, bound, task_status)
        await trio.serve_listeners(serve, secure)


def _listening(host: str, port: int, task_status: trio.TaskStatus[int]) -> None:
    log.info("http listening", extra={"host": host, "http_port": port})
    task_status.started(port)


Stream = trio.SocketStream | trio.SSLStream[trio.SocketStream]


async def _serve_connection(stream: Stream, *, handler: Handler) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
    try:
        while True:
            with trio.move_on_after(REQUEST_TIMEOUT_S):
                request = await _next_request(stream, conn)
            if request is None:  # closed, timed out or not HTTP
                return
            response = _respond(request, handler, _peer(stream))
            await _send(stream, conn, response, head=request.method == b"HEAD")
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.ProtocolError:
                return
    except h11.RemoteProtocolError as exc:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = f"bad request: {exc}\n".encode()
            res = Response(exc.error_status_hint or 400, body)
            with contextlib.suppress(h11.LocalProtocolError, *_CLOSED):
                await _send(stream, conn, res, head=False)
    except _CLOSED:
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def _next_request(stream: Stream, conn: h11.Connection) -> h11.Request | None:
    """The next request, its body read and discarded; None if the peer closed."""
    request: h11.Request | None = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(MAX_REQUEST_BYTES)
            conn.receive_data(bytes(data))  # b"" marks EOF
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None


def _peer(stream: Stream) -> str:
    sock = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    try:
        return str(sock.socket.getpeername()[0])
    except (OSError, IndexError, TypeError):
        return ""


def _respond(request: h11.Request, handler: Handler, peer: str) -> Response:
    if request.method not in (b"GET", b"HEAD"):
        return Response(405, b"only GET and HEAD\n")
    target = request.target.decode("ascii", "replace")
    path = target.split("?", 1)[0]
    try:
        return handler(Request(path, target, list(request.headers), peer))
    except Exception:
        log.exception("http handler failed", extra={"path": path})
        return Response(500, b"internal error\n")


async def _send(stream: Stream, conn: h11.Connection, res: Response, *, head: bool) -> None:
    headers = [
        ("Content-Type", res.content_type),
        ("Content-Length", str(len(res.body))),
        ("Cache-Control", "no-store"),
        ("Server", "duplexd"),
        ("X-Content-Type-Options", "nosniff"),
        *res.headers,
    ]
    reason = HTTPStatus(res.status).phrase.encode() if res.status in _PHRASES else b""
    out = conn.send(h11.Response(status_code=res.status, headers=headers, reason=reason)) or b""
    if res.body and not head:
        out += conn.send(h11.Data(data=res.body)) or b""
    out += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(out)
