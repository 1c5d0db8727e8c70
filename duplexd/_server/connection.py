"""One accepted connection, from its Hello to its close: the handshake, then the open session
(or, for a Hello that resumes one, the session it takes over: `duplexd._server.resume`).

`Connection.run()` never raises (but `trio.Cancelled`): whatever went wrong is answered with
an Error frame and a close with that error's close code (a protocol error of the peer as
itself; an internal failure as INTERNAL and 1011), and nothing one connection does touches
another's state.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Protocol

import trio

from .._downlink.pacer import Pacer
from .._ops.metrics import SessionObserver
from .._ops.settings import SessionLimits
from .._uplink.services import UplinkServices
from ..engines.registry import EngineSet
from ..protocol import frames as fr
from ..protocol.codec import Decoder, encode
from ..protocol.options import ResumeOptions
from ..protocol.state import Phase, ServerProtocolState
from ..protocol.transport import Transport
from .churn import ChurnRate
from .ending import CLOSED_ERRORS, SessionEnd
from .handshake import Offload, Refusal, accept, receive_hello
from .limits import SESSION_OPEN_S, CarriedBudgets
from .resume import Resumable, ResumeFailed
from .session import Session


class Sessions(Protocol):
    """The sessions a connection may resume (the daemon's), by session id."""

    def resumable(self, session_id: bytes) -> Session | None: ...


# a handshake that ends with one of these (or with none: a session) costs the client nothing
_NOT_THE_CLIENTS = frozenset({None, fr.ErrorCode.INTERNAL, fr.ErrorCode.GOING_AWAY})
ERROR_SEND_TIMEOUT_S = 1.0  # after a failure: how long the Error frame and close may take


class Connection:
    """One connection. `run()` it; `session` is the open `Session` once the handshake is done.

    `on_open(session)` / `on_close(session)` run (trio thread) when the session opens and when
    it has ended, before the Error frame (if any) is sent. `uplink_record_dir`: record the
    session's uplink inputs in a file there, named by the session id (`[trace] uplink_dir`).
    """

    def __init__(
        self,
        transport: Transport,
        *,
        engines: EngineSet,
        pacer: Pacer,
        limits: SessionLimits,
        uplink_services: UplinkServices | None = None,
        offload: Offload = trio.to_thread.run_sync,
        synthesis_offloads: Mapping[str, Offload] | None = None,
        on_open: Callable[[Session], None] | None = None,
        on_close: Callable[[Session], None] | None = None,
        draining: Callable[[], bool] = lambda: False,
        client: str = "",
        subject: str = "",
        sessions: Sessions | None = None,
        on_resumed: Callable[[Session], None] | None = None,
        carried: CarriedBudgets | None = None,
        churn: ChurnRate | None = None,
        uplink_record_dir: str = "",
    ) -> None:
        self.id = os.urandom(16)
        tag = self.id.hex()[:12]
        self.observer = SessionObserver(tag, client=client, subject=subject)
        self.session: Session | None = None  # open once the handshake succeeded
        self._transport = transport
        self._engines = engines
        self._pacer = pacer
        self._limits = limits
        self._uplink_services = uplink_services
        if uplink_services is not None and uplink_record_dir:  # (its inputs, to replay)
            path = os.path.join(uplink_record_dir, f"{self.id.hex()}.uplink")
            self._uplink_services = dataclasses.replace(uplink_services, recording=path)
        self._offload = offload
        self._synthesis_offloads = synthesis_offloads or {}
        self._on_open = on_open
        self._on_close = on_close
        self._draining = draining
        self._subject = subject
        self._client = (client, subject)
        self._carried = carried
        self._sessions = sessions
        self._on_resumed = on_resumed
        self._churn = churn or ChurnRate()
        self.resumed: Session | None = None  # the session this connection took over, if any
        self.done = False  # run() has returned
        self._state = ServerProtocolState(
            max_text_bytes=limits.max_text_bytes,
            max_queued_utterances=limits.max_queued_utterances,
        )
        self._decoder = Decoder(peer="client", max_frame_bytes=limits.max_frame_bytes)
        self._end = SessionEnd(tag)

    @property
    def error_code(self) -> fr.ErrorCode | None:
        """The error the connection ended (or is ending) with, if any."""
        return self._end.error[0] if self._end.error is not None else None

    @property
    def phase(self) -> Phase:
        return self._state.phase

    async def run(self) -> None:
        """Handshake, then serve the session until it ends; then the Error frame, if any.
        Never raises except `trio.Cancelled`."""
        try:
            await self._run()
        finally:
            self.done = True

    async def _run(self) -> None:
        try:
            with self._end.scope:
                await self._end.guard(self._serve)
        finally:
            if self.session is not None:
                if self._carried is not None:
                    self._carried.leave(self._client, self.session.budgets, trio.current_time())
                self.observer.closed()
                if self._on_close is not None:
                    self._on_close(self.session)
            elif self._carried is not None and self.error_code not in _NOT_THE_CLIENTS:
                # a handshake the client failed (or gave up): what it cost is the client's
                self._carried.charge(self._client, SESSION_OPEN_S, trio.current_time())
        try:
            if self._end.error is not None:
                await self._fail(*self._end.error)
            else:
                self._state.close()
        finally:
            if isinstance(self._transport, Resumable):
                self._transport.end()  # a connection that resumed it is released too

    async def _serve(self) -> None:
        limits = self._limits
        hello = await receive_hello(
            self._transport, self._decoder, self._state, limits.hello_timeout_s
        )
        if (request := self._state.options.resume) is not None:
            await self._resume(request)
            return
        resumable = None
        if limits.resume_window_s and self._sessions is not None:
            frame_bytes = fr.AUDIO_HEADER_BYTES + 2 * fr.frame_samples(hello.sample_rate_hz)
            resumable = Resumable(
                self._transport,
                session_id=self.id,
                subject=self._subject,
                window_s=limits.resume_window_s,
                buffer_bytes=int(limits.resume_buffer_s / 0.020 * frame_bytes) + 65536,
            )
        opened = await accept(
            self._transport,
            hello,
            session_id=self.id,
            state=self._state,
            engines=self._engines,
            limits=limits,
            uplink=self._uplink_services is not None,
            offload=self._offload,
            draining=self._draining,
            resume=resumable.info() if resumable is not None else None,
        )
        # AudioUp bodies are Opus packets from here on (the frames after the Hello included)
        self._decoder.packet_audio = (
            bool(hello.uplink_rate_hz) and self._state.options.codec.uplink == fr.CODEC_OPUS
        )
        if resumable is not None:
            self._transport = resumable  # from here on the session outlives its connection
        session = Session(
            self._transport,
            opened=opened,
            state=self._state,
            decoder=self._decoder,
            end=self._end,
            observer=self.observer,
            pacer=self._pacer,
            limits=self._limits,
            uplink_services=self._uplink_services,
            offload=self._offload,
            synthesis_offload=self._synthesis_offloads.get(opened.engine),
            draining=self._draining,
            budgets=self._carried.start(self._client, trio.current_time())
            if self._carried
            else None,
        )
        self.session = session
        self.observer.opened(opened.engine, opened.voice.name)
        if self._on_open is not None:
            self._on_open(session)
        await session.run()

    async def _resume(self, request: ResumeOptions) -> None:
        """Hand this connection to the session its Hello resumes; return once the session
        gives it up (dropped again, or over). Refusal RESUME_FAILED if it cannot be resumed."""
        found = self._sessions.resumable(request.session_id) if self._sessions else None
        resumable = found.resumable if found is not None else None
        if found is None or resumable is None:
            raise Refusal(fr.ErrorCode.RESUME_FAILED, "no such session to resume (it ended)")
        try:
            resumable.check(request.token, self._subject)
            report = resumable.report(request.received)
            welcome = found.resumed_welcome(report)
            released = await resumable.attach(self._transport, request.received, welcome)
        except ResumeFailed as exc:
            raise Refusal(fr.ErrorCode.RESUME_FAILED, f"cannot resume: {exc}") from None
        self.resumed = found
        found.on_resumed(report)
        if self._on_resumed is not None:
            self._on_resumed(found)
        await released.wait()

    async def _fail(self, code: fr.ErrorCode, message: str) -> None:
        """Send Error and close with the code's close code, in the churn's turn (connections
        that fail together, such as many that sent no Hello, end a few at a time; however long
        the wait for the turn); the send and close give up after `ERROR_SEND_TIMEOUT_S`.
        Cancelled while waiting for the turn, it sends at once (shielded, for that long) and
        then raises; that leaves the socket to the server's nursery."""
        self.observer.failed(code.name, message)
        error = fr.Error(code=code, message=message)
        self._state.send(error)
        cancelled: trio.Cancelled | None = None
        try:
            await self._churn.wait()
        except trio.Cancelled as exc:  # the daemon is going down: no turn to wait for
            cancelled = exc
        try:
            with trio.move_on_after(ERROR_SEND_TIMEOUT_S) as scope:
                scope.shield = True
                try:
                    await self._transport.send_message(encode(error))
                    await self._transport.aclose(code.close_code, message[:120])
                except CLOSED_ERRORS:
                    pass
        finally:
            if cancelled is not None:
                raise cancelled
