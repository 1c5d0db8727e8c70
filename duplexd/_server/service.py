"""`duplexd serve` as an operated service: engine loading, the side port, systemd, signals.

`Service(settings).run()` is the daemon's whole life:

1. the watchdog task (if systemd asked for one) and the HTTP side port start first, so
   /healthz answers and /readyz says "starting" while the model loads;
2. the engine is loaded in a worker thread and its default voice opened (and warmed);
3. `serve_duplexd` listens; then READY=1 goes to systemd and /readyz turns 200;
   On sockets systemd passed (socket activation, several workers on one port: listen.py)
   instead of `server.host:port` when there are any; the workers' shared readiness socket,
   if passed, answers /healthz and /readyz from here on;
4. SIGTERM (or SIGINT): drain. New sessions get HTTP 503 and /readyz says "draining" (with
   socket activation, the daemon stops accepting instead, on the shared readiness socket
   too: the other workers take them, and answer the balancer's check);
   sessions finish the utterances they have (up to `server.drain_timeout_s`), then each is
   closed with Error GOING_AWAY and close code 1001; `run` returns (exit status 0). A second
   SIGTERM/SIGINT stops at once.
5. SIGHUP: re-read the configuration; the log settings (level, format, file: reopened, for
   logrotate) apply at once, the rest is logged as needing a restart. Sessions are untouched.
"""

from __future__ import annotations

import enum
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import attrs
import trio

from .._ops.auth import AuthConfigError, Authenticator, AuthError
from .._ops.collector import GarbagePolicy
from .._ops.demo import DemoPage
from .._ops.http import Request, Response, serve_http
from .._ops.logs import configure_logging
from .._ops.prometheus import CONTENT_TYPE, DaemonMetrics
from .._ops.sdnotify import Notifier, keep_watchdog_fed, watchdog_interval_s
from .._ops.settings import ConfigError, Settings, effective_max_sessions
from .._ops.tls import TlsError
from .._ops.trace import Tracer
from .._uplink.asr import Transcriber
from .._uplink.services import UplinkServices
from .._uplink.turn import TurnModel
from .._uplink.vad import VadModel
from ..engines.base import EngineError
from ..engines.registry import EngineSet
from ..engines.remote import RemoteEngine
from .listen import (
    READY_FD_NAME,
    ListenError,
    named_inherited_sockets,
    ssl_context_from_settings,
)
from .preflight import startup_problems
from .server import Daemon, serve_duplexd
from .session import Session
from .startup import DefaultVoice, StartupError, check_port_free, load_local_engine

log = logging.getLogger("duplexd.service")

DRAIN_POLL_S = 0.05
CLOSE_GRACE_S = 2.0  # after GOING_AWAY: how long sessions get to close before they are cut


MODEL_CHECK_S = 1.0  # how often a daemon that uses a model process checks that it answers


class Phase(enum.Enum):
    """Where the service is in its life: STARTING -> READY -> DRAINING -> STOPPED."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


class Service:
    """One daemon process. `run` until SIGTERM (or `request_stop`) and a drain.

    engines: already loaded engines (tests); by default `settings.engine` is loaded.
    uplink_services: what the sessions' uplinks share (tests); by default the VAD model is
    loaded and a `Transcriber` made from `settings.asr`.
    reload: returns fresh settings on SIGHUP (None: SIGHUP only reopens the logs).
    handle_signals: install SIGTERM/SIGINT/SIGHUP handlers (needs the main thread).
    http_port: overrides `settings.server.http_port`; here 0 picks a free port (tests).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        engines: EngineSet | None = None,
        engine_options: Mapping[str, Any] | None = None,
        uplink_services: UplinkServices | None = None,
        reload: Callable[[], Settings] | None = None,
        notifier: Notifier | None = None,
        environ: Mapping[str, str] | None = None,
        handle_signals: bool = True,
        http_port: int | None = None,
    ) -> None:
        self.settings = settings
        self._engines = engines
        self._owns_engines = engines is None
        self._remote: RemoteEngine | None = None  # the model process's engine, if it loaded one
        self._engine_options = dict(engine_options or {})
        self._uplink_services = uplink_services
        trace = settings.trace
        self._tracer = (
            Tracer(trace.path, trace.sessions, uplink_dir=trace.uplink_dir)
            if trace.path or trace.uplink_dir
            else None
        )
        self._authenticator = Authenticator()  # made from the settings in `run` (reads files)
        self._reload = reload
        self.notifier = notifier if notifier is not None else Notifier.from_env(environ)
        self._watchdog_s = watchdog_interval_s(environ)
        self._handle_signals = handle_signals
        self._http_port = http_port if http_port is not None else settings.server.http_port or None
        self.phase = Phase.STARTING
        self.daemon: Daemon | None = None
        self.http_port: int | None = None
        self._drained = trio.CancelScope()  # the shared readiness port's (until the drain)
        # the daemon's own process (it loads its models) keeps full collections short
        self._garbage = GarbagePolicy() if engines is None else None
        self.metrics = DaemonMetrics(ready=lambda: self.readiness()[0], garbage=self._garbage)
        self._demo: DemoPage | None = None  # the browser page, once the daemon listens
        self._models_down: set[str] = set()  # engines whose model process does not answer
        self._stop = trio.Event()
        self._all_closed = trio.Event()  # set when the last session closes while draining
        self._scope = trio.CancelScope()  # the whole life of `run`: a second signal cancels it

    # ------------------------------------------------------------------ state

    def readiness(self, *, host: bool = False) -> tuple[bool, str]:
        """(ready, reason): what /readyz answers. `host`: for the workers' shared readiness
        port, where this worker answers for the host: its being full is not (the others may
        have room; a session it refuses, 503, HAProxy sends again: `retry-on 503`)."""
        if self.phase is Phase.STARTING or self.daemon is None:
            return False, "starting: loading the model"
        if self.phase is not Phase.READY:
            return False, "draining"
        if self.daemon.full and not host:
            d = self.daemon
            return False, f"full: {len(d.sessions)} of {d.max_sessions} sessions"
        if self._models_down:
            return False, "the model process does not answer"
        return True, "ready"

    async def _watch_model_process(self, name: str, check: Callable[[], bool]) -> None:
        """Every MODEL_CHECK_S, whether engine `name`'s model process answers (connecting
        again if it restarted): /readyz says 503 while it does not, so a balancer sends no new
        sessions here. The check runs in a worker thread, abandoned if cancelled (it ends on
        its own within its timeout); a check that fails in any way counts as no answer."""
        while True:
            try:
                up = await trio.to_thread.run_sync(check, abandon_on_cancel=True)
            except Exception as exc:  # (no thread to be had...): this daemon must not end
                log.warning("model process check failed", extra={"why": repr(exc)})
                up = False
            if up == (name in self._models_down):
                (self._models_down.discard if up else self._models_down.add)(name)
                (log.info if up else log.warning)(
                    "model process " + ("answers again" if up else "does not answer"),
                    extra={"engine": name},
                )
            await trio.sleep(MODEL_CHECK_S)

    def handle_http(self, request: Request, *, shared: bool = False) -> Response:
        """The side port: /healthz and /readyz are open (load balancers and systemd probe them);
        /metrics asks for the same token as a session when `[auth] metrics_require_auth`; / and
        /demo/ are the browser page (`[demo] page`, once the daemon listens). `shared`: the
        workers' shared readiness port, which answers /healthz and /readyz only."""
        path = request.path
        if path == "/healthz":
            return Response(200, b"ok\n")  # answered by the event loop, so the loop is alive
        if path == "/readyz":
            ready, reason = self.readiness(host=shared)
            return Response(200 if ready else 503, f"{reason}\n".encode())
        if shared:
            return Response(
                404, b"the workers' shared port serves /healthz /readyz; /metrics: each worker's\n"
            )
        if self._demo is not None and (page := self._demo.respond(request)) is not None:
            return page
        if path == "/metrics":
            if self.settings.auth.metrics_require_auth:
                try:
                    self._authenticator.check(request.headers, request.target, request.peer)
                except AuthError as exc:
                    return Response(exc.status, f"{exc}\n".encode())
            return Response(200, self.metrics.render(), CONTENT_TYPE)
        return Response(404, b"duplexd serves / /healthz /readyz /metrics here\n")

    def _session_closed(self, session: Session) -> None:
        self.metrics.session_closed(session)
        if self.daemon is not None and self.daemon.draining and not self.daemon.sessions:
            self._all_closed.set()

    def request_stop(self) -> None:
        """Start the drain, as SIGTERM does. Trio thread."""
        self._stop.set()

    @property
    def uplink_services(self) -> UplinkServices | None:
        """What the sessions' uplinks share, once the service has made them (before READY)."""
        return self._uplink_services

    # ------------------------------------------------------------------ life

    async def run(
        self, *, task_status: trio.TaskStatus[Service] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until stopped and drained. Raises StartupError if the engine cannot load."""
        try:
            with self._scope:
                await self._serve(task_status)
        finally:
            self.phase = Phase.STOPPED
            if self._garbage is not None:
                self._garbage.close()
            if self._owns_engines and self._engines is not None:
                self._engines.close()
            if self._tracer is not None:
                self._tracer.close()
            self.notifier.close()

    async def _serve(self, task_status: trio.TaskStatus[Service]) -> None:
        s = self.settings.server
        async with trio.open_nursery() as nursery:
            if self._watchdog_s:
                nursery.start_soon(keep_watchdog_fed, self.notifier, self._watchdog_s)
            if self._handle_signals:
                nursery.start_soon(self._signals)
            if self._http_port is not None:
                try:
                    http_tls = ssl_context_from_settings(self.settings.tls) if s.http_tls else None
                except TlsError as exc:
                    raise StartupError(str(exc)) from None
                self.http_port = await nursery.start(
                    partial(serve_http, ssl_context=http_tls),
                    s.http_host or s.host,
                    self._http_port,
                    self.handle_http,
                )
            try:
                self._authenticator = Authenticator.from_settings(self.settings)
            except AuthConfigError as exc:
                raise StartupError(str(exc)) from None
            try:
                named = named_inherited_sockets()  # socket activation (workers on one port)
            except ListenError as exc:
                raise StartupError(str(exc)) from None
            inherited = [sock for name, sock in named if name != READY_FD_NAME]
            shared_ready = [sock for name, sock in named if name == READY_FD_NAME]
            if shared_ready and not inherited:
                raise StartupError(
                    "socket activation: only the shared readiness socket was passed: give the"
                    " worker its WebSocket port too (Sockets=duplexd-workers.socket"
                    " duplexd-workers-ready.socket)"
                )
            try:  # (the side port's TLS, for the shared readiness socket too)
                shared_tls = ssl_context_from_settings(self.settings.tls) if s.http_tls else None
            except TlsError as exc:
                raise StartupError(str(exc)) from None
            if not inherited:
                check_port_free(s.host, s.port)  # before the model loads, not after
            remote = bool(self.settings.engine.model_socket)  # the model process checks them
            if (
                self._engines is None
                and not remote
                and (problems := startup_problems(self.settings))
            ):
                raise StartupError(problems[0])  # an unknown voice, no CUDA: before, too
            self.notifier.status("loading the model")
            engines = await self._load_engines()
            uplink_services = await self._uplink()
            for name in engines.names():
                check = getattr(engines.get(name), "check_model_process", None)
                if check is not None:  # a model process's engine: ready only while it answers
                    nursery.start_soon(self._watch_model_process, name, check)
            if self._garbage is not None:  # every model is loaded: freeze them, and more
                self._garbage.install()
                nursery.start_soon(self._garbage.run)
            daemon: Daemon = await nursery.start(
                partial(
                    serve_duplexd,
                    s.host,
                    s.port,
                    engines=engines,
                    limits=self.settings.limits,
                    authenticator=self._authenticator,
                    tls=self.settings.tls,
                    max_sessions=self._max_sessions(engines),
                    max_sessions_per_address=s.max_sessions_per_address,
                    max_sessions_per_subject=s.max_sessions_per_subject,
                    trusted_proxies=s.trusted_proxies,
                    churn_per_s=s.churn_per_s,
                    churn_burst=s.churn_burst,
                    uplink_services=uplink_services,
                    tracer=self._tracer,
                    on_session_opened=self._garbage.session_opened if self._garbage else None,
                    on_session_closed=self._session_closed,
                    inherited=inherited,
                )
            )
            self.daemon = daemon
            self.metrics.attach(daemon)
            try:
                self._demo = DemoPage(
                    self.settings, ws_port=daemon.port, uplink=uplink_services is not None
                )
            except AuthConfigError as exc:
                raise StartupError(str(exc)) from None
            self.phase = Phase.READY
            if shared_ready:  # the workers' /readyz: answered by whichever worker accepts
                handler = partial(self.handle_http, shared=True)
                serve = partial(
                    serve_http,
                    s.http_host,
                    0,
                    handler,
                    ssl_context=shared_tls,
                    sockets=shared_ready,
                )
                nursery.start_soon(self._until_drained, serve)
            self.notifier.ready(f"serving {daemon.url}")
            extra = {"url": daemon.url, "http_port": self.http_port, "pid": _pid()}
            if self.http_port is not None and self._demo.enabled:
                page_host = s.http_host or s.host
                page_host = "127.0.0.1" if page_host in ("", "0.0.0.0", "::") else page_host
                scheme = "https" if s.http_tls else "http"
                extra["page"] = f"{scheme}://{page_host}:{self.http_port}/"  # the browser page
            log.info("ready", extra=extra)
            task_status.started(self)
            await self._stop.wait()
            await self._drain(daemon)
            if self._remote is not None:  # a synthesis call waiting for a model process to
                self._remote.close()  # connect to (it is down) would hold the stop up to 60 s
            nursery.cancel_scope.cancel()

    async def _load_engines(self) -> EngineSet:
        if self._engines is not None:
            return self._engines
        e = self.settings.engine
        started = time.monotonic()

        def load() -> EngineSet:
            if not e.model_socket:
                engine = load_local_engine(e, self._engine_options)
            else:  # the model process's engine: its name, device, voices
                try:
                    engine = self._remote = RemoteEngine(
                        e.model_socket, reconnect_wait_s=e.model_wait_s
                    )
                    engine.open_voice(e.voice or engine.default_voice)
                except EngineError as exc:
                    raise StartupError(str(exc.args[0] if exc.args else exc)) from None
            return EngineSet.of(DefaultVoice(engine, e.voice) if e.voice else engine)

        self._engines = await trio.to_thread.run_sync(load)
        engine = self._engines.get("")
        log.info(
            "engine ready",
            extra={
                "engine": engine.name,
                "device": engine.device,
                "voice": e.voice or engine.default_voice,
                "load_s": round(time.monotonic() - started, 3),
            },
        )
        return self._engines

    def _max_sessions(self, engines: EngineSet) -> int:
        """`server.max_sessions`, "auto" resolved with the device the engine really runs on."""
        engine = engines.get("")
        n = effective_max_sessions(
            self.settings, cuda=engine.device.startswith("cuda"), engine=engine.name
        )
        log.info(
            "admission", extra={"max_sessions": n, "setting": self.settings.server.max_sessions}
        )
        return n

    async def _uplink(self) -> UplinkServices:
        """The uplinks' shared parts: given, or the VAD and turn models (loaded in worker
        threads) and a transcriber of `settings.asr`. Either way its ASR model is loaded and
        warmed here, in a worker thread, before the daemon is ready: the first turn is as fast
        as the next."""
        if self._uplink_services is None:
            asr = self.settings.asr
            transcriber = Transcriber(
                asr.model or None, cpu_threads=asr.threads, cut_window=asr.cut_window
            )
            vad_model = await trio.to_thread.run_sync(VadModel)
            turn_model = await trio.to_thread.run_sync(TurnModel)
            self._uplink_services = UplinkServices.create(
                vad_model, transcriber=transcriber, turn_model=turn_model
            )
        asr_model = self._uplink_services.transcriber
        if asr_model is not None and not asr_model.loaded:
            try:
                took = await trio.to_thread.run_sync(asr_model.warm_up)
            except FileNotFoundError as exc:
                raise StartupError(f"asr.model: {exc}") from None
            log.info("asr ready", extra={"load_s": round(took, 3)})
        return self._uplink_services

    async def _until_drained(self, serve: Callable[[], Awaitable[None]]) -> None:
        with self._drained:
            await serve()

    async def _drain(self, daemon: Daemon) -> None:
        self.phase = Phase.DRAINING
        daemon.draining = True
        if daemon.inherited:  # the workers' shared socket: leave its connections to the others
            daemon.stop_accepting()
        self._drained.cancel()  # (and the shared readiness port's: others say "ready")
        timeout = self.settings.server.drain_timeout_s
        started = trio.current_time()
        self.notifier.stopping(f"draining {len(daemon.sessions)} sessions")
        log.info("draining", extra={"sessions": len(daemon.sessions), "timeout_s": timeout})
        with trio.move_on_after(timeout):
            while True:
                for session in list(daemon.sessions):
                    if not session.busy:
                        session.go_away()
                if not daemon.sessions:
                    break
                await trio.sleep(DRAIN_POLL_S)
        cut = len(daemon.sessions)
        for session in list(daemon.sessions):
            session.go_away("drain timeout: server is shutting down")
        if daemon.sessions:
            with trio.move_on_after(CLOSE_GRACE_S):
                await self._all_closed.wait()
        log.info(
            "drained",
            extra={
                "duration_ms": round((trio.current_time() - started) * 1e3, 3),
                "cut_short": cut,
                "left": len(daemon.sessions),
            },
        )

    async def _signals(self) -> None:
        sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        with trio.open_signal_receiver(*sigs) as received:
            async for signum in received:
                if signum == signal.SIGHUP:
                    self.reload()
                elif self.phase is Phase.READY and not self._stop.is_set():
                    log.info("stopping", extra={"signal": signal.Signals(signum).name})
                    self._stop.set()
                else:  # still starting, or a second SIGTERM: stop now
                    log.info("stopping now", extra={"signal": signal.Signals(signum).name})
                    self.notifier.stopping()
                    self._scope.cancel()

    def reload(self) -> None:
        """SIGHUP: reopen the logs and apply the reloadable settings (the log section)."""
        self.notifier.reloading()
        new = self.settings
        if self._reload is not None:
            try:
                new = self._reload()
            except ConfigError as exc:
                log.error("reload failed; keeping the configuration", extra={"error": str(exc)})
        configure_logging(new.log)
        old = attrs.evolve(self.settings, log=new.log)
        if new != old:
            changed = _changed_keys(old, new)
            log.warning("reload: these need a restart", extra={"keys": changed})
        self.settings = old
        log.info("reloaded", extra={"log_level": new.log.level, "log_format": new.log.format})
        self.notifier.ready()


def _changed_keys(a: Settings, b: Settings) -> list[str]:
    da, db = attrs.asdict(a), attrs.asdict(b)
    return [
        f"{section}.{key}"
        for section, values in da.items()
        for key, value in values.items()
        if db[section][key] != value
    ]


def _pid() -> int:
    import os

    return os.getpid()
