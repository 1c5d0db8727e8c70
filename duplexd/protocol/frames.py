"""Frame types of the duplexd wire protocol (version 1).

These frozen dataclasses are the events of the sans-I/O codec (`duplexd.protocol.codec`): bytes in,
frames out, and back. The normative description of their encoding is `protocol/SPEC.md`;
this module is its single source of truth in Python.

Every frame on the wire is::

    u32 length   (little-endian; bytes that follow: type + flags + body)
    u8  type
    u8  flags
    ... body (length - 2 bytes)

An audio frame's body starts with ``u16 epoch, u32 utterance_id, u32 seq`` so its whole header
is 16 bytes (`AUDIO_HEADER_BYTES`) and the PCM follows.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

PROTOCOL_VERSION: Final = 1
SUBPROTOCOL: Final = "duplexd.v1"
WS_PATH: Final = "/v1"

LENGTH_PREFIX_BYTES: Final = 4
FRAME_HEADER_BYTES: Final = 6  # length prefix + type + flags
AUDIO_HEADER_BYTES: Final = 16  # frame header + epoch(2) + utterance_id(4) + seq(4)
AUDIO_UP_HEADER_BYTES: Final = 10  # frame header + seq(4)
MAX_FRAME_BYTES: Final = 65536  # default and hard ceiling for a whole frame, prefix included

FRAME_MS: Final = 20
SAMPLE_RATE_HZ: Final = 48_000
SUPPORTED_SAMPLE_RATES_HZ: Final = (16_000, 24_000, 48_000)
SUPPORTED_UPLINK_RATES_HZ: Final = (16_000, 48_000)
BYTES_PER_SAMPLE: Final = 2  # s16le mono
# Hello.options "codec" (SPEC §4.6.3): the audio of a direction as s16le PCM (the default) or
# as one raw 20 ms Opus packet per frame; Opus only at the rates it codes
CODEC_PCM: Final = "pcm"
CODEC_OPUS: Final = "opus"
OPUS_RATES_HZ: Final = (8_000, 12_000, 16_000, 24_000, 48_000)


def frame_samples(sample_rate_hz: int, frame_ms: int = FRAME_MS) -> int:
    """Samples in one audio frame: 960 at 48 kHz and 20 ms."""
    return sample_rate_hz * frame_ms // 1000


class FrameType(enum.IntEnum):
    """Type byte. 0x00-0x7F client to server, 0x80-0xFF server to client.

    Bit 0x40 marks an *optional* type: a receiver that does not know it skips it. Any other
    unknown type is a protocol error (`ErrorCode.UNKNOWN_TYPE`).
    """

    # client -> server
    HELLO = 0x01
    TEXT = 0x02
    INTERRUPT = 0x03
    PAUSE = 0x04
    RESUME = 0x05
    PING = 0x06
    AUDIO_UP = 0x07
    GET_STATS = 0x41  # optional
    PLAYED = 0x42  # optional
    # server -> client
    WELCOME = 0x80
    AUDIO = 0x81
    UTTERANCE_STARTED = 0x82
    UTTERANCE_DONE = 0x83
    INTERRUPTED = 0x84
    PAUSED = 0x85
    RESUMED = 0x86
    PONG = 0x87
    ERROR = 0x88
    SPEECH_STARTED = 0x89
    SPEECH_STOPPED = 0x8A
    TRANSCRIPT = 0x8B
    STATS = 0xC1  # optional
    WORDS = 0xC2  # optional
    HEARD = 0xC3  # optional
    BARGE_IN = 0xC4  # optional
    TURN_END = 0xC5  # optional

    @property
    def optional(self) -> bool:
        return bool(self & 0x40)

    @property
    def from_client(self) -> bool:
        return self < 0x80


OPTIONAL_TYPE_BIT: Final = 0x40


FLAG_BIT: Final = 0x01  # the only flag bit v1 defines; its meaning depends on the frame type


class TextFlags(enum.IntFlag):
    END = FLAG_BIT  # this chunk ends the utterance's text


class AudioFlags(enum.IntFlag):
    END = FLAG_BIT  # the last audio frame of the utterance


class InterruptedFlags(enum.IntFlag):
    VAD = FLAG_BIT  # the server barged in itself (voice activity on the uplink)


class PlayedFlags(enum.IntFlag):
    FINAL = FLAG_BIT  # the utterance will play no more (it ended, or was flushed)


class TranscriptFlags(enum.IntFlag):
    FINAL = FLAG_BIT  # a final (not partial) result


class BargeInOutcome(enum.IntEnum):
    """What a soft barge-in (SPEC.md §5.12) did: held the agent's audio, let it go on, or cut it."""

    HELD = 0  # the user made a sound: the audio stopped, its place kept
    RESUMED = 1  # it was a backchannel or a noise: the audio went on where it stopped
    COMMITTED = 2  # it was a real interruption: INTERRUPTED follows


class BargeInReason(enum.IntEnum):
    """Why a soft barge-in was decided as it was (0 while held)."""

    ONSET = 0  # HELD: the user started making a sound
    TOO_SHORT = 1  # RESUMED: the sound was shorter than `vad.soft_min_speech_ms`
    NO_WORDS = 2  # RESUMED: the transcriber heard no words in it (a cough, a breath, a laugh)
    BACKCHANNEL = 3  # RESUMED: every word is in `vad.backchannels` ("mhm", "yeah", "okay")
    WORDS = 4  # COMMITTED: other words were said
    LONG = 5  # COMMITTED: the user spoke longer than `vad.soft_max_speech_ms`
    TIMEOUT = 6  # COMMITTED: no decision within `vad.soft_window_ms`
    UNHEARD = 7  # COMMITTED: no transcripts in this session to tell words from backchannels


class TurnEndBy(enum.IntEnum):
    """What ended a turn (SPEC.md §5.13)."""

    SILENCE = 0  # a fixed end: `vad.min_silence_ms` of silence (no turn model)
    MODEL = 1  # the turn model found the utterance complete
    WORDS = 2  # the transcript did: Whisper was sure the sentence ended there
    MAX_SILENCE = 3  # `vad.max_silence_ms` of silence, whatever was said
    FORGIVEN = 4  # a soft barge-in's sound was forgiven: it is a turn of its own


class ErrorCode(enum.IntEnum):
    """Error codes carried by `Error` frames; `close_code` is the WebSocket close code to use."""

    MALFORMED = 1
    FRAME_TOO_LARGE = 2
    UNKNOWN_TYPE = 3
    UNEXPECTED_FRAME = 4
    UNSUPPORTED_VERSION = 5
    UNSUPPORTED_FORMAT = 6
    UNKNOWN_ENGINE = 7
    UNKNOWN_VOICE = 8
    AUTH_FAILED = 9
    LIMIT_EXCEEDED = 10
    TEXT_AFTER_END = 11
    BAD_UTTERANCE_ID = 12
    NOT_BINARY = 13
    SLOW_CONSUMER = 14
    INTERNAL = 15
    GOING_AWAY = 16
    BAD_OPTIONS = 17
    TOO_MANY_REQUESTS = 18
    RESUME_FAILED = 19

    @property
    def close_code(self) -> int:
        """The WebSocket close code that follows an Error frame of this code (every v1 error
        ends the session)."""
        return _CLOSE_CODES[self]


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    # application range 4000-4999
    UNSUPPORTED = 4000  # version, format, engine or voice not available
    LIMIT = 4001  # a configured limit was exceeded
    SLOW_CONSUMER = 4002
    RESUME_FAILED = 4003  # the session to resume is gone (or the resume token is wrong)


_CLOSE_CODES: Final = {
    ErrorCode.MALFORMED: CloseCode.PROTOCOL_ERROR,
    ErrorCode.FRAME_TOO_LARGE: CloseCode.MESSAGE_TOO_BIG,
    ErrorCode.UNKNOWN_TYPE: CloseCode.PROTOCOL_ERROR,
    ErrorCode.UNEXPECTED_FRAME: CloseCode.PROTOCOL_ERROR,
    ErrorCode.UNSUPPORTED_VERSION: CloseCode.UNSUPPORTED,
    ErrorCode.UNSUPPORTED_FORMAT: CloseCode.UNSUPPORTED,
    ErrorCode.UNKNOWN_ENGINE: CloseCode.UNSUPPORTED,
    ErrorCode.UNKNOWN_VOICE: CloseCode.UNSUPPORTED,
    ErrorCode.AUTH_FAILED: CloseCode.POLICY_VIOLATION,
    ErrorCode.LIMIT_EXCEEDED: CloseCode.LIMIT,
    ErrorCode.TEXT_AFTER_END: CloseCode.PROTOCOL_ERROR,
    ErrorCode.BAD_UTTERANCE_ID: CloseCode.PROTOCOL_ERROR,
    ErrorCode.NOT_BINARY: CloseCode.UNSUPPORTED_DATA,
    ErrorCode.SLOW_CONSUMER: CloseCode.SLOW_CONSUMER,
    ErrorCode.INTERNAL: CloseCode.INTERNAL_ERROR,
    ErrorCode.GOING_AWAY: CloseCode.GOING_AWAY,
    ErrorCode.BAD_OPTIONS: CloseCode.PROTOCOL_ERROR,
    ErrorCode.TOO_MANY_REQUESTS: CloseCode.LIMIT,
    ErrorCode.RESUME_FAILED: CloseCode.RESUME_FAILED,
}


# --------------------------------------------------------------------------- client -> server


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame of a session. `options` is a JSON object text ("" for none)."""

    min_version: int = PROTOCOL_VERSION
    max_version: int = PROTOCOL_VERSION
    sample_rate_hz: int = SAMPLE_RATE_HZ
    frame_ms: int = FRAME_MS
    uplink_rate_hz: int = 0  # 0: no uplink audio
    token: str = ""
    engine: str = ""  # "": the server's default
    voice: str = ""  # "": the engine's default
    options: str = ""


@dataclass(frozen=True, slots=True)
class Text:
    """A chunk of an utterance's text; `end` closes the utterance's text."""

    utterance_id: int
    text: str
    end: bool = False


@dataclass(frozen=True, slots=True)
class Interrupt:
    """Stop the playing utterance and drop every queued one."""


@dataclass(frozen=True, slots=True)
class Pause:
    pass


@dataclass(frozen=True, slots=True)
class Resume:
    pass


@dataclass(frozen=True, slots=True)
class Ping:
    nonce: int  # u64, echoed in Pong


@dataclass(frozen=True, slots=True)
class AudioUp:
    """One uplink (microphone) frame: s16le mono at the negotiated uplink rate."""

    seq: int
    pcm: bytes


@dataclass(frozen=True, slots=True)
class GetStats:
    pass


@dataclass(frozen=True, slots=True)
class Played:
    """Optional frame: how much of an utterance reached the client's audio output (SPEC.md
    §4.8): `samples_played` from its first sample, at the downlink rate, the last of them
    played at `clock_us` of the client's audio clock; `final`: it will play no more."""

    epoch: int
    utterance_id: int
    samples_played: int
    clock_us: int
    final: bool = False


# --------------------------------------------------------------------------- server -> client


@dataclass(frozen=True, slots=True)
class Welcome:
    """Answer to Hello. `info` is a JSON object text (engines, voices, server name...)."""

    version: int
    session_id: bytes  # 16 bytes
    sample_rate_hz: int
    frame_samples: int
    uplink_rate_hz: int
    max_frame_bytes: int
    max_text_bytes: int  # per utterance
    max_queued_utterances: int
    engine: str
    voice: str
    info: str = ""


@dataclass(frozen=True, slots=True)
class Audio:
    """One downlink audio frame of exactly `frame_samples` s16le samples (the last is padded)."""

    epoch: int
    utterance_id: int
    seq: int  # per utterance, from 0; sample offset in the utterance = seq * frame_samples
    pcm: bytes
    last: bool = False


@dataclass(frozen=True, slots=True)
class UtteranceStarted:
    epoch: int
    utterance_id: int


@dataclass(frozen=True, slots=True)
class UtteranceDone:
    epoch: int
    utterance_id: int
    samples_sent: int
    chars_spoken: int


@dataclass(frozen=True, slots=True)
class Interrupted:
    """Sent once per Interrupt. `epoch` is the new epoch: audio of any other epoch is stale.

    `utterance_id` is the utterance that was playing (0 if none), `samples_sent` how many of
    its samples were sent, `chars_spoken` how many characters of its text were fully spoken.
    `vad`: the server interrupted on its own, because the user started speaking (flag 0x01).
    """

    epoch: int
    utterance_id: int
    samples_sent: int
    chars_spoken: int
    cancelled_utterances: int
    vad: bool = False


@dataclass(frozen=True, slots=True)
class Paused:
    pass


@dataclass(frozen=True, slots=True)
class Resumed:
    pass


@dataclass(frozen=True, slots=True)
class Pong:
    nonce: int
    server_time_ns: int


@dataclass(frozen=True, slots=True)
class Error:
    code: ErrorCode
    message: str


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    uplink_sample: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    uplink_sample: int


@dataclass(frozen=True, slots=True)
class Transcript:
    start_sample: int
    end_sample: int
    text: str
    final: bool = True


@dataclass(frozen=True, slots=True)
class Stats:
    """Optional frame: the server's counters for this session as a JSON object text."""

    json: str


WORD_MARK_BYTES: Final = 16  # one Words mark: four u32


@dataclass(frozen=True, slots=True)
class WordMark:
    """Where one word of an utterance is spoken: characters [start_char, end_char) of its
    text (the word and any punctuation attached to it) and samples [start_sample,
    end_sample) of its audio (at the session's rate, from the utterance's first sample)."""

    start_char: int
    end_char: int
    start_sample: int
    end_sample: int


@dataclass(frozen=True, slots=True)
class Words:
    """Optional frame: the marks of an utterance's words whose audio starts in the AUDIO
    frame that follows it (SPEC.md §5.10); sent only when the client asked for them."""

    epoch: int
    utterance_id: int
    marks: tuple[WordMark, ...]


@dataclass(frozen=True, slots=True)
class Heard:
    """Optional frame: the answer to a final Played (SPEC.md §5.11): the characters of the
    utterance's text whose audio was played whole."""

    epoch: int
    utterance_id: int
    samples_played: int
    chars_heard: int


@dataclass(frozen=True, slots=True)
class BargeIn:
    """Optional frame, sent only when soft barge-in was asked (SPEC.md §5.12): a held
    barge-in and how it ended. `samples_sent` is where the utterance's audio stopped (samples
    sent before the hold); `uplink_sample` where the user's sound began (uplink samples, as
    in SpeechStarted: the Transcript of the turn holding it tells what it was); `text` what
    the transcriber heard, when it was asked (else "")."""

    outcome: BargeInOutcome
    reason: BargeInReason
    epoch: int
    utterance_id: int
    samples_sent: int
    uplink_sample: int
    text: str = ""


@dataclass(frozen=True, slots=True)
class TurnEnd:
    """Optional frame, sent only when the client asked for it (`vad.end_reports`, SPEC.md
    §5.13), right before each SpeechStopped: what ended the turn, and what the server waited
    for. `uplink_sample` is SpeechStopped's (where the silence began); `silence_samples` how
    much of that silence the server had heard when it asked whether the turn was over (or
    ended it: uplink samples); `decided_us` the server's time from hearing that much to
    sending SpeechStopped (the turn model's or the transcript's answer, and its own queues)."""

    by: TurnEndBy
    uplink_sample: int
    silence_samples: int
    decided_us: int


ClientFrame = Hello | Text | Interrupt | Pause | Resume | Ping | AudioUp | GetStats | Played
ServerFrame = (
    Welcome
    | Audio
    | UtteranceStarted
    | UtteranceDone
    | Interrupted
    | Paused
    | Resumed
    | Pong
    | Error
    | SpeechStarted
    | SpeechStopped
    | Transcript
    | Stats
    | Words
    | Heard
    | BargeIn
    | TurnEnd
)
Frame = ClientFrame | ServerFrame
