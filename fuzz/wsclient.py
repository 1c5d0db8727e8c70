"""A raw WebSocket client for fuzzing: wsproto over a trio TCP stream, every byte in our hands.

`RawClient.connect` does the HTTP upgrade; `wire(message)` gives the bytes of one WebSocket
message (binary, text, or a binary message in several fragments) without sending them, so a
caller can send all of them, or half and then vanish. `run_reader` (a task) decodes what the
server sends: its frames (`Decoder(peer="server")`), its close code, EOF; it answers the
server's close and pings like any client.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError as WsLocalError
from wsproto.utilities import RemoteProtocolError as WsRemoteError

from duplexd.protocol import frames as fr
from duplexd.protocol.codec import Decoder, RemoteProtocolError

SEND_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, WsLocalError, OSError)


class HandshakeFailed(Exception):
    """The server refused the WebSocket upgrade (`status`: its HTTP status, `headers`, `body`)
    or closed during it (`status` None)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
        self.body = body


def _refusal(event: RejectConnection | None, body: bytes) -> HandshakeFailed:
    if event is None:
        return HandshakeFailed("upgrade refused")
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
    text = body.decode("utf-8", "replace").strip()
    return HandshakeFailed(
        f"upgrade refused: HTTP {event.status_code} {text!r}",
        status=event.status_code,
        headers=headers,
        body=body,
    )


class RawClient:
    """One connection. Not thread-safe; one sender and one `run_reader` task."""

    def __init__(self, stream: trio.SocketStream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.decoder = Decoder(peer="server")
        self.frames: list[fr.Frame] = []  # every frame the server sent, in order
        self.messages = 0  # binary messages received
        self.text_messages = 0  # text messages received (never, in binary mode)
        self.close_code: int | None = None  # the server's close code, once it closed
        self.close_reason = ""
        self.problem = ""  # a protocol error of the server's (WebSocket or duplexd)
        self.eof = False
        self.answer_close = True  # False: a dead client, that never answers the close
        self.done = trio.Event()  # the server closed, or the stream ended
        self.received = trio.Event()  # set (and replaced) when a message or the close arrives
        self._parts: list[bytes] = []
        self._send_lock = trio.Lock()  # the reader answers pings and the close too

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        subprotocols: tuple[str, ...] = (fr.SUBPROTOCOL,),
        path: str = fr.WS_PATH,
    ) -> RawClient:
        """TCP connect and upgrade. Raises OSError or HandshakeFailed."""
        stream = await trio.open_tcp_stream(host, port)
        ws = WSConnection(ConnectionType.CLIENT)
        refused: RejectConnection | None = None
        body = b""
        try:
            await stream.send_all(
                ws.send(Request(host=f"{host}:{port}", target=path, subprotocols=[*subprotocols]))
            )
            while True:
                data = await stream.receive_some(65536)
                ws.receive_data(data or None)
                for event in ws.events():
                    if isinstance(event, AcceptConnection):
                        return cls(stream, ws)
                    if isinstance(event, RejectConnection):
                        refused = event
                        if not event.has_body:
                            raise _refusal(refused, body)
                    elif isinstance(event, RejectData):
                        body += bytes(event.data)
                        if event.body_finished:
                            raise _refusal(refused, body)
                if not data:
                    if refused is not None:
                        raise _refusal(refused, body)
                    raise HandshakeFailed("connection closed during the upgrade")
                if ws.state is not ConnectionState.CONNECTING and refused is None:
                    raise HandshakeFailed(f"upgrade ended in state {ws.state.name}")
        except BaseException:
            await stream.aclose()
            raise

    # ------------------------------------------------------------------ sending

    def wire(self, message: bytes | str, *, fragments: int = 1) -> bytes:
        """The bytes of one WebSocket message (not sent). `fragments` > 1 splits a binary
        message into that many WebSocket frames (one message all the same)."""
        if isinstance(message, str):
            return self.ws.send(Message(data=message))
        n = max(1, min(fragments, len(message)))
        cuts = [len(message) * i // n for i in range(n + 1)]
        return b"".join(
            self.ws.send(Message(data=message[a:b], message_finished=b == len(message)))
            for a, b in itertools.pairwise(cuts)
        )

    async def send_raw(self, data: bytes) -> bool:
        """Send bytes as they are; False if the connection is gone."""
        try:
            async with self._send_lock:
                await self.stream.send_all(data)
        except SEND_ERRORS:
            return False
        return True

    async def send_message(self, message: bytes | str, *, fragments: int = 1) -> bool:
        if self.ws.state is not ConnectionState.OPEN:
            return False
        try:
            data = self.wire(message, fragments=fragments)
        except WsLocalError:
            return False
        return await self.send_raw(data)

    async def close(self, code: int = 1000) -> bool:
        """Start the closing handshake (the reader sees the server's answer)."""
        if self.ws.state is not ConnectionState.OPEN:
            return False
        return await self.send_raw(self.ws.send(CloseConnection(code=code)))

    async def vanish(self, *, reset: bool = False) -> None:
        """Close the TCP socket without a WebSocket close; `reset`: with an RST (SO_LINGER 0)."""
        if reset:
            with contextlib.suppress(OSError):
                self.stream.socket.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
        await self.stream.aclose()

    async def aclose(self) -> None:
        await self.stream.aclose()

    # ------------------------------------------------------------------ receiving

    async def run_reader(self) -> None:
        """Read until the server closes or the stream ends; then `done` is set."""
        try:
            while not self.eof:
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    data = b""
                if not data:
                    self.eof = True
                try:
                    self.ws.receive_data(data or None)
                    await self._handle_events()
                except WsRemoteError as exc:
                    self.problem = self.problem or f"websocket: {exc}"
                    return
        finally:
            self.done.set()
            self._wake()

    def _wake(self) -> None:
        self.received.set()
        self.received = trio.Event()

    async def _handle_events(self) -> None:
        for event in self.ws.events():
            if isinstance(event, BytesMessage):
                self._parts.append(bytes(event.data))
                if event.message_finished:
                    self._message(b"".join(self._parts))
                    self._parts.clear()
            elif isinstance(event, TextMessage):
                self.text_messages += 1
            elif isinstance(event, CloseConnection):
                if self.close_code is not None:
                    continue  # wsproto adds a 1006 at EOF even after the closing handshake
                self.close_code, self.close_reason = event.code, event.reason or ""
                if self.answer_close and self.ws.state is ConnectionState.REMOTE_CLOSING:
                    await self.send_raw(self.ws.send(event.response()))
                self.done.set()
                self._wake()
            elif isinstance(event, Ping):
                await self.send_raw(self.ws.send(event.response()))

    def _message(self, data: bytes) -> None:
        self.messages += 1
        try:
            self.decoder.receive_data(data)
            self.frames.extend(self.decoder)
            self.decoder.check_boundary()
        except RemoteProtocolError as exc:
            self.problem = self.problem or f"server sent bad frames: {exc!r}"
        self._wake()
