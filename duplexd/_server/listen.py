"""The daemon's listening sockets: plain TCP (ws://), or TLS over TCP (wss://) with `[tls]`.

The TLS handshake of each connection runs when trio-websocket first reads from it, inside
the WebSocket server's connect timeout; a client that stalls it holds no session resource.

Socket activation (`inherited_sockets`, sd_listen_fds(3)): when systemd passes listening
sockets (`LISTEN_PID` is this process, `LISTEN_FDS` of them from fd 3), the daemon serves on
those instead of binding `server.host:port`. That is how several daemons ("workers",
deploy/duplexd-worker@.service) share one port: every one of them gets the same socket
(`Sockets=duplexd-workers.socket`) and accepts from its one queue, so a busy worker simply
accepts less, a draining one stops accepting (`Daemon.stop_accepting`) and its share goes to
the others, and connections that arrive while none runs wait in the queue systemd keeps.
A socket named `READY_FD_NAME` (deploy/duplexd-workers-ready.socket) is shared the same way
for /healthz and /readyz: a worker accepts on it from READY until its drain, so a balancer's
check of that one port passes while any worker takes sessions.
"""

from __future__ import annotations

import os
import socket
import ssl

import trio

from .._ops.settings import TlsSettings
from .._ops.tls import server_ssl_context

Listener = trio.SocketListener | trio.SSLListener[trio.SocketStream]
LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START
_LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
# FileDescriptorName= of deploy/duplexd-workers-ready.socket: the workers' shared readiness
# port, /readyz answered by whichever worker accepts (none: nobody answers)
READY_FD_NAME = "ready"


class ListenError(Exception):
    """The sockets passed by the service manager cannot be served on (one line)."""


def inherited_sockets() -> list[socket.socket]:
    """The listening TCP sockets systemd passed to this process (socket activation), or []
    when none were. The `LISTEN_*` variables are removed (a child process must not take
    them for its own) and the descriptors made non-inheritable. ListenError for a passed
    descriptor that is not a listening TCP socket."""
    return [sock for _, sock in named_inherited_sockets()]


def named_inherited_sockets() -> list[tuple[str, socket.socket]]:
    """`inherited_sockets`, each with its name (`LISTEN_FDNAMES`: its socket unit's
    `FileDescriptorName=`, by default the unit's own name; "" where none was given). The
    workers' shared readiness port is the one named `READY_FD_NAME`."""
    pid, count = os.environ.get("LISTEN_PID"), os.environ.get("LISTEN_FDS")
    if not count or pid != str(os.getpid()):
        return []
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    for name in _LISTEN_VARS:
        os.environ.pop(name, None)
    try:
        n = int(count)
    except ValueError:
        raise ListenError(f"LISTEN_FDS={count!r} is not a number of sockets") from None
    names += [""] * (n - len(names))
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + n):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ListenError(f"socket activation: fd {fd}: {exc.strerror}") from None
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if sock.type != socket.SOCK_STREAM or not listening:
            sock.detach()
            raise ListenError(
                f"socket activation: fd {fd} is not a listening TCP socket: use ListenStream="
                " in the .socket unit"
            )
        os.set_inheritable(fd, False)
        sock.setblocking(False)
        sockets.append((names[fd - LISTEN_FDS_START], sock))
    return sockets


def socket_of(listener: Listener) -> trio.socket.SocketType:
    """The listening socket of `listener` (under TLS: of the TCP listener it wraps)."""
    plain = listener.transport_listener if isinstance(listener, trio.SSLListener) else listener
    assert isinstance(plain, trio.SocketListener)  # (what `open_listeners` makes)
    return plain.socket


def endpoint(listener: Listener) -> tuple[str, int]:
    """The address and port `listener` listens on."""
    address, port = socket_of(listener).getsockname()[:2]
    return str(address), int(port)


def ssl_context_from_settings(tls: TlsSettings | None) -> ssl.SSLContext | None:
    """The server's TLS context (TLS 1.2+, the certificate chain and key loaded), or None
    when `tls` is None or sets no certificate. TlsError (one line) for unusable files."""
    if tls is None or not tls.cert:
        return None
    return server_ssl_context(tls.cert, tls.key)


async def open_listeners(
    host: str, port: int, tls: TlsSettings | None, inherited: list[socket.socket] | None = None
) -> list[Listener]:
    """Listen on `host:port` (0 picks a free port), or on the `inherited` sockets when given
    (socket activation): TLS listeners when `tls` sets a certificate, plain TCP otherwise.
    OSError if the address cannot be bound; TlsError for an unusable certificate or key.
    Nothing is left open if it raises."""
    context = ssl_context_from_settings(tls)
    if inherited:
        plain = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in inherited]
        if context is None:
            return list(plain)
        return [trio.SSLListener(p, context, https_compatible=True) for p in plain]
    if context is None:
        return list(await trio.open_tcp_listeners(port, host=host))
    # https_compatible: peers (browsers) may close without TLS close_notify, as in HTTPS
    return list(
        await trio.open_ssl_over_tcp_listeners(port, context, host=host, https_compatible=True)
    )
