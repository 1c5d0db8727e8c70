"""Reference models of protocol/SPEC.md, written from the document, not from the codec.

`decode_stream(data, peer=, max_frame_bytes=)`: how a receiver splits a byte stream into frames
and which error stops it (§3.1 layout, §3.4 checks and their order, §3.5 field encodings, the
body sizes of §3.3). It returns whole frames as bytes; a decoder agrees with it if re-encoding
what it decoded gives exactly those bytes (the encoding is canonical).

`options_ok` / `resumes`: what Hello.options may hold (§4.1, §4.6.1, the `resume` section of
§6.4).

`SessionModel`: the server's session rules (§6.1 handshake checks, §6.2 utterance ids and
limits, §6.3 interrupt, §7 which frame is legal in which state), plus what the server itself may
send when. Its answers are plain values: "ok", "ignored" (TEXT of a cancelled utterance), or
the `ErrorCode` the server must report; a server move it must not make is `ILLEGAL`.

Where the implementation is knowingly more lenient than the document, `fuzz/known_bugs.py`
says so; the models stay strict.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from duplexd.protocol.frames import (
    AudioUp,
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
    UtteranceDone,
    Welcome,
)

Peer = Literal["client", "server"]

# ---------------------------------------------------------------------------- §3: the bytes

# type -> (size of the fixed part, variable tail fields in order, whether flag 0x01 is defined)
# Straight from the tables of §3.3, §4 and §5.
BODIES: Final[dict[int, tuple[int, tuple[str, ...], bool]]] = {
    0x01: (14, ("str16", "str16", "str16", "json32"), False),  # HELLO
    0x02: (4, ("utf8",), True),  # TEXT (END)
    0x03: (0, (), False),  # INTERRUPT
    0x04: (0, (), False),  # PAUSE
    0x05: (0, (), False),  # RESUME
    0x06: (8, (), False),  # PING
    0x07: (4, ("pcm",), False),  # AUDIO_UP
    0x41: (0, (), False),  # GET_STATS
    0x42: (22, (), True),  # PLAYED (FINAL)
    0x80: (42, ("str16", "str16", "json32"), False),  # WELCOME
    0x81: (10, ("pcm",), True),  # AUDIO (END)
    0x82: (6, (), False),  # UTTERANCE_STARTED
    0x83: (18, (), False),  # UTTERANCE_DONE
    0x84: (22, (), True),  # INTERRUPTED (VAD)
    0x85: (0, (), False),  # PAUSED
    0x86: (0, (), False),  # RESUMED
    0x87: (16, (), False),  # PONG
    0x88: (2, ("utf8",), False),  # ERROR
    0x89: (8, (), False),  # SPEECH_STARTED
    0x8A: (8, (), False),  # SPEECH_STOPPED
    0x8B: (16, ("utf8",), True),  # TRANSCRIPT (FINAL)
    0xC1: (0, ("utf8",), False),  # STATS
    0xC2: (6, ("marks",), False),  # WORDS
    0xC3: (18, (), False),  # HEARD
    0xC4: (24, ("utf8",), False),  # BARGE_IN
    0xC5: (17, (), False),  # TURN_END
}
# u8 fields whose values a table names (§5.12, §5.13): type -> ((offset, values), ...)
NAMED: Final[dict[int, tuple[tuple[int, range], ...]]] = {
    0xC4: ((0, range(3)), (1, range(8))),  # BARGE_IN: outcome, reason
    0xC5: ((0, range(5)),),  # TURN_END: by
}
ERROR_CODES: Final = range(1, 20)  # §8: 1 MALFORMED .. 19 RESUME_FAILED
DECODE_ERRORS: Final = frozenset(
    {
        ErrorCode.MALFORMED,
        ErrorCode.FRAME_TOO_LARGE,
        ErrorCode.UNKNOWN_TYPE,
        ErrorCode.UNEXPECTED_FRAME,
    }
)


@dataclass(frozen=True)
class Decoded:
    """What a receiver makes of a byte stream so far."""

    frames: list[bytes]  # whole frames of known types, prefix included, in order
    skipped: int  # unknown optional frames skipped
    consumed: int  # bytes of the whole frames before where it stopped
    error: ErrorCode | None  # the error that stopped it, if any


def _utf8_ok(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")  # strict: no surrogates, no overlong forms, nothing > U+10FFFF
    except UnicodeDecodeError:
        return False
    return True


def body_ok(type_: int, body: bytes) -> bool:
    """§3.4 check 5 for a known type: sizes, strings, PCM, the ERROR code, the named u8s."""
    fixed, tails, _ = BODIES[type_]
    if len(body) < fixed or (not tails and len(body) != fixed):
        return False
    pos = fixed
    for kind in tails:
        if kind in ("str16", "json32"):
            width = 2 if kind == "str16" else 4
            if len(body) - pos < width:
                return False
            n = int.from_bytes(body[pos : pos + width], "little")
            pos += width
            if n > len(body) - pos or not _utf8_ok(body[pos : pos + n]):
                return False
            pos += n
        elif kind == "utf8":
            if not _utf8_ok(body[pos:]):
                return False
            pos = len(body)
        elif kind == "marks":  # §5.10: whole 16-byte marks, each ending at or after its start
            if (len(body) - pos) % 16:
                return False
            for at in range(pos, len(body), 16):
                sc, ec, ss, es = (
                    int.from_bytes(body[at + k : at + k + 4], "little") for k in (0, 4, 8, 12)
                )
                if ec < sc or es < ss:
                    return False
            pos = len(body)
        else:  # pcm
            if (len(body) - pos) % 2:
                return False
            pos = len(body)
    if pos != len(body):
        return False
    if any(body[at] not in values for at, values in NAMED.get(type_, ())):
        return False
    return type_ != 0x88 or int.from_bytes(body[:2], "little") in ERROR_CODES


def check_frame(frame: bytes, peer: Peer) -> ErrorCode | Literal["frame", "skip"]:
    """§3.4 checks 2-5 of one whole frame sent by `peer`."""
    type_, flags, body = frame[4], frame[5], frame[6:]
    if bool(type_ & 0x80) != (peer == "server"):
        return ErrorCode.UNEXPECTED_FRAME
    if type_ not in BODIES:
        return "skip" if type_ & 0x40 else ErrorCode.UNKNOWN_TYPE
    if flags & ~(0x01 if BODIES[type_][2] else 0x00):
        return ErrorCode.MALFORMED
    return "frame" if body_ok(type_, body) else ErrorCode.MALFORMED


def decode_stream(data: bytes, *, peer: Peer, max_frame_bytes: int = 65536) -> Decoded:
    """The frames a receiver of `peer`'s bytes finds in `data`, and where and why it stops."""
    frames: list[bytes] = []
    skipped = pos = 0
    while len(data) - pos >= 4:
        length = int.from_bytes(data[pos : pos + 4], "little")
        if length < 2:
            return Decoded(frames, skipped, pos, ErrorCode.MALFORMED)
        if 4 + length > max_frame_bytes:  # from the prefix alone
            return Decoded(frames, skipped, pos, ErrorCode.FRAME_TOO_LARGE)
        if len(data) - pos < 4 + length:
            break
        frame = data[pos : pos + 4 + length]
        verdict = check_frame(frame, peer)
        if isinstance(verdict, ErrorCode):
            return Decoded(frames, skipped, pos, verdict)
        if verdict == "frame":
            frames.append(frame)
        else:
            skipped += 1
        pos += 4 + length
    return Decoded(frames, skipped, pos, None)


# ---------------------------------------------------------------------------- §4.1, §4.6.1, §6.4

# key -> (JSON type, low, high), from the tables of §4.6.1 and §4.6.2
OPTION_KEYS: Final[dict[str, dict[str, tuple[str, float, float]]]] = {
    "vad": {
        "threshold": ("number", 0.05, 0.99),
        "min_speech_ms": ("number", 0, 5000),
        "min_silence_ms": ("number", 32, 10_000),
        "smart_end": ("bool", 0, 0),
        "max_silence_ms": ("number", 32, 10_000),
        "smart_threshold": ("number", 0.05, 0.99),
        "smart_reask_ms": ("number", 0, 10_000),
        "speech_pad_ms": ("number", 0, 1000),
        "barge_in": ("bool", 0, 0),
        "barge_in_min_speech_ms": ("number", 0, 5000),
        "echo_cancel": ("bool", 0, 0),
        "echo_threshold": ("number", 0.05, 0.99),
        "max_turn_s": ("number", 1, 30),
    },
    "asr": {
        "transcripts": ("bool", 0, 0),
        "partial_ms": ("number", 0, 10_000),
    },
    "downlink": {  # §4.6.2
        "paced": ("bool", 0, 0),
    },
}
# §6.4 gives the resume token as "<64 hex digits>" and says nothing of its length in a Hello;
# duplexd takes 1..256 characters (duplexd/protocol/options.py `_resume`): a longer one is
# BAD_OPTIONS, not RESUME_FAILED. The model follows the implementation there (a gap in the
# document, not a contradiction).
RESUME_TOKEN_MAX_CHARS: Final = 256
_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")


class _NotJson(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not JSON (RFC 8259)")


def _options_object(text: str) -> dict[str, Any] | None:
    """Hello.options as a JSON object (RFC 8259: no NaN/Infinity), else None."""
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # RecursionError: nesting past the parser's limit
        return None
    return obj if isinstance(obj, dict) else None


def resume_ok(raw: object) -> bool:
    """§6.4: `{"session_id": Welcome.session_id as 32 hex digits, "token": info.resume.token,
    "received": the count of server messages received after Welcome}`; every key required.
    A count is an integer >= 0 (JSON `true` is not one, nor is `1.0`)."""
    if not isinstance(raw, dict):
        return False
    sid, token, received = raw.get("session_id"), raw.get("token"), raw.get("received")
    if not isinstance(sid, str) or len(sid) != 32 or not set(sid) <= _HEX_DIGITS:
        return False
    if not isinstance(token, str) or not 0 < len(token) <= RESUME_TOKEN_MAX_CHARS:
        return False
    return isinstance(received, int) and not isinstance(received, bool) and received >= 0


def options_ok(text: str) -> bool:
    """Whether Hello.options is acceptable: "" or a JSON object (RFC 8259: no NaN/Infinity)
    whose known keys have the right type and range, and whose `resume` section, if any, is
    well-formed (`resume_ok`). A section that is null counts as absent (duplexd reads it so;
    the document does not say)."""
    if not text:
        return True
    obj = _options_object(text)
    if obj is None:
        return False
    for section, keys in OPTION_KEYS.items():
        raw = obj.get(section)
        if raw is None:
            continue
        if not isinstance(raw, dict):
            return False
        for key, value in raw.items():
            if key not in keys:
                continue
            kind, lo, hi = keys[key]
            if kind == "bool":
                ok = isinstance(value, bool)
            else:  # a JSON number in range: exact for ints of any size, False for NaN
                ok = isinstance(value, int | float) and not isinstance(value, bool)
                ok = ok and lo <= value <= hi
            if not ok:
                return False
    return obj.get("resume") is None or resume_ok(obj["resume"])


def resumes(text: str) -> bool:
    """Whether an acceptable Hello.options asks to resume a session (§6.4)."""
    obj = _options_object(text) if text else None
    return obj is not None and obj.get("resume") is not None


def hello_verdict(hello: Hello) -> ErrorCode | None:
    """§6.1 steps 2-4 that need no server configuration: version, formats, options."""
    if not hello.min_version <= 1 <= hello.max_version:
        return ErrorCode.UNSUPPORTED_VERSION
    if hello.sample_rate_hz not in (48_000, 24_000, 16_000) or hello.frame_ms != 20:
        return ErrorCode.UNSUPPORTED_FORMAT
    if hello.uplink_rate_hz not in (0, 16_000, 48_000):
        return ErrorCode.UNSUPPORTED_FORMAT
    if not options_ok(hello.options):
        return ErrorCode.BAD_OPTIONS
    return None


# ---------------------------------------------------------------------------- §6, §7

CLIENT_TYPES: Final = (Hello, Text, Interrupt, Pause, Resume, Ping, AudioUp, GetStats, Played)
# a server move the rules forbid (the implementation raises LocalProtocolError)
ILLEGAL: Final = "illegal"
Verdict = Literal["ok", "ignored"] | ErrorCode


@dataclass
class SessionModel:
    """The server's view of one session, as the document states it."""

    max_text_bytes: int
    max_queued_utterances: int
    phase: Literal["await_hello", "open", "closed"] = "await_hello"
    hello: Hello | None = None
    uplink: bool = False
    last_id: int = 0  # the greatest utterance id seen
    text_open: bool = False  # whether the text of `last_id` is still open
    text_bytes: int = 0  # text bytes of `last_id` so far
    active: list[int] = field(default_factory=list)  # queued or playing, in order
    cancelled_upto: int = 0  # the greatest id an interrupt cancelled

    @property
    def open_utterance(self) -> int | None:
        return self.last_id if self.text_open else None

    # ------------------------------------------------------------------ client frames

    def receive(self, frame: object) -> Verdict:
        if self.phase == "closed":
            return ErrorCode.UNEXPECTED_FRAME
        if self.phase == "await_hello":
            if not isinstance(frame, Hello) or self.hello is not None:
                return ErrorCode.UNEXPECTED_FRAME
            code = hello_verdict(frame)
            if code is None:
                self.hello = frame
                return "ok"
            return code
        if isinstance(frame, Text):
            return self._text(frame)
        if isinstance(frame, Interrupt):
            self.interrupt()
            return "ok"
        if isinstance(frame, Pause | Resume | Ping | GetStats | Played):
            return "ok"
        if isinstance(frame, AudioUp) and self.uplink:
            return "ok"
        return ErrorCode.UNEXPECTED_FRAME  # Hello again, AudioUp without uplink, server frames

    def _text(self, frame: Text) -> Verdict:
        uid = frame.utterance_id
        if uid == 0:  # first: id 0 is never valid, also after an interrupt
            return ErrorCode.BAD_UTTERANCE_ID
        if uid <= self.cancelled_upto:
            return "ignored"
        if uid > self.last_id:
            if self.text_open:
                return ErrorCode.BAD_UTTERANCE_ID
            if len(self.active) >= self.max_queued_utterances:
                return ErrorCode.LIMIT_EXCEEDED
            self.last_id, self.text_open, self.text_bytes = uid, True, 0
            self.active.append(uid)
        elif uid == self.last_id:
            if not self.text_open:
                return ErrorCode.TEXT_AFTER_END
        else:
            return ErrorCode.BAD_UTTERANCE_ID
        self.text_bytes += len(frame.text.encode("utf-8"))
        if self.text_bytes > self.max_text_bytes:
            return ErrorCode.LIMIT_EXCEEDED
        if frame.end:
            self.text_open = False
        return "ok"

    def interrupt(self) -> None:
        """§6.3: every active utterance (one whose text is open too) is cancelled."""
        if self.active:
            self.cancelled_upto = max(self.cancelled_upto, *self.active)
        self.active.clear()
        self.text_open = False

    # ------------------------------------------------------------------ the server's moves

    def send(self, frame: object) -> Literal["ok", "illegal"]:
        if self.phase == "closed":
            return ILLEGAL
        if isinstance(frame, Error):
            self.close()
            return "ok"
        if isinstance(frame, Welcome):
            if self.phase != "await_hello" or self.hello is None:
                return ILLEGAL
            if frame.uplink_rate_hz not in (0, self.hello.uplink_rate_hz):
                return ILLEGAL
            self.phase, self.uplink = "open", bool(frame.uplink_rate_hz)
            return "ok"
        if self.phase != "open" or isinstance(frame, CLIENT_TYPES):
            return ILLEGAL
        if isinstance(frame, SpeechStarted | SpeechStopped | Transcript) and not self.uplink:
            return ILLEGAL
        if isinstance(frame, UtteranceDone) and frame.utterance_id in self.active:
            self.active.remove(frame.utterance_id)
        return "ok"

    def barge_in(self) -> bool | Literal["illegal"]:
        if self.phase != "open":
            return ILLEGAL
        had = bool(self.active)
        if had:
            self.interrupt()
        return had

    def close(self) -> None:
        self.phase = "closed"
        self.active.clear()
        self.text_open = False
