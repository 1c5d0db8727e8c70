"""`Transport`: what the server needs of a connection that carries whole messages.

trio-websocket's `WebSocketConnection` is one; so are the JSON text mode
(`duplexd.protocol.jsonmode.JsonTransport`) and the tracer (`duplexd._ops.trace`), which wrap
another transport. Only the interface lives here: no I/O, no trio.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Transport"]


class Transport(Protocol):
    """A message transport: one protocol message per `get_message`/`send_message`."""

    async def get_message(self) -> str | bytes:
        """The next whole message; raises when the connection is closed. A schedule point
        even when a message is waiting (trio-websocket's is: a memory channel's `receive`):
        the server's read loop takes none of its own between messages."""
        ...

    async def send_message(self, message: str | bytes) -> None:
        """Send one whole message."""
        ...

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        """Close with a WebSocket close code and reason."""
        ...
