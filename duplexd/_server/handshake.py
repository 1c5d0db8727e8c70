"""A connection's first exchange: Hello in, the checks, Welcome out. Where a byte enters.

`receive_message` is how every client message is read, during the handshake and after it: one
WebSocket message. `receive_hello` decodes only the Hello, then `accept` answers it (a Hello
that resumes a session is answered by `duplexd._server.resume` instead); whatever follows it
in the same message stays in the decoder for the open session, which decodes every message
frame by frame within its budget (`duplexd._server.session`).
`handshake` waits for the Hello (at most `SessionLimits.hello_timeout_s`), lets the protocol
state check it (version, formats, options; the client was authenticated in the WebSocket
upgrade, before any of this), checks the engine and the voice (opened
in a worker thread: a neural voice may load), sends Welcome and returns what the open session
is built from (`Opened`). Every refusal is a `RemoteProtocolError` carrying the error to report.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from .._ops.settings import SessionLimits
from .._version import __version__
from ..engines.base import UnknownVoiceError, Voice, voice_kind
from ..engines.registry import EngineSet
from ..protocol import frames as fr
from ..protocol.codec import Decoder, RemoteProtocolError, encode
from ..protocol.state import ServerProtocolState
from ..protocol.transport import Transport
from .limits import MAX_MESSAGE_BYTES, announced_limits

# How blocking work leaves the event loop: `trio.to_thread.run_sync` in the daemon.
Offload = Callable[..., Awaitable[Any]]

DRAINING_MESSAGE = "the server is shutting down: it takes no new sessions or utterances; reconnect"


class Refusal(Exception):
    """The server ends a session for a reason of its own (not the client's fault): reported
    as an Error frame with `code`, like a protocol error, but never blamed on the peer."""

    def __init__(self, code: fr.ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Opened:
    """What the handshake agreed on; the open session is built from it (the frames that
    followed the Hello in its message are still in the decoder)."""

    session_id: bytes
    hello: fr.Hello
    engine: str
    voice: Voice
    welcome: fr.Welcome

    @property
    def sample_rate_hz(self) -> int:
        return self.hello.sample_rate_hz


async def receive_message(transport: Transport) -> bytes:
    """The client's next message. Raises `RemoteProtocolError`: FRAME_TOO_LARGE for one over
    `MAX_MESSAGE_BYTES` (close 1009, as the WebSocket layer would, but with an Error frame
    first: SPEC.md §2), NOT_BINARY for a text one. Cancellation leaves the message unread."""
    message = await transport.get_message()
    if len(message) > MAX_MESSAGE_BYTES:
        raise RemoteProtocolError(
            fr.ErrorCode.FRAME_TOO_LARGE,
            f"a WebSocket message holds at most {MAX_MESSAGE_BYTES} bytes"
            " (info.limits.max_message_bytes): send the frames in several messages",
        )
    if isinstance(message, str):
        raise RemoteProtocolError(
            fr.ErrorCode.NOT_BINARY,
            "text WebSocket messages are not part of the protocol; send binary frames",
        )
    return message


async def accept(
    transport: Transport,
    hello: fr.Hello,
    *,
    session_id: bytes,
    state: ServerProtocolState,
    engines: EngineSet,
    limits: SessionLimits,
    uplink: bool = True,
    offload: Offload = trio.to_thread.run_sync,
    draining: Callable[[], bool] = lambda: False,
    resume: dict[str, Any] | None = None,
) -> Opened:
    """Check what the (received) Hello asks for, send Welcome; return what was agreed.

    `uplink`: whether this server accepts uplink audio; `draining()`: whether the server is
    shutting down (then GOING_AWAY instead of Welcome); `resume`: what Welcome's
    `info.resume` tells the client (None: the session cannot be resumed). Raises
    `RemoteProtocolError` for the client's fault and `Refusal` for the server's (Welcome not
    sent). Cancellation leaves nothing behind but a voice the engine may have opened (engines
    own their voices)."""
    if hello.uplink_rate_hz and not uplink:
        raise RemoteProtocolError(fr.ErrorCode.UNSUPPORTED_FORMAT, "this server takes no uplink")
    try:
        engine = engines.get(hello.engine)
    except LookupError as exc:
        raise RemoteProtocolError(fr.ErrorCode.UNKNOWN_ENGINE, str(exc.args[0])) from None
    try:
        voice: Voice = await offload(engine.open_voice, hello.voice or engine.default_voice)
    except UnknownVoiceError as exc:
        raise RemoteProtocolError(fr.ErrorCode.UNKNOWN_VOICE, str(exc)) from None
    if draining():
        raise Refusal(fr.ErrorCode.GOING_AWAY, DRAINING_MESSAGE)
    timed = voice_kind(voice).timed
    info = {
        "server": f"duplexd/{__version__}",
        "engines": engines.describe(),
        "preroll_ms": 0,
        "limits": announced_limits(limits),
        # how exact chars_spoken is (SPEC.md §5.4): to the word, or to the piece
        "word_timing": "word" if timed else "piece",
        "words": timed and state.options.downlink.words,  # WORDS frames will come
        "codec": state.options.codec.describe(),  # each direction's audio: pcm or opus
    }
    if resume is not None:
        info["resume"] = resume
    welcome = fr.Welcome(
        version=state.version,
        session_id=session_id,
        sample_rate_hz=hello.sample_rate_hz,
        frame_samples=fr.frame_samples(hello.sample_rate_hz),
        uplink_rate_hz=hello.uplink_rate_hz,
        max_frame_bytes=limits.max_frame_bytes,
        max_text_bytes=limits.max_text_bytes,
        max_queued_utterances=limits.max_queued_utterances,
        engine=engine.name,
        voice=voice.name,
        info=json.dumps(info, separators=(",", ":")),
    )
    state.send(welcome)
    await transport.send_message(encode(welcome))
    return Opened(session_id, hello, engine.name, voice, welcome)


async def receive_hello(
    transport: Transport, decoder: Decoder, state: ServerProtocolState, timeout_s: float
) -> fr.Hello:
    """The first frame, which must be the Hello; only it is decoded here (the rest of its
    message stays in `decoder`). Raises `RemoteProtocolError` (the state checked the Hello
    whole, UNEXPECTED_FRAME past `timeout_s`). Cancellation leaves nothing behind."""
    with trio.move_on_after(timeout_s):
        while True:
            decoder.receive_data(await receive_message(transport))
            frame = decoder.next_frame()
            if frame is not None:
                return state.receive_hello(frame)
            decoder.check_boundary()  # an empty message is fine; half a frame is not
    raise RemoteProtocolError(fr.ErrorCode.UNEXPECTED_FRAME, f"no Hello within {timeout_s:g} s")
