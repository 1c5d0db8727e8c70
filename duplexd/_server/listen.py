"""The daemon's listening sockets: plain TCP (ws://), or TLS over TCP (wss://) with `[tls]`.

The TLS handshake of each connection runs when trio-websocket first reads from it, inside
the WebSocket server's connect timeout; a client that stalls it holds no session resource.
"""

from __future__ import annotations

import ssl

import trio

from .._ops.settings import TlsSettings
from .._ops.tls import server_ssl_context

Listener = trio.SocketListener | trio.SSLListener[trio.SocketStream]


def ssl_context_from_settings(tls: TlsSettings | None) -> ssl.SSLContext | None:
    """The server's TLS context (TLS 1.2+, the certificate chain and key loaded), or None
    when `tls` is None or sets no certificate. TlsError (one line) for unusable files."""
    if tls is None or not tls.cert:
        return None
    return server_ssl_context(tls.cert, tls.key)


async def open_listeners(host: str, port: int, tls: TlsSettings | None) -> list[Listener]:
    """Listen on `host:port` (0 picks a free port): TLS listeners when `tls` sets a
    certificate, plain TCP otherwise. OSError if the address cannot be bound; TlsError for
    an unusable certificate or key. Nothing is left open if it raises."""
    context = ssl_context_from_settings(tls)
    if context is None:
        return list(await trio.open_tcp_listeners(port, host=host))
    # https_compatible: peers (browsers) may close without TLS close_notify, as in HTTPS
    return list(
        await trio.open_ssl_over_tcp_listeners(port, context, host=host, https_compatible=True)
    )
