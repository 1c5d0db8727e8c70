"""The byte layout of every frame of the duplexd wire protocol (`protocol/SPEC.md`): the fixed
little-endian part of each frame type, its variable-length tail fields, and the lookups the
codec (`duplexd.protocol.codec`) encodes and decodes with. Data only: no I/O, no trio.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any, Final, Literal

from .frames import (
    AUDIO_HEADER_BYTES,
    AUDIO_UP_HEADER_BYTES,
    FLAG_BIT,
    LENGTH_PREFIX_BYTES,
    WORD_MARK_BYTES,
    Audio,
    AudioUp,
    BargeIn,
    BargeInOutcome,
    BargeInReason,
    ErrorCode,
    FrameType,
    GetStats,
    Heard,
    Hello,
    Interrupt,
    Interrupted,
    Pause,
    Paused,
    Ping,
    Played,
    Pong,
    Resume,
    Resumed,
    SpeechStarted,
    SpeechStopped,
    Stats,
    Text,
    Transcript,
    TurnEnd,
    TurnEndBy,
    UtteranceDone,
    UtteranceStarted,
    Welcome,
    Words,
)
from .frames import Error as ErrorFrame

PREFIX: Final = struct.Struct("<I")
HEADER: Final = struct.Struct("<IBB")  # length, type, flags
U16: Final = struct.Struct("<H")
U32: Final = struct.Struct("<I")
AUDIO_HEADER: Final = struct.Struct("<IBBHII")  # length, type, flags, epoch, utterance_id, seq
AUDIO_BODY: Final = struct.Struct("<HII")
END: Final = int(FLAG_BIT)  # plain int: ~ of an IntFlag member would be 0
MIN_AUDIO_LENGTH: Final = AUDIO_HEADER_BYTES - LENGTH_PREFIX_BYTES
assert AUDIO_HEADER.size == AUDIO_HEADER_BYTES
assert HEADER.size + U32.size == AUDIO_UP_HEADER_BYTES

_MAX: Final = {"B": 0xFF, "H": 0xFFFF, "I": 0xFFFF_FFFF, "Q": 0xFFFF_FFFF_FFFF_FFFF}

# Variable-length tail fields, in wire order after the fixed little-endian part:
#   "str16": u16 byte length + UTF-8        "json32": u32 byte length + UTF-8 (JSON text)
#   "utf8":  rest of the body as UTF-8      "pcm":    rest of the body, even byte count
#   "marks": rest of the body as WORD_MARK_BYTES records (u32 start_char, end_char,
#            start_sample, end_sample)
_TailKind = Literal["str16", "json32", "utf8", "pcm", "marks"]
MARK: Final = struct.Struct("<IIII")
assert MARK.size == WORD_MARK_BYTES


@dataclass(frozen=True, slots=True)
class Layout:
    ftype: FrameType
    cls: type[Any]
    fixed: struct.Struct
    names: tuple[str, ...]  # fixed fields, in order
    tail: tuple[tuple[str, _TailKind], ...] = ()
    flag: str | None = None  # bool field carried by flag bit 0x01

    @property
    def int_limits(self) -> tuple[tuple[str, int | None], ...]:
        codes = [c for c in self.fixed.format.lstrip("<") if not c.isdigit()]
        return tuple((n, _MAX.get(c)) for n, c in zip(self.names, codes, strict=True))


def _L(t: FrameType, cls: type[Any], fmt: str, names: str = "", **kw: Any) -> Layout:
    return Layout(t, cls, struct.Struct("<" + fmt), tuple(names.split()), **kw)


LAYOUTS: Final = (
    _L(
        FrameType.HELLO,
        Hello,
        "HHIHI",
        "min_version max_version sample_rate_hz frame_ms uplink_rate_hz",
        tail=(("token", "str16"), ("engine", "str16"), ("voice", "str16"), ("options", "json32")),
    ),
    _L(FrameType.TEXT, Text, "I", "utterance_id", tail=(("text", "utf8"),), flag="end"),
    _L(FrameType.INTERRUPT, Interrupt, ""),
    _L(FrameType.PAUSE, Pause, ""),
    _L(FrameType.RESUME, Resume, ""),
    _L(FrameType.PING, Ping, "Q", "nonce"),
    _L(FrameType.AUDIO_UP, AudioUp, "I", "seq", tail=(("pcm", "pcm"),)),
    _L(FrameType.GET_STATS, GetStats, ""),
    _L(
        FrameType.PLAYED,
        Played,
        "HIQQ",
        "epoch utterance_id samples_played clock_us",
        flag="final",
    ),
    _L(
        FrameType.WELCOME,
        Welcome,
        "H16sIIIIII",
        "version session_id sample_rate_hz frame_samples uplink_rate_hz max_frame_bytes "
        "max_text_bytes max_queued_utterances",
        tail=(("engine", "str16"), ("voice", "str16"), ("info", "json32")),
    ),
    _L(
        FrameType.AUDIO, Audio, "HII", "epoch utterance_id seq", tail=(("pcm", "pcm"),), flag="last"
    ),
    _L(FrameType.UTTERANCE_STARTED, UtteranceStarted, "HI", "epoch utterance_id"),
    _L(
        FrameType.UTTERANCE_DONE,
        UtteranceDone,
        "HIQI",
        "epoch utterance_id samples_sent chars_spoken",
    ),
    _L(
        FrameType.INTERRUPTED,
        Interrupted,
        "HIQII",
        "epoch utterance_id samples_sent chars_spoken cancelled_utterances",
        flag="vad",
    ),
    _L(FrameType.PAUSED, Paused, ""),
    _L(FrameType.RESUMED, Resumed, ""),
    _L(FrameType.PONG, Pong, "QQ", "nonce server_time_ns"),
    _L(FrameType.ERROR, ErrorFrame, "H", "code", tail=(("message", "utf8"),)),
    _L(FrameType.SPEECH_STARTED, SpeechStarted, "Q", "uplink_sample"),
    _L(FrameType.SPEECH_STOPPED, SpeechStopped, "Q", "uplink_sample"),
    _L(
        FrameType.TRANSCRIPT,
        Transcript,
        "QQ",
        "start_sample end_sample",
        tail=(("text", "utf8"),),
        flag="final",
    ),
    _L(FrameType.STATS, Stats, "", tail=(("json", "utf8"),)),
    _L(FrameType.WORDS, Words, "HI", "epoch utterance_id", tail=(("marks", "marks"),)),
    _L(FrameType.HEARD, Heard, "HIQI", "epoch utterance_id samples_played chars_heard"),
    _L(
        FrameType.BARGE_IN,
        BargeIn,
        "BBHIQQ",
        "outcome reason epoch utterance_id samples_sent uplink_sample",
        tail=(("text", "utf8"),),
    ),
    _L(FrameType.TURN_END, TurnEnd, "BQII", "by uplink_sample silence_samples decided_us"),
)
# fixed fields whose values are an enum's members (an unknown value on the wire: MALFORMED)
ENUM_FIELDS: Final[dict[type[Any], tuple[tuple[str, type[enum.IntEnum]], ...]]] = {
    ErrorFrame: (("code", ErrorCode),),
    BargeIn: (("outcome", BargeInOutcome), ("reason", BargeInReason)),
    TurnEnd: (("by", TurnEndBy),),
}
BY_TYPE: Final[dict[int, Layout]] = {int(lay.ftype): lay for lay in LAYOUTS}
BY_CLASS: Final[dict[type[Any], Layout]] = {lay.cls: lay for lay in LAYOUTS}
INT_LIMITS: Final = {lay.cls: lay.int_limits for lay in LAYOUTS}

FRAME_CLASSES: Final[dict[FrameType, type[Any]]] = {lay.ftype: lay.cls for lay in LAYOUTS}
FRAME_TYPES: Final[dict[type[Any], FrameType]] = {lay.cls: lay.ftype for lay in LAYOUTS}
assert set(FRAME_CLASSES) == set(FrameType)
