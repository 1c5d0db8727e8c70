"""Sans-I/O session rules the server applies to decoded client frames (protocol/SPEC.md §7).

`ServerProtocolState` knows which client frames are legal when and tracks utterance ids; it
neither does I/O nor decides what to play. A rule broken raises `RemoteProtocolError` with the
`ErrorCode` to report (the server then sends `Error` and closes with its close code).

Utterance ids: a Text with an id greater than every earlier id starts a new utterance (only
once the previous utterance's text has ended); a Text with the newest id appends to it until
END; Text for the newest id after its END is TEXT_AFTER_END; zero or any older id is
BAD_UTTERANCE_ID. An Interrupt ends and drops every active utterance; Text for an id up to the
greatest one it cancelled is then ignored (the client may still be streaming it).
"""

from __future__ import annotations

import enum
import json

from .codec import RemoteProtocolError
from .frames import (
    FRAME_MS,
    PROTOCOL_VERSION,
    SUPPORTED_SAMPLE_RATES_HZ,
    SUPPORTED_UPLINK_RATES_HZ,
    AudioUp,
    ErrorCode,
    GetStats,
    Hello,
    Interrupt,
    Pause,
    Ping,
    Resume,
    Text,
)

__all__ = [
    "Phase",
    "ServerProtocolState",
    "check_audio_format",
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


class ServerProtocolState:
    """Which client frames are legal now, and the utterance-id bookkeeping.

    Call `receive(frame)` for every decoded client frame before acting on it,
    `accept_hello()` once the server has sent Welcome, `utterance_finished(uid)` when an
    utterance has played out (its UtteranceDone was sent), and `close()` when the session ends.
    """

    def __init__(self, *, max_text_bytes: int, max_queued_utterances: int) -> None:
        if max_text_bytes < 1 or max_queued_utterances < 1:
            raise ValueError("limits must be positive")
        self.max_text_bytes = max_text_bytes
        self.max_queued_utterances = max_queued_utterances
        self.phase = Phase.AWAIT_HELLO
        self.uplink = False
        self._hello_seen = False
        self._last_id = 0  # greatest utterance id seen
        self._open = False  # whether the text of utterance _last_id is still open
        self._text_bytes = 0  # text bytes of utterance _last_id so far
        self._active: list[int] = []  # started, not finished nor cancelled; in order
        self._cancelled_upto = 0  # greatest utterance id cancelled by an Interrupt

    @property
    def active_utterances(self) -> tuple[int, ...]:
        """Ids of the utterances queued or playing (an Interrupt cancels all of them)."""
        return tuple(self._active)

    @property
    def open_utterance(self) -> int | None:
        """The utterance whose text is still streaming in, if any."""
        return self._last_id if self._open else None

    def receive(self, frame: object) -> bool:
        """Check `frame` (from the client) against the rules and update the state.

        Returns False for a frame to ignore (Text of an interrupted utterance), else True.
        """
        if self.phase is Phase.CLOSED:
            raise _unexpected(frame, "the session is closed")
        if self.phase is Phase.AWAIT_HELLO:
            if not isinstance(frame, Hello) or self._hello_seen:
                raise _unexpected(frame, "the first frame must be Hello, and only one")
            _check_options(frame.options)
            self._hello_seen = True
            return True
        if isinstance(frame, Text):
            if 0 < frame.utterance_id <= self._cancelled_upto:
                return False
            self._receive_text(frame)
        elif isinstance(frame, Interrupt):
            if self._active:
                self._cancelled_upto = self._active[-1]
            self._open = False
            self._active.clear()
        elif isinstance(frame, AudioUp):
            if not self.uplink:
                raise _unexpected(frame, "no uplink was negotiated")
        elif not isinstance(frame, Pause | Resume | Ping | GetStats):
            raise _unexpected(frame, "not legal in an open session")
        return True

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
        elif uid == self._last_id and uid != 0:
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

    def accept_hello(self, *, uplink: bool = False) -> None:
        """The server accepted the Hello (sent Welcome); `uplink`: AudioUp was negotiated."""
        if self.phase is not Phase.AWAIT_HELLO or not self._hello_seen:
            raise RuntimeError(f"accept_hello() in phase {self.phase.name}")
        self.phase = Phase.OPEN
        self.uplink = uplink

    def utterance_finished(self, utterance_id: int) -> None:
        """The utterance played out; ids no longer active (e.g. cancelled) are ignored."""
        if utterance_id in self._active:
            self._active.remove(utterance_id)

    def close(self) -> None:
        self.phase = Phase.CLOSED
        self._active.clear()
        self._open = False


def _unexpected(frame: object, why: str) -> RemoteProtocolError:
    return RemoteProtocolError(ErrorCode.UNEXPECTED_FRAME, f"{type(frame).__name__}: {why}")


def _check_options(options: str) -> None:
    if not options:
        return
    try:
        value = json.loads(options)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise RemoteProtocolError(ErrorCode.BAD_OPTIONS, "options must be a JSON object")
