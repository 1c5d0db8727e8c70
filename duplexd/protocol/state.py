"""The server's side of a session's rules, both directions (protocol/SPEC.md §7), sans-I/O.

`ServerProtocolState` is the one place that knows which frame is legal when, in the style of
wsproto's `Connection`: the server calls `receive(frame)` for every decoded client frame before
acting on it, and `send(frame)` for every frame it is about to send, so it can never get out of
step with its own rules. A rule the client broke raises `RemoteProtocolError` with the
`ErrorCode` to report (the server then sends `Error` and closes with its close code); a frame
the server must not send now raises `LocalProtocolError` (a bug of ours). It does no I/O and
decides nothing about what to play.

The Hello is checked whole when it arrives: version, audio formats and `options`
(`duplexd.protocol.options`), so `hello`, `version` and `options` are known from then on.

Utterance ids: a Text with an id greater than every earlier id starts a new utterance (only
once the previous utterance's text has ended); a Text with the newest id appends to it until
END; Text for the newest id after its END is TEXT_AFTER_END; zero (always, also after an
interrupt) or any older id is BAD_UTTERANCE_ID. An interrupt (the client's `Interrupt`, or the
server's own `barge_in()`) ends and drops every active utterance; Text for an id up to the
greatest one it cancelled is then ignored (the client may still be streaming it). An
utterance stops being active when its `UtteranceDone` is sent.

AUDIO frames go from the synthesis ring to the socket without passing through `send` (that is
the per-frame hot path); the frames sent around them (UtteranceStarted, UtteranceDone,
Interrupted...) do.
"""

from __future__ import annotations

import enum

from .codec import LocalProtocolError, RemoteProtocolError
from .frames import (
    CODEC_OPUS,
    FRAME_MS,
    OPUS_RATES_HZ,
    PROTOCOL_VERSION,
    SUPPORTED_SAMPLE_RATES_HZ,
    SUPPORTED_UPLINK_RATES_HZ,
    AudioUp,
    BargeIn,
    Error,
    ErrorCode,
    GetStats,
    Hello,
    Interrupt,
    Pause,
    Ping,
    Played,
    Resume,
    SpeechStarted,
    SpeechStopped,
    Text,
    Transcript,
    TurnEnd,
    UtteranceDone,
    Welcome,
)
from .options import SessionOptions, parse_options

__all__ = [
    "Phase",
    "ServerProtocolState",
    "check_audio_format",
    "check_codecs",
    "negotiate_version",
]


class Phase(enum.Enum):
    AWAIT_HELLO = "await_hello"
    OPEN = "open"
    CLOSED = "closed"


def negotiate_version(
    hello: Hello, *, min_supported: int = PROTOCOL_VERSION, max_supported: int = PROTOCOL_VERSION
) -> int:
    """The highest version in both ranges, else `UNSUPPORTED_VERSION`."""
    version = min(hello.max_version, max_supported)
    if version < max(hello.min_version, min_supported):
        raise RemoteProtocolError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"client speaks {hello.min_version}..{hello.max_version},"
            f" server {min_supported}..{max_supported}",
        )
    return version


def check_audio_format(hello: Hello) -> None:
    """Raise `UNSUPPORTED_FORMAT` unless the requested formats are ones v1 defines."""
    if hello.sample_rate_hz not in SUPPORTED_SAMPLE_RATES_HZ:
        raise RemoteProtocolError(
            ErrorCode.UNSUPPORTED_FORMAT, f"sample rate {hello.sample_rate_hz} Hz"
        )
    if hello.frame_ms != FRAME_MS:
        raise RemoteProtocolError(ErrorCode.UNSUPPORTED_FORMAT, f"frame of {hello.frame_ms} ms")
    if hello.uplink_rate_hz and hello.uplink_rate_hz not in SUPPORTED_UPLINK_RATES_HZ:
        raise RemoteProtocolError(
            ErrorCode.UNSUPPORTED_FORMAT, f"uplink rate {hello.uplink_rate_hz} Hz"
        )


def check_codecs(hello: Hello, options: SessionOptions) -> None:
    """Raise `UNSUPPORTED_FORMAT` when Opus is asked for a direction whose rate Opus does not
    code (SPEC §4.6.3: 8, 12, 16, 24 or 48 kHz)."""
    codec = options.codec
    for direction, asked, rate in (
        ("downlink", codec.downlink, hello.sample_rate_hz),
        ("uplink", codec.uplink, hello.uplink_rate_hz),
    ):
        if asked == CODEC_OPUS and rate and rate not in OPUS_RATES_HZ:
            rates = ", ".join(f"{r}" for r in OPUS_RATES_HZ)
            raise RemoteProtocolError(
                ErrorCode.UNSUPPORTED_FORMAT,
                f"Opus {direction} at {rate} Hz: Opus codes {rates} Hz only;"
                " ask for one of those or for pcm",
            )


_OPEN_ANY = (Pause, Resume, Ping, GetStats, Played)
_UPLINK_EVENTS = (SpeechStarted, SpeechStopped, Transcript, BargeIn, TurnEnd)


class ServerProtocolState:
    """Which frames are legal now, in both directions, and the utterance-id bookkeeping.

    `receive(frame)` every decoded client frame before acting on it; `send(frame)` every
    non-audio frame before sending it (Welcome opens the session, Error closes it,
    UtteranceDone retires its utterance); `barge_in()` when the server interrupts on its own;
    `close()` when the connection ends without an Error.
    """

    def __init__(self, *, max_text_bytes: int, max_queued_utterances: int) -> None:
        if max_text_bytes < 1 or max_queued_utterances < 1:
            raise ValueError("limits must be positive")
        self.max_text_bytes = max_text_bytes
        self.max_queued_utterances = max_queued_utterances
        self.phase = Phase.AWAIT_HELLO
        self.hello: Hello | None = None  # the client's Hello, once received
        self.version = 0  # the negotiated protocol version, once the Hello is received
        self.options = SessionOptions()  # Hello.options, checked (defaults until the Hello)
        self.uplink = False  # whether AudioUp was negotiated (Welcome.uplink_rate_hz != 0)
        self._last_id = 0  # greatest utterance id seen
        self._open = False  # whether the text of utterance _last_id is still open
        self._text_bytes = 0  # text bytes of utterance _last_id so far
        self._active: list[int] = []  # started, not done nor cancelled; in order
        self._cancelled_upto = 0  # greatest utterance id cancelled by an interrupt

    @property
    def active_utterances(self) -> tuple[int, ...]:
        """Ids of the utterances queued or playing (an interrupt cancels all of them)."""
        return tuple(self._active)

    @property
    def open_utterance(self) -> int | None:
        """The utterance whose text is still streaming in, if any."""
        return self._last_id if self._open else None

    # ------------------------------------------------------------------ client -> server

    def receive(self, frame: object) -> bool:
        """Check `frame` (from the client) against the rules and update the state.

        Returns False for a frame to ignore (Text of an interrupted utterance), else True.
        """
        if self.phase is Phase.CLOSED:
            raise _unexpected(frame, "the session is closed")
        if self.phase is Phase.AWAIT_HELLO:
            self.receive_hello(frame)
            return True
        if isinstance(frame, Text):
            if frame.utterance_id == 0:  # never valid, also after an interrupt (SPEC §6.2)
                raise RemoteProtocolError(
                    ErrorCode.BAD_UTTERANCE_ID, "utterance id 0 is never valid: ids start at 1"
                )
            if frame.utterance_id <= self._cancelled_upto:
                return False
            self._receive_text(frame)
        elif isinstance(frame, Interrupt):
            self._cancel_all()
        elif isinstance(frame, AudioUp):
            if not self.uplink:
                raise _unexpected(frame, "no uplink was negotiated")
        elif not isinstance(frame, _OPEN_ANY):
            raise _unexpected(frame, "not legal in an open session")
        return True

    def receive_hello(self, frame: object) -> Hello:
        """`receive` the session's first frame, which must be a Hello: checks it whole (version,
        formats, options) and returns it."""
        if not isinstance(frame, Hello) or self.hello is not None or self.phase is Phase.CLOSED:
            raise _unexpected(frame, "the first frame must be Hello, and only one")
        version = negotiate_version(frame)
        check_audio_format(frame)
        self.options = parse_options(frame.options)
        check_codecs(frame, self.options)
        self.version = version
        self.hello = frame
        return frame

    def _receive_text(self, frame: Text) -> None:
        uid = frame.utterance_id
        if uid > self._last_id:
            if self._open:
                raise RemoteProtocolError(
                    ErrorCode.BAD_UTTERANCE_ID,
                    f"utterance {uid} started while the text of {self._last_id} is open",
                )
            if len(self._active) >= self.max_queued_utterances:
                raise RemoteProtocolError(
                    ErrorCode.LIMIT_EXCEEDED,
                    f"more than {self.max_queued_utterances} queued utterances",
                )
            self._last_id, self._open, self._text_bytes = uid, True, 0
            self._active.append(uid)
        elif uid == self._last_id:
            if not self._open:
                raise RemoteProtocolError(
                    ErrorCode.TEXT_AFTER_END, f"text for utterance {uid} after its end"
                )
        else:
            raise RemoteProtocolError(
                ErrorCode.BAD_UTTERANCE_ID,
                f"utterance id {uid} is neither new (> {self._last_id}) nor the open one",
            )
        self._text_bytes += len(frame.text.encode("utf-8"))
        if self._text_bytes > self.max_text_bytes:
            raise RemoteProtocolError(
                ErrorCode.LIMIT_EXCEEDED,
                f"utterance {uid} has more than {self.max_text_bytes} bytes of text",
            )
        if frame.end:
            self._open = False

    def _cancel_all(self) -> None:
        if self._active:
            self._cancelled_upto = self._active[-1]
        self._open = False
        self._active.clear()

    # ------------------------------------------------------------------ the server's own moves

    def barge_in(self) -> bool:
        """The server interrupts on its own (the user started speaking): like a client's
        Interrupt. Returns False, changing nothing, when no utterance is active."""
        if self.phase is not Phase.OPEN:
            raise LocalProtocolError(ErrorCode.INTERNAL, f"barge-in in phase {self.phase.name}")
        if not self._active:
            return False
        self._cancel_all()
        return True

    def send(self, frame: object) -> None:
        """Check a frame the server is about to send; raises `LocalProtocolError` if it must
        not be sent now. Welcome opens the session, Error closes it, UtteranceDone retires its
        utterance."""
        phase = self.phase
        if phase is Phase.CLOSED:
            raise _illegal(frame, "the session is closed")
        if isinstance(frame, Error):
            self.close()
        elif isinstance(frame, Welcome):
            if phase is not Phase.AWAIT_HELLO or self.hello is None:
                raise _illegal(frame, "only once, in answer to a Hello")
            if frame.uplink_rate_hz not in (0, self.hello.uplink_rate_hz):
                raise _illegal(frame, "uplink rate the client did not ask for")
            self.phase = Phase.OPEN
            self.uplink = bool(frame.uplink_rate_hz)
        elif phase is not Phase.OPEN or _is_client(frame):
            raise _illegal(frame, f"not a frame to send in phase {phase.name}")
        elif isinstance(frame, UtteranceDone):
            if frame.utterance_id in self._active:
                self._active.remove(frame.utterance_id)
        elif isinstance(frame, _UPLINK_EVENTS) and not self.uplink:
            raise _illegal(frame, "no uplink was negotiated")

    def close(self) -> None:
        """The session ended (after an Error, or the connection closed)."""
        self.phase = Phase.CLOSED
        self._active.clear()
        self._open = False


def _is_client(frame: object) -> bool:
    return isinstance(
        frame, Hello | Text | Interrupt | Pause | Resume | Ping | AudioUp | GetStats | Played
    )


def _unexpected(frame: object, why: str) -> RemoteProtocolError:
    return RemoteProtocolError(ErrorCode.UNEXPECTED_FRAME, f"{type(frame).__name__}: {why}")


def _illegal(frame: object, why: str) -> LocalProtocolError:
    return LocalProtocolError(ErrorCode.INTERNAL, f"sending {type(frame).__name__}: {why}")
