"""One binary WebSocket message sent with one system call: the writer's hot path (issue 17).

trio-websocket's `send_message` costs, per message, wsproto's frame serializer, its send lock
taken with a checkpoint, and trio's socket wrapper with two more (measured with py-spy on 50
streamed tone sessions: a third of the event loop's busy time was `send_message`, a quarter of
that the `send` system call itself). A server's binary message is a fixed header and the
payload, unmasked (RFC 6455 §5.2; no extension is ever negotiated here), so `DirectSend`
writes it itself:

- it takes the connection's send lock without waiting (`acquire_nowait`; held: by a send in
  progress, or the reader answering a ping or a close; or a rest of `send_now`'s waits: then
  `send_message` as usual, which waits its turn and sends the rest first);
- writes header and payload with one `os.writev` on the socket (non-blocking);
- and, if the socket took only part of it (its buffer is full: a client reading slowly), sends
  the rest with the stream's `send_all` while still holding the lock, so nothing can come in
  between.

The pacer's tick sends the frame that is due itself (`send_now`, synchronous: no task wakes up
per frame) when nothing is in its way: the lock free, no rest waiting. When the socket takes
only part of the message there, the rest waits and goes out before anything else the
connection sends: the connection's lock is replaced by a `_RestFirstLock`, which keeps the rest
and sends it when it is taken (trio-websocket takes it for each of its own sends; the writer
takes it at once to `flush`). (It refers to the stream only: no cycle through the connection.)

It needs three things beyond trio-websocket's public API, checked once per connection (`of`
answers None without them, and the session uses `send_message`): `WebSocketConnection._stream`
(the `trio.SocketStream` the connection runs on: TLS streams are not used), `._stream_lock`
(the `trio.StrictFIFOLock` its own sends hold, taken with `async with` in one place, its
`_send`: replaced with the `_RestFirstLock` that wraps it) and `._wsproto` (its wsproto
connection: a message goes out directly only while its state is OPEN, never after a close
frame). Messages are written in order with everything else the connection sends, as
trio-websocket's own.
"""

from __future__ import annotations

import contextlib
import os
import struct
from typing import Any, Final

import trio
from trio_websocket import WebSocketConnection
from wsproto import WSConnection
from wsproto.connection import ConnectionState

from .._downlink.contract import NOT_SENT, PARTLY_SENT, SENT

_Lock = trio.StrictFIFOLock | trio.Lock  # (trio-websocket's is a StrictFIFOLock)

_OPEN: Final = ConnectionState.OPEN  # (after a close frame, only `send_message` may say)
_BINARY_FIN: Final = 0x82  # FIN + opcode 2 (binary)
_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def frame_header(length: int) -> bytes:
    """The header of one whole unmasked binary frame with a `length`-byte payload."""
    if length < 126:
        return _SHORT.pack(_BINARY_FIN, length)
    if length < 1 << 16:
        return _MEDIUM.pack(_BINARY_FIN, 126, length)
    return _LONG.pack(_BINARY_FIN, 127, length)


class DirectSend:
    """Binary messages on one connection (see the module doc). Use `of`; call `send`,
    `send_now` and `flush` from the trio thread."""

    def __init__(
        self,
        ws: WebSocketConnection,
        stream: trio.SocketStream,
        lock: _Lock | _RestFirstLock,
        protocol: WSConnection,
    ) -> None:
        self.ws = ws
        self._protocol = protocol
        self._stream = stream
        if not isinstance(lock, _RestFirstLock):
            lock = _RestFirstLock(lock, stream)
            ws._stream_lock = lock  # type: ignore[assignment]  # (see the module doc)
        self._lock = lock
        self._socket = stream.socket
        self.direct = 0  # messages written whole by one writev
        self.waited = 0  # ... of which the socket took only part (the rest waited)
        self.fallbacks = 0  # messages left to `send_message` (the lock was held, or closed)

    @classmethod
    def of(cls, ws: Any) -> DirectSend | None:
        """A DirectSend for `ws`, or None when it is not a trio-websocket connection over a
        plain TCP stream with the internals named in the module doc."""
        if not isinstance(ws, WebSocketConnection):
            return None
        stream = getattr(ws, "_stream", None)
        lock = getattr(ws, "_stream_lock", None)
        protocol = getattr(ws, "_wsproto", None)
        if not isinstance(stream, trio.SocketStream):
            return None
        if not isinstance(lock, _Lock | _RestFirstLock):
            return None
        if not isinstance(protocol, WSConnection):
            return None
        return cls(ws, stream, lock, protocol)

    def _direct_fd(self) -> int:
        """The socket's fd when a message may go straight to it now: the connection open, its
        lock free and no rest of an earlier message waiting (`send_message` takes the lock,
        which sends the rest first); else -1. (A closed socket's fileno is -1: its number may
        be another connection's by now.)"""
        lock = self._lock
        if (
            lock.rest
            or lock.locked()
            or self.ws.closed is not None
            or self._protocol.state is not _OPEN
        ):
            return -1
        return self._socket.fileno()

    async def send(self, data: bytes) -> None:
        """Send `data` as one binary message. Raises ConnectionClosed (from `send_message`) or
        trio.BrokenResourceError / ClosedResourceError when the connection is gone.
        Cancellation leaves nothing half-sent that the connection could go on after: it can
        only come while the rest of a partly written message waits for the socket, which
        leaves the connection unusable (as trio-websocket's own sends would)."""
        ws = self.ws
        lock = self._lock
        fd = self._direct_fd()
        if fd < 0:
            self.fallbacks += 1
            await ws.send_message(data)
            return
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:  # (handed over to a waiter this very moment)
            self.fallbacks += 1
            await ws.send_message(data)
            return
        try:
            header = frame_header(len(data))
            total = len(header) + len(data)
            try:
                sent = os.writev(fd, (header, data))
            except BlockingIOError:
                sent = 0
            except OSError as exc:  # (reset by the peer: the reader learns why)
                raise trio.BrokenResourceError(f"socket: {exc.strerror}") from None
            self.direct += 1
            if sent < total:
                self.waited += 1
                await self._stream.send_all((header + data)[sent:])
        finally:
            lock.release()

    def send_now(self, data: bytes) -> int:
        """Send `data` as one binary message without waiting, from synchronous code (the
        pacer's tick): NOT_SENT (nothing written: the connection is not open, a send holds
        its lock, a rest waits, or the socket took nothing or failed; the caller sends it
        with `send`, which says why it cannot), SENT, or PARTLY_SENT (the socket took only
        part: the rest goes out first with `flush` or with the connection's next send)."""
        fd = self._direct_fd()
        if fd < 0:
            return NOT_SENT
        lock = self._lock
        header = frame_header(len(data))
        try:
            sent = os.writev(fd, (header, data))
        except OSError:  # (full: BlockingIOError; reset by the peer: `send` raises it)
            return NOT_SENT
        self.direct += 1
        if sent < len(header) + len(data):
            self.waited += 1
            lock.rest = (header + data)[sent:]
            return PARTLY_SENT
        return SENT

    async def flush(self) -> None:
        """Send the rest that `send_now` left, if any (it waits for the socket). Raises as
        `send`; cancellation leaves the connection unusable, as a cut send does."""
        if self._lock.rest:
            async with self._lock:  # (taking it sends the rest)
                pass


class _RestFirstLock:
    """A connection's send lock that sends the `rest` of a message `DirectSend.send_now` left,
    if any, as it is taken: held as trio-websocket holds its own (`async with`), and as
    `DirectSend.send` does."""

    def __init__(self, inner: _Lock, stream: trio.SocketStream) -> None:
        self.inner = inner
        self.rest = b""
        self._stream = stream

    def locked(self) -> bool:
        return self.inner.locked()

    def acquire_nowait(self) -> None:
        """(Sends no rest: `DirectSend.send` takes it so only when there is none.)"""
        self.inner.acquire_nowait()

    def release(self) -> None:
        self.inner.release()

    async def acquire(self) -> None:
        await self.inner.acquire()
        rest, self.rest = self.rest, b""
        if not rest:
            return
        try:  # (a broken connection is left to the send that follows: it says so)
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._stream.send_all(rest)
        except BaseException:
            self.inner.release()
            raise

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.inner.release()
