"""How a connection ends (`SessionEnd`): the first failure recorded wins, and how a task's
failure is reported (the peer's protocol error as that error, a closed connection as nothing,
an engine unavailable for now (its model process went away) as INTERNAL with what to do,
anything else as INTERNAL and logged)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio
from trio_websocket import ConnectionClosed

from ..engines.base import EngineUnavailableError
from ..protocol import frames as fr
from ..protocol.codec import RemoteProtocolError
from .handshake import Refusal

log = logging.getLogger("duplexd.session")
UNAVAILABLE_MESSAGE = (
    "speech synthesis is unavailable for now (its model restarted or did not answer):"
    " open a new session"
)

CLOSED_ERRORS = (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError)


class SessionEnd:
    """How a connection ends: the first failure recorded wins. During the handshake ending
    cancels `scope` (which the connection runs in); once a session is open it calls the
    session's `finish_with` callback instead, which stops its tasks in an order that leaves the
    WebSocket whole for the Error frame. Synchronous; trio thread."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.scope = trio.CancelScope()
        self.error: tuple[fr.ErrorCode, str] | None = None
        self._finish: Callable[[], None] = self.scope.cancel

    def finish_with(self, finish: Callable[[], None]) -> None:
        """From now on, ending calls `finish` (an open session's graceful stop)."""
        self._finish = finish

    def fail(self, code: fr.ErrorCode, message: str) -> None:
        """End with an Error of `code` (unless an earlier failure is already recorded)."""
        if self.error is None:
            self.error = (code, message)
        self._finish()

    def stop(self) -> None:
        """End without an error of our own (the peer closed, or a task finished)."""
        self._finish()

    async def guard(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run `fn`; record how a failure of it is to be reported: the peer's protocol error
        as that error, a closed connection as nothing, anything else as INTERNAL (and logged:
        it is our bug). `trio.Cancelled` passes through. The failure's traceback is let go
        once reported (`forget_frames`)."""
        try:
            await fn()
        except Exception as exc:
            try:
                if isinstance(exc, RemoteProtocolError):
                    self.fail(exc.error_code, exc.message)
                elif isinstance(exc, Refusal):
                    self.fail(exc.code, exc.message)
                elif isinstance(exc, EngineUnavailableError):  # not a bug: no traceback
                    log.warning("session %s: %s", self.tag, exc)
                    self.fail(fr.ErrorCode.INTERNAL, UNAVAILABLE_MESSAGE)
                elif not isinstance(exc, CLOSED_ERRORS):
                    log.exception("session %s failed", self.tag)
                    self.fail(fr.ErrorCode.INTERNAL, "internal server error")
            finally:
                forget_frames(exc)


def forget_frames(exc: BaseException) -> None:
    """Let go of the tracebacks of `exc` and of the exceptions it chains. Something may keep
    the exception after it was handled (the decoder keeps its error, to raise it again), and
    its traceback keeps the frames it went through, whose `self` is the session: a reference
    cycle that only a full collection frees, and the daemon freezes what lives long
    (duplexd/_ops/collector.py), so it would hold the session until a sweep."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        e.__traceback__ = None
        todo += [e.__cause__, e.__context__]
        if isinstance(e, BaseExceptionGroup):
            todo += e.exceptions
