"""What the SDK raises: one `SessionError` base, and the kind of failure it was.

`str()` of each is one line; the CLI prints it as it is.
"""

from __future__ import annotations

from ..protocol import frames as fr

__all__ = ["ConnectError", "ConnectionLost", "HandshakeRejected", "ServerError", "SessionError"]


class SessionError(Exception):
    """The server refused the connection, sent an Error frame or closed the session; or it
    could not be reached. `code`: the Error frame's code; `status`: the HTTP status of a
    refused WebSocket upgrade (401 no or bad token, 429 too many failed attempts, 503 full or
    draining). The base of `ConnectError`, `HandshakeRejected`, `ServerError` and
    `ConnectionLost`, which say which of those it was; `str()` is one line."""

    def __init__(
        self, message: str, code: fr.ErrorCode | None = None, *, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class ConnectError(SessionError):
    """The server could not be reached: nothing listening, no answer in time, a TLS failure
    (the message says which)."""


class HandshakeRejected(SessionError):
    """The server refused the WebSocket upgrade: `status` (401 no or bad token, 404 not the
    /v1 path, 429 too many failed attempts or over a budget, 503 full or draining) and the
    `reason` it gave."""

    def __init__(self, message: str, *, status: int, reason: str) -> None:
        super().__init__(message, status=status)
        self.reason = reason


class ServerError(SessionError):
    """The server ended the session with an Error frame: `code` (protocol/SPEC.md §8) and
    its `message`; or broke the protocol itself (`code` None)."""

    def __init__(self, message: str, code: fr.ErrorCode | None = None, detail: str = "") -> None:
        super().__init__(message, code)
        self.message = detail or message


class ConnectionLost(SessionError):
    """The connection closed or dropped during the session and was not resumed."""
