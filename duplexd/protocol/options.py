"""Hello.options: the per-session settings a client may ask for (protocol/SPEC.md §4.1.1).

`parse_options(text)` checks the whole JSON object once, when the Hello arrives, and returns
frozen `SessionOptions`; every part of the daemon reads its section from there. Unknown keys
and sections are ignored (a newer client may send more); a known key with a bad type or a
value out of range is `BAD_OPTIONS`, naming the key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from typing import Any, Final

from .codec import RemoteProtocolError
from .frames import CODEC_OPUS, CODEC_PCM, ErrorCode

__all__ = [
    "AsrOptions",
    "CodecOptions",
    "DownlinkOptions",
    "ResumeOptions",
    "SessionOptions",
    "VadOptions",
    "parse_options",
]


# Words a listener says to show they follow, not to take the turn (soft barge-in); compared
# lowercased, without punctuation, word by word: "Yeah, okay." is a backchannel.
DEFAULT_BACKCHANNELS: Final = (
    "mhm", "mm", "mmm", "hmm", "hm", "mm-hmm", "uh-huh", "uh", "huh", "um", "ah", "oh",
    "yeah", "yep", "yes", "ya", "okay", "ok", "right", "sure", "alright", "i", "see", "got",
    "it", "cool", "nice", "wow", "true", "exactly",
)  # fmt: skip
BARGE_IN_MODES: Final = ("immediate", "soft")
# WebRTC's noise suppression levels: 6, 12, 18 and 21 dB of noise reduction (SPEC §4.6.1)
NOISE_SUPPRESSION: Final = ("off", "low", "moderate", "high", "very_high")
MAX_BACKCHANNELS: Final = 64
MAX_BACKCHANNEL_CHARS: Final = 32


@dataclass(frozen=True, slots=True)
class VadOptions:
    """{"vad": {...}}: voice activity detection on the uplink; every key optional."""

    threshold: float = 0.5  # speech probability that counts as speech
    min_speech_ms: float = 150.0  # speech this long before SpeechStarted
    # silence this long ends the turn; with `smart_end`, only if the turn model finds the
    # utterance complete. None: 200 ms with a smart end, 500 ms without (SPEC §4.6.1)
    min_silence_ms: float | None = None
    smart_end: bool = True  # ask the server's turn model whether the user has finished
    max_silence_ms: float = 1000.0  # smart end: silence this long ends the turn regardless
    smart_threshold: float = 0.5  # smart end: completion probability that ends the turn
    # smart end, English transcripts: a "complete" also needs Whisper's probability of an end
    # mark (". ? !") where the user stopped to be this high (SPEC §4.6.1); 0: not asked
    end_mark_threshold: float = 0.7
    # smart end, English transcripts: an end mark this likely ends the turn even when the model
    # calls it incomplete (and the words may end there); 1: never
    end_mark_sure: float = 0.9
    # smart end: after "not complete", ask again each time the silence has lasted this much
    # longer (until `max_silence_ms`); 0: ask once per silence (SPEC §4.6.1: the trade)
    smart_reask_ms: float = 0.0
    # send TURN_END before each SPEECH_STOPPED: what ended the turn and what it waited for
    end_reports: bool = False
    speech_pad_ms: float = 150.0  # audio kept around a turn for the transcript
    barge_in: bool = True  # interrupt the playing utterance when the user speaks
    barge_in_min_speech_ms: float = 30.0  # speech this long before barging in (whole windows)
    # "immediate": a barge-in interrupts at once; "soft": it holds the agent's audio first and
    # interrupts only if the sound is not a backchannel or a noise (SPEC §4.6.2)
    barge_in_mode: str = "immediate"
    soft_min_speech_ms: float = 150.0  # soft: a sound shorter than this is a noise: resume
    soft_max_speech_ms: float = 1000.0  # soft: speech longer than this interrupts
    soft_silence_ms: float = 200.0  # soft: silence this long ends the sound: decide
    soft_window_ms: float = 3000.0  # soft: no decision this long after the onset interrupts
    backchannels: tuple[str, ...] = DEFAULT_BACKCHANNELS  # soft: words that do not interrupt
    echo_cancel: bool = True  # remove the downlink's echo from the uplink before the VAD
    echo_threshold: float = 0.7  # barge-in needs this probability while echo is possible
    # suppress steady noise in the uplink after the echo (WebRTC NS), before the VAD: "off", or
    # a level of NOISE_SUPPRESSION
    noise_suppression: str = "off"
    max_turn_s: float = 30.0  # a longer turn is transcribed in pieces of this length

    @property
    def neg_threshold(self) -> float:
        """Probability under which a window counts as silence (hysteresis, as silero does)."""
        return max(0.01, self.threshold - 0.15)


@dataclass(frozen=True, slots=True)
class AsrOptions:
    """{"asr": {...}}: transcripts of the user's turns."""

    transcripts: bool = True  # send a final Transcript after each turn
    partial_ms: float = 0.0  # > 0: a partial Transcript every this often while speaking
    # transcribe a turn as soon as the user falls silent, so its final is ready when it ends
    speculate: bool = True


@dataclass(frozen=True, slots=True)
class DownlinkOptions:
    """{"downlink": {...}}: how the audio is delivered."""

    # False: every frame as soon as it is synthesized, not one per 20 ms (a client that
    # writes a file, or feeds a gateway with its own jitter buffer)
    paced: bool = True
    # True: WORDS frames mark where each word is spoken, when the voice times its words
    words: bool = False


@dataclass(frozen=True, slots=True)
class CodecOptions:
    """{"codec": {...}}: how each direction's audio is coded (SPEC §4.6.3)."""

    downlink: str = CODEC_PCM  # AUDIO bodies: "pcm" (s16le) or "opus" (one 20 ms packet)
    uplink: str = CODEC_PCM  # AUDIO_UP bodies, likewise
    opus_bitrate_kbps: float = 32.0  # the server's Opus encoder (downlink): VBR target
    opus_complexity: int = 5  # the server's Opus encoder: libopus complexity 0..10

    @property
    def any_opus(self) -> bool:
        return CODEC_OPUS in (self.downlink, self.uplink)

    def describe(self) -> dict[str, Any]:
        """What Welcome's `info.codec` says was accepted."""
        out: dict[str, Any] = {"downlink": self.downlink, "uplink": self.uplink}
        if self.downlink == CODEC_OPUS:
            out["opus_bitrate_kbps"] = self.opus_bitrate_kbps
            out["opus_complexity"] = self.opus_complexity
        return out


@dataclass(frozen=True, slots=True)
class ResumeOptions:
    """{"resume": {...}}: this Hello resumes a session that lost its connection (§6.4)."""

    session_id: bytes  # Welcome.session_id of the session to resume
    token: str  # Welcome's info.resume.token
    received: int  # server messages the client received after that Welcome


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """Everything Hello.options may set, checked."""

    vad: VadOptions = field(default_factory=VadOptions)
    asr: AsrOptions = field(default_factory=AsrOptions)
    downlink: DownlinkOptions = field(default_factory=DownlinkOptions)
    codec: CodecOptions = field(default_factory=CodecOptions)
    resume: ResumeOptions | None = None


_SESSION_ID_HEX: Final = re.compile(r"[0-9a-fA-F]{32}")  # exactly; no spaces, no 0x
_RANGES: Final[dict[str, tuple[float, float]]] = {
    "threshold": (0.05, 0.99),
    "echo_threshold": (0.05, 0.99),
    "min_speech_ms": (0.0, 5000.0),
    "min_silence_ms": (32.0, 10_000.0),
    "max_silence_ms": (32.0, 10_000.0),
    "smart_threshold": (0.05, 0.99),
    "end_mark_threshold": (0.0, 0.99),
    "end_mark_sure": (0.5, 1.0),
    "smart_reask_ms": (0.0, 10_000.0),
    "speech_pad_ms": (0.0, 1000.0),
    "barge_in_min_speech_ms": (0.0, 5000.0),
    "max_turn_s": (1.0, 30.0),
    "partial_ms": (0.0, 10_000.0),
    "soft_min_speech_ms": (0.0, 5000.0),
    "soft_max_speech_ms": (32.0, 10_000.0),
    "soft_silence_ms": (32.0, 5000.0),
    "soft_window_ms": (100.0, 10_000.0),
}


def option_range(key: str) -> tuple[float, float]:
    """The values a numeric option takes, (lowest, highest), as HELLO checks them."""
    return _RANGES[key]


_CHOICES: Final[dict[str, tuple[str, ...]]] = {
    "barge_in_mode": BARGE_IN_MODES,
    "noise_suppression": NOISE_SUPPRESSION,
}


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON (RFC 8259)")


def _bad(why: str) -> RemoteProtocolError:
    return RemoteProtocolError(ErrorCode.BAD_OPTIONS, why)


def _section(cls: type[Any], raw: object, name: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise _bad(f"options.{name} must be a JSON object")
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        f = known.get(key)
        if f is None:
            continue  # unknown keys are ignored (SPEC §4.1.1)
        if f.type == "bool":
            if not isinstance(value, bool):
                raise _bad(f"options.{name}.{key} must be true or false")
        elif key in _CHOICES:
            if value not in _CHOICES[key]:
                choices = " or ".join(f'"{c}"' for c in _CHOICES[key])
                raise _bad(f"options.{name}.{key} must be {choices}")
        elif key == "backchannels":
            value = _words(value, f"options.{name}.{key}")
        else:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _bad(f"options.{name}.{key} must be a number")
            lo, hi = _RANGES[key]
            if not lo <= value <= hi:  # (an int beyond a float's range is simply out of range)
                raise _bad(f"options.{name}.{key} must be in {lo:g}..{hi:g}")
            value = float(value)
        kwargs[key] = value
    return cls(**kwargs)


def _words(value: object, where: str) -> tuple[str, ...]:
    if (
        not isinstance(value, list)
        or len(value) > MAX_BACKCHANNELS
        or not all(isinstance(w, str) and 0 < len(w) <= MAX_BACKCHANNEL_CHARS for w in value)
    ):
        raise _bad(
            f"{where} must be a list of at most {MAX_BACKCHANNELS} words"
            f" of 1..{MAX_BACKCHANNEL_CHARS} characters"
        )
    return tuple(w.lower() for w in value)


def parse_options(text: str) -> SessionOptions:
    """Hello.options ("" for none) as `SessionOptions`.

    Raises `RemoteProtocolError` (BAD_OPTIONS) saying what is wrong: not a JSON object (JSON
    nested too deeply for the parser, and NaN or Infinity anywhere, included), a section that
    is not an object, a value of the wrong type or out of range (a number of any size).
    """
    if not text:
        return SessionOptions()
    try:
        obj = json.loads(text, parse_constant=_not_json)
    except (ValueError, RecursionError):
        obj = None
    if not isinstance(obj, dict):
        raise _bad("options must be a JSON object")
    return SessionOptions(
        vad=_section(VadOptions, obj.get("vad"), "vad"),
        asr=_section(AsrOptions, obj.get("asr"), "asr"),
        downlink=_section(DownlinkOptions, obj.get("downlink"), "downlink"),
        codec=_codec(obj.get("codec")),
        resume=_resume(obj.get("resume")),
    )


def _resume(raw: object) -> ResumeOptions | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _bad("options.resume must be a JSON object")
    sid, token, received = raw.get("session_id"), raw.get("token"), raw.get("received")
    if not isinstance(sid, str) or not _SESSION_ID_HEX.fullmatch(sid):
        raise _bad("options.resume.session_id must be the 32 hex digits of Welcome.session_id")
    if not isinstance(token, str) or not 0 < len(token) <= 256:
        raise _bad("options.resume.token must be Welcome's info.resume.token")
    if isinstance(received, bool) or not isinstance(received, int) or received < 0:
        raise _bad("options.resume.received must be the count of messages received (>= 0)")
    return ResumeOptions(bytes.fromhex(sid), token, received)


_CODECS: Final = (CODEC_PCM, CODEC_OPUS)


def _codec(raw: object) -> CodecOptions:
    if raw is None:
        return CodecOptions()
    if not isinstance(raw, dict):
        raise _bad("options.codec must be a JSON object")
    kwargs: dict[str, Any] = {}
    for key in ("downlink", "uplink"):
        value = raw.get(key, CODEC_PCM)
        if value not in _CODECS:
            raise _bad(f'options.codec.{key} must be "pcm" or "opus"')
        kwargs[key] = value
    bitrate = raw.get("opus_bitrate_kbps", 32)
    if isinstance(bitrate, bool) or not isinstance(bitrate, int | float) or not 6 <= bitrate <= 510:
        raise _bad("options.codec.opus_bitrate_kbps must be a number in 6..510")
    complexity = raw.get("opus_complexity", 5)
    if isinstance(complexity, bool) or not isinstance(complexity, int) or not 0 <= complexity <= 10:
        raise _bad("options.codec.opus_complexity must be an integer in 0..10")
    return CodecOptions(opus_bitrate_kbps=float(bitrate), opus_complexity=complexity, **kwargs)
