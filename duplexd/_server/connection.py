"""One accepted connection, from its Hello to its close: the handshake, then the open session.

`Connection.run()` never raises (but `trio.Cancelled`): whatever went wrong is answered with
an Error frame and a close with that error's close code (a protocol error of the peer as
itself; an internal failure as INTERNAL and 1011), and nothing one connection does touches
another's state.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import trio

from .._downlink.pacer import Pacer
from .._ops.metrics import SessionObserver
from .._ops.settings import SessionLimits
from .._uplink.uplink import UplinkServices
from ..engines.registry import EngineSet
from ..protocol import frames as fr
from ..protocol.codec import Decoder, encode
from ..protocol.state import Phase, ServerProtocolState
from ..protocol.transport import Transport
from .handshake import Offload, handshake
from .session import CLOSED_ERRORS, Session, SessionEnd

ERROR_SEND_TIMEOUT_S = 1.0  # after a failure: how long the Error frame and close may take


class Connection:
    """One connection. `run()` it; `session` is the open `Session` once the handshake is done.

    `on_open(session)` / `on_close(session)` run (trio thread) when the session opens and when
    it has ended, before the Error frame (if any) is sent.
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
        on_open: Callable[[Session], None] | None = None,
        on_close: Callable[[Session], None] | None = None,
        draining: Callable[[], bool] = lambda: False,
        client: str = "",
        subject: str = "",
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
        self._offload = offload
        self._on_open = on_open
        self._on_close = on_close
        self._draining = draining
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
            with self._end.scope:
                await self._end.guard(self._serve)
        finally:
            if self.session is not None:
                self.observer.closed()
                if self._on_close is not None:
                    self._on_close(self.session)
        if self._end.error is not None:
            await self._fail(*self._end.error)
        else:
            self._state.close()

    async def _serve(self) -> None:
        opened = await handshake(
            self._transport,
            session_id=self.id,
            state=self._state,
            decoder=self._decoder,
            engines=self._engines,
            limits=self._limits,
            uplink=self._uplink_services is not None,
            offload=self._offload,
            draining=self._draining,
        )
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
            draining=self._draining,
        )
        self.session = session
        self.observer.opened(opened.engine, opened.voice.name)
        if self._on_open is not None:
            self._on_open(session)
        await session.run()

    async def _fail(self, code: fr.ErrorCode, message: str) -> None:
        """Send Error and close with the code's close code; gives up after
        `ERROR_SEND_TIMEOUT_S`. Cancellation (shielded for that long) leaves the socket to
        the server's nursery."""
        self.observer.failed(code.name, message)
        error = fr.Error(code=code, message=message)
        self._state.send(error)
        with trio.move_on_after(ERROR_SEND_TIMEOUT_S) as scope:
            scope.shield = True
            try:
                await self._transport.send_message(encode(error))
                await self._transport.aclose(code.close_code, message[:120])
            except CLOSED_ERRORS:
                pass
