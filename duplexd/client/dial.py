"""Opening a client connection, and saying in one line why it could not be opened.

`session_url` is the URL rule (ws:// or wss://; no path means /v1); `open_ws` opens the
WebSocket, doing a wss:// TLS handshake itself first (trio-websocket reports a failed one only
as a timeout: python-trio/trio-websocket#199); `connected` holds one for `open_session` with
a connect timeout that holds; `connect_error` turns what went wrong into a `SessionError`;
`hello_exchange` is the Hello and its answer; `discard` closes a connection given up on.
"""

from __future__ import annotations

import http
import ssl
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    connect_websocket_url,
    wrap_client_stream,
)

from ..protocol import frames as fr
from ..protocol.codec import Decoder, RemoteProtocolError, encode
from .errors import ConnectError, ConnectionLost, HandshakeRejected, ServerError, SessionError


@asynccontextmanager
async def connected(
    url: str,
    ssl_context: ssl.SSLContext | None,
    headers: list[tuple[bytes, bytes]],
    timeout_s: float,
) -> AsyncIterator[WebSocketConnection]:
    """A WebSocket to `url`, its tasks in a nursery of ours; closed on exit (within 2 s,
    shielded). `SessionError` (one line: `connect_error`) if it cannot be opened within
    `timeout_s`. Cancellation while connecting leaves nothing open."""
    failure: HandshakeError | None = None
    async with trio.open_nursery() as nursery:
        try:
            with trio.fail_after(timeout_s):
                ws = await open_ws(nursery, url, ssl_context, headers)
        except (HandshakeError, OSError, trio.TooSlowError) as exc:
            nursery.cancel_scope.cancel()
            failure = exc if isinstance(exc, HandshakeError) else _handshake_error(exc)
        else:
            try:
                yield ws
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    if failure is not None:
        raise connect_error(url, failure, timeout_s)


def session_url(url: str) -> str:
    """`url` as `open_session` uses it: a URL with no path speaks on ``/v1``. ValueError (one
    line, saying what to type instead) for a scheme that is not ``ws://`` or ``wss://``."""
    parts = urllib.parse.urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme in ("http", "https") and parts.netloc:
        ws = "wss" if scheme == "https" else "ws"
        fixed = parts._replace(
            scheme=ws, path=parts.path if parts.path not in ("", "/") else fr.WS_PATH
        )
        raise ValueError(
            f"{_safe(url)}: duplexd speaks WebSocket: use {_safe(fixed.geturl())}"
            + (" (wss:// needs the daemon's TLS)" if ws == "wss" else "")
        )
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(
            f"{_safe(url)!r} is not a duplexd URL: write ws://HOST:PORT{fr.WS_PATH}"
            f" (wss:// with TLS), e.g. ws://127.0.0.1:8765{fr.WS_PATH}"
        )
    if parts.path in ("", "/"):
        parts = parts._replace(path=fr.WS_PATH)
    return parts._replace(scheme=scheme).geturl()


async def open_ws(
    nursery: trio.Nursery,
    url: str,
    ssl_context: ssl.SSLContext | None,
    headers: list[tuple[bytes, bytes]],
) -> WebSocketConnection:
    """A WebSocket to `url` (its tasks in `nursery`); wss:// does its TLS handshake first.
    Cancellation leaves nothing open (a TLS stream not yet upgraded is closed)."""
    if urllib.parse.urlsplit(url).scheme == "wss":
        return await _connect_tls(nursery, url, ssl_context, headers)
    return await connect_websocket_url(
        nursery, url, ssl_context, subprotocols=[fr.SUBPROTOCOL], extra_headers=headers
    )


class _TlsFailed(OSError):
    """The TLS handshake failed (why: `str()`)."""


async def _connect_tls(
    nursery: trio.Nursery,
    url: str,
    ssl_context: ssl.SSLContext | None,
    headers: list[tuple[bytes, bytes]],
) -> WebSocketConnection:
    """A wss:// WebSocket whose TLS handshake is done first, here: trio-websocket reports a
    failed one only as a timeout (python-trio/trio-websocket#199); this fails at once and
    says why. Raises `_TlsFailed`, OSError, HandshakeError. Cancellation (or a failure) before
    the upgrade closes the TLS stream; after it, the WebSocket is the caller's to close."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    stream = await trio.open_ssl_over_tcp_stream(
        host, port, ssl_context=ssl_context or ssl.create_default_context(), https_compatible=True
    )
    try:
        await stream.do_handshake()
    except trio.BrokenResourceError as exc:
        await trio.aclose_forcefully(stream)
        raise _TlsFailed(_cause(exc)) from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = host if parts.port is None else f"{host}:{port}"
    return await wrap_client_stream(
        nursery,
        stream,
        host_header,
        resource,
        subprotocols=[fr.SUBPROTOCOL],
        extra_headers=headers,
    )


def _safe(url: str) -> str:
    """`url` without its query (a browser-style ``?token=`` must not reach a log)."""
    return urllib.parse.urlsplit(url)._replace(query="", fragment="").geturl()


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"{cause.reason}: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        return cause.reason or str(cause)
    if isinstance(cause, OSError):
        return cause.strerror or str(cause)
    return str(cause or exc) or type(exc).__name__


def connect_error(url: str, exc: HandshakeError, timeout_s: float) -> SessionError:
    """One line for a connection that could not be opened (a failed TLS handshake says why,
    and what to type instead when the server speaks plain text)."""
    cause = exc.__cause__
    if isinstance(cause, _TlsFailed):
        why = str(cause)
        if "WRONG_VERSION_NUMBER" in why:  # the server answered in plain text
            plain = urllib.parse.urlsplit(_safe(url))._replace(scheme="ws").geturl()
            why += (
                f": the server does not speak TLS there; use {plain}"
                " (or give the daemon --tls-cert/--tls-key)"
            )
        return ConnectError(f"cannot connect to {_safe(url)}: TLS: {why}")
    return _not_connected(url, exc, timeout_s)


def _handshake_error(exc: BaseException) -> HandshakeError:
    """What open_websocket_url would have raised for `exc`: a timeout or a network error."""
    if isinstance(exc, trio.TooSlowError):
        return ConnectionTimeout()
    error = HandshakeError()
    error.__cause__ = exc
    return error


def _not_connected(url: str, exc: HandshakeError, timeout_s: float) -> SessionError:
    """One line for a refused upgrade, a timeout or a network error."""
    if isinstance(exc, ConnectionRejected):
        status = exc.status_code
        body = (exc.body or b"").decode("utf-8", "replace").strip().splitlines()
        why = body[0][:200] if body else ""
        if not why:
            try:
                why = http.HTTPStatus(status).phrase
            except ValueError:
                why = "refused"
        return HandshakeRejected(
            f"{_safe(url)} refused the session: HTTP {status}: {why}", status=status, reason=why
        )
    if isinstance(exc, ConnectionTimeout):
        return ConnectError(f"cannot connect to {_safe(url)}: no answer within {timeout_s:g} s")
    return ConnectError(f"cannot connect to {_safe(url)}: {_cause(exc)}")


async def hello_exchange(ws: WebSocketConnection, hello: fr.Hello) -> fr.Welcome:
    """Send `hello` and read the server's answer: its Welcome, or a `SessionError` saying
    what it was instead (the connection closed, an Error frame, a broken frame). No timeout
    of its own: the caller bounds it."""
    decoder = Decoder(peer="server")
    try:
        await ws.send_message(encode(hello))
        message = await ws.get_message()
    except ConnectionClosed as exc:
        raise ConnectionLost(
            f"connection closed during handshake ({describe_close(exc)})"
        ) from None
    if isinstance(message, str):
        raise ServerError("server sent a text message")
    try:
        decoder.receive_data(message)
        frame = decoder.next_frame()
    except RemoteProtocolError as exc:
        raise ServerError(f"server broke the protocol in its Welcome: {exc}") from None
    if isinstance(frame, fr.Error):
        raise ServerError(f"{frame.code.name}: {frame.message}", frame.code, frame.message)
    if not isinstance(frame, fr.Welcome):
        raise ServerError(f"expected Welcome, got {type(frame).__name__}")
    return frame


def describe_close(exc: ConnectionClosed) -> str:
    """A close as one line: its code and name, and the reason given."""
    reason = exc.reason
    if reason is None:
        return "no close reason"
    return f"{reason.code} {reason.name}" + (f": {reason.reason}" if reason.reason else "")


async def discard(ws: WebSocketConnection | None) -> None:
    """Close a connection given up on (a resume attempt that failed), within 1 s, shielded:
    its tasks would stay in the session's nursery otherwise."""
    if ws is not None:
        with trio.move_on_after(1.0) as scope:
            scope.shield = True
            await ws.aclose()
