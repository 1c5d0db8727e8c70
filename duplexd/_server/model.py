"""`duplexd serve-model`: the model process of a GPU host, shared by its daemons (workers).

It loads `[engine]` (name, device, voice, preload) once, listens on the Unix socket
`[engine] model_socket` (or on one systemd passed: socket activation), says READY=1 when the
model is loaded, warm and listening, feeds the watchdog from its event loop, and serves until
SIGTERM or SIGINT. SIGHUP reopens its logs.

SIGTERM (or SIGINT) stops it gracefully, so that `systemctl restart duplexd-model` ends no
session: it accepts no more daemons (its socket file is removed; a socket systemd passed keeps
queueing them for the next model process), tells each daemon connected that it is leaving
(`wire.Leaving`), and serves them until each has closed its connection: the daemons finish
here the utterances they began here, and ask the next model process for new ones (waiting for
it to come up: `RemoteEngine`). It exits once no daemon is connected, or after `[server]
drain_timeout_s`; a second signal stops it at once. A model process that stops at once (that
second signal, the drain time, a crash) fails the pieces part way through: each daemon ends the
sessions whose piece had begun to come, with INTERNAL and what to do (the others stay, and a
piece not begun yet is asked of the next model process).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import stat
import time

import trio

from .._ops.http import Request, Response, serve_http
from .._ops.logs import configure_logging
from .._ops.prometheus import CONTENT_TYPE, ModelMetrics
from .._ops.sdnotify import Notifier, keep_watchdog_fed, watchdog_interval_s
from .._ops.settings import Settings
from ..engines.remote.server import ModelServer, serve_model
from .listen import ListenError, inherited_sockets
from .preflight import startup_problems
from .startup import StartupError, load_local_engine

log = logging.getLogger("duplexd.model")


def bind_model_socket(path: str) -> socket.socket:
    """A listening Unix socket at `path`, only its owner may connect (mode 0600: the daemons
    run as the same user). A socket file left by a dead model process is replaced;
    StartupError if a live one listens there or the path is not a socket."""
    if not path:
        raise StartupError(
            "no socket to listen on: set [engine] model_socket (or --model-socket PATH)"
        )
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None:
        if not stat.S_ISSOCK(mode):
            raise StartupError(f"{path} exists and is not a socket: choose another model_socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise StartupError(f"cannot use {path}: {exc.strerror}") from None
            try:
                os.unlink(path)  # left behind by a model process that is gone
            except FileNotFoundError:
                pass
            except OSError as unlink_exc:
                raise StartupError(f"cannot replace {path}: {unlink_exc.strerror}") from None
        else:
            raise StartupError(f"a model process already listens at {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        sock.bind(path)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen at {path}: {exc.strerror}") from None
    finally:
        os.umask(old)
    return sock


async def run_model_service(
    settings: Settings,
    *,
    notifier: Notifier | None = None,
    handle_signals: bool = True,
    http_port: int | None = None,
    task_status: trio.TaskStatus[tuple[str, int | None]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Load the engine and serve it until SIGTERM/SIGINT (or cancelled). `task_status` gets
    where it serves and its side port once it serves. StartupError (one line) if it cannot
    start.

    `http_port` (0: any free one; None: none): a side port on `[server] http_host` (or
    `host`) with /healthz, /readyz (200 once serving) and /metrics (`ModelMetrics`)."""
    notifier = notifier if notifier is not None else Notifier.from_env()
    e = settings.engine
    try:
        inherited = inherited_sockets()
    except ListenError as exc:
        raise StartupError(str(exc)) from None
    if problems := startup_problems(settings):
        raise StartupError(problems[0])
    if http_port is not None and (settings.auth.metrics_require_auth or settings.server.http_tls):
        raise StartupError(
            "serve-model's side port has no token check and no TLS, and [auth]"
            " metrics_require_auth or [server] http_tls asks for them: leave out --http-port,"
            " or turn them off for it (DUPLEXD_AUTH__METRICS_REQUIRE_AUTH=false,"
            " DUPLEXD_SERVER__HTTP_TLS=false) and keep it on a loopback http_host"
        )
    sockets = inherited or [bind_model_socket(e.model_socket)]
    where = e.model_socket if not inherited else "the sockets systemd passed"
    serving = _Serving(settings, notifier, "" if inherited else e.model_socket)
    try:
        async with trio.open_nursery() as nursery:
            if (watchdog_s := watchdog_interval_s()) is not None:
                nursery.start_soon(keep_watchdog_fed, notifier, watchdog_s)
            if handle_signals:
                nursery.start_soon(_on_signals, nursery, serving)
            side, port = _SidePort(serving), None
            if http_port is not None:
                host = settings.server.http_host or settings.server.host
                port = await nursery.start(serve_http, host, http_port, side.handle)
                log.info("side port", extra={"http_port": port})
            notifier.status("loading the model")
            started = time.monotonic()
            engine = await trio.to_thread.run_sync(load_local_engine, e)
            try:
                log.info(
                    "model ready",
                    extra={
                        "engine": engine.name,
                        "device": engine.device,
                        "load_s": round(time.monotonic() - started, 3),
                        "socket": where,
                    },
                )
                serving.server = await nursery.start(serve_model, engine, sockets)
                side.metrics = ModelMetrics(serving.server.stats)
                log.info("listening", extra={"url": f"unix:{where}"})
                notifier.ready(f"serving the model at {where}")
                task_status.started((where, port))
                await trio.sleep_forever()
            finally:
                engine.close()
    finally:
        for s in sockets:
            s.close()
        serving.remove_socket_file()
        notifier.close()


class _SidePort:
    """The model process's /healthz, /readyz and /metrics (`metrics` set once it serves)."""

    def __init__(self, serving: _Serving) -> None:
        self.metrics: ModelMetrics | None = None
        self._serving = serving

    def handle(self, request: Request) -> Response:
        if request.path == "/healthz":
            return Response(200, b"ok\n")
        if request.path == "/readyz":
            if self._serving.leaving:
                return Response(503, b"leaving\n")
            ready = self.metrics is not None
            return Response(200 if ready else 503, b"ready\n" if ready else b"starting\n")
        if request.path == "/metrics" and self.metrics is not None:
            return Response(200, self.metrics.render(), CONTENT_TYPE)
        return Response(404, b"not found\n")


class _Serving:
    """What the signals act on: the model server (once it serves), and the socket file it
    made (removed once: on leaving, so daemons look for the next model process, or at exit)."""

    def __init__(self, settings: Settings, notifier: Notifier, socket_file: str) -> None:
        self.settings = settings
        self.notifier = notifier
        self.socket_file = socket_file
        self.server: ModelServer | None = None
        self.leaving = False

    def remove_socket_file(self) -> None:
        path, self.socket_file = self.socket_file, ""
        if path:
            with contextlib.suppress(OSError):
                os.unlink(path)


async def _on_signals(nursery: trio.Nursery, serving: _Serving) -> None:
    """SIGTERM, SIGINT: leave gracefully (`_leave`); a second one, or one before the model
    serves, stops at once. SIGHUP: reopen the logs (the daemons' rotation convention)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as received:
        async for signum in received:
            if signum == signal.SIGHUP:
                configure_logging(serving.settings.log)
                continue
            log.info("stopping", extra={"signal": signal.Signals(signum).name})
            server = serving.server
            if server is None or serving.leaving:
                serving.notifier.stopping()
                nursery.cancel_scope.cancel()
                return
            serving.leaving = True
            nursery.start_soon(_leave, nursery.cancel_scope, serving, server)


async def _leave(scope: trio.CancelScope, serving: _Serving, server: ModelServer) -> None:
    """Accept no more daemons, tell those connected, serve them until they have all closed
    their connections (or `[server] drain_timeout_s`), then stop (`scope`)."""
    timeout_s = serving.settings.server.drain_timeout_s
    server.leave()
    serving.remove_socket_file()  # a daemon connecting now waits for the next model process
    serving.notifier.stopping(f"leaving: {server.connected} daemons finish their utterances")
    log.info("leaving", extra={"daemons": server.connected, "timeout_s": timeout_s})
    with trio.move_on_after(timeout_s):
        await server.all_gone()
    log.info("left", extra={"daemons_still_connected": server.connected})
    scope.cancel()
