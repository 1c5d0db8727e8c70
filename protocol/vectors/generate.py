"""Generate protocol/vectors/vectors.json, the golden vectors of the duplexd wire protocol.

    python protocol/vectors/generate.py           # rewrite vectors.json
    python protocol/vectors/generate.py --check   # exit 1 if vectors.json is out of date

Valid cases: ``{"name", "direction", "hex", "frame"}`` where `direction` says who sends the
bytes ("client" or "server"), `frame` is ``{"type": <class name>, <field>: <value>...}`` with
bytes as lowercase hex and `Error.code` as the ErrorCode name; ``"frame": null`` means the bytes
hold one unknown optional frame that a decoder skips, and ``"skipped": n`` (default 0) how many
frames it skips. ``"packet_audio": true`` (default false) marks a case of a direction that
negotiated Opus (SPEC §4.6.3): its decoder and encoder take AUDIO / AUDIO_UP bodies as
packets of any length. ``"round_trip": false`` (default true) marks bytes that encoding the decoded
frame cannot give back, ``"round_trip_why"`` says why (a skipped frame before it: encoding gives
only the bytes after the skipped ones). Invalid cases: ``{"name", "direction", "hex",
"error": <ErrorCode name>}``: a decoder fed `hex` then asked for frames and for the end of the
data raises that error.

The tests (tests/test_vectors.py) compare the codec against the committed file, so a codec change
that alters bytes fails until this script is rerun and the diff reviewed.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import struct
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from duplexd.protocol.codec import encode  # noqa: E402
from duplexd.protocol.frames import (  # noqa: E402
    Audio,
    AudioUp,
    BargeIn,
    BargeInOutcome,
    BargeInReason,
    Error,
    ErrorCode,
    GetStats,
    Hello,
    Interrupt,
    Interrupted,
    Pause,
    Paused,
    Ping,
    Pong,
    Resume,
    Resumed,
    SpeechStarted,
    SpeechStopped,
    Stats,
    WordMark,
    Words,
    Played,
    Heard,
    Text,
    TurnEnd,
    TurnEndBy,
    Transcript,
    UtteranceDone,
    UtteranceStarted,
    Welcome,
)

OUT = Path(__file__).with_name("vectors.json")
PCM4 = struct.pack("<4h", 0, 1, -1, -32768)  # 4 samples
SID = bytes(range(0x10, 0x20))
# a real 20 ms Opus packet (libopus, 16 kHz, 32 kbit/s: the 3rd frame of a 220 Hz tone), 39
# bytes: an odd length, which only a direction that negotiated Opus accepts
OPUS39 = bytes.fromhex(
    "489949cb17629080e56df12fefcd15a86c105e5ea820d6a7e87e9a9f5e5541918d909b80821dc0"
)
OPUS_OPTIONS = '{"codec":{"downlink":"opus","uplink":"opus","opus_bitrate_kbps":32}}'
OPUS_INFO = (
    '{"codec":{"downlink":"opus","uplink":"opus","opus_bitrate_kbps":32.0,"opus_complexity":5}}'
)


def frame_to_json(frame: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(frame).__name__}
    for field in dataclasses.fields(frame):
        value = getattr(frame, field.name)
        if isinstance(value, bytes):
            value = value.hex()
        elif isinstance(value, enum.Enum):
            value = value.name
        elif isinstance(value, tuple):  # Words.marks
            value = [dataclasses.asdict(v) for v in value]
        out[field.name] = value
    return out


def h(*parts: str) -> str:
    """Hex from readable pieces: 'fd ff 00 00' and friends."""
    return "".join(parts).replace(" ", "").lower()


def valid_cases() -> list[tuple[str, str, Any]]:
    return [
        ("hello_default", "client", Hello()),
        (
            "hello_full_non_ascii",
            "client",
            Hello(
                min_version=1,
                max_version=3,
                sample_rate_hz=24_000,
                frame_ms=20,
                uplink_rate_hz=16_000,
                token="tøken-✓",
                engine="piper",
                voice="de_DE-thorsten-é",
                options='{"speed": 1.1, "name": "Zoë 😀"}',
            ),
        ),
        (
            "hello_16k_uplink_48k",
            "client",
            Hello(sample_rate_hz=16_000, uplink_rate_hz=48_000, engine="tone"),
        ),
        (
            "hello_resume",  # SPEC §6.4: resumes session 00112233...eeff, 42 messages received
            "client",
            Hello(
                options='{"resume":{"session_id":"00112233445566778899aabbccddeeff",'
                '"token":"5f1c0ffee5f1c0ffee5f1c0ffee5f1c0ffee5f1c0ffee5f1c0ffee5f1c0ffee0",'
                '"received":42}}'
            ),
        ),
        ("text_chunk", "client", Text(1, "Hello, ")),
        ("text_end", "client", Text(1, "world.", end=True)),
        ("text_empty_end", "client", Text(7, "", end=True)),
        ("text_non_ascii", "client", Text(0xFFFF_FFFF, "Grüße, 世界! 😀", end=True)),
        ("interrupt", "client", Interrupt()),
        ("pause", "client", Pause()),
        ("resume", "client", Resume()),
        ("ping_zero", "client", Ping(0)),
        ("ping_max", "client", Ping(0xFFFF_FFFF_FFFF_FFFF)),
        ("audio_up", "client", AudioUp(3, PCM4)),
        ("audio_up_empty", "client", AudioUp(0, b"")),
        ("get_stats", "client", GetStats()),
        (
            "welcome_default",
            "server",
            Welcome(1, SID, 48_000, 960, 0, 65536, 4096, 16, "tone", "a440"),
        ),
        (
            "welcome_non_ascii_info",
            "server",
            Welcome(
                1,
                bytes(16),
                16_000,
                320,
                16_000,
                16384,
                100_000,
                64,
                "piper",
                "fr_FR-siwis-médium",
                info='{"server": "duplexd 0.1", "voices": ["fr_FR-siwis-médium"]}',
            ),
        ),
        ("audio", "server", Audio(0, 1, 0, PCM4)),
        ("audio_last", "server", Audio(2, 0x0102_0304, 41, PCM4, last=True)),
        ("audio_full_48k", "server", Audio(1, 5, 7, bytes(range(256)) * 7 + bytes(128))),
        ("utterance_started", "server", UtteranceStarted(0, 1)),
        ("utterance_done", "server", UtteranceDone(0, 1, 48_000, 12)),
        ("interrupted", "server", Interrupted(1, 3, 19_200, 5, 2)),
        ("interrupted_nothing_playing", "server", Interrupted(0xFFFF, 0, 0, 0, 0)),
        ("interrupted_vad", "server", Interrupted(4, 9, 28_800, 17, 1, vad=True)),
        ("paused", "server", Paused()),
        ("resumed", "server", Resumed()),
        ("pong", "server", Pong(0x0123_4567_89AB_CDEF, 1_700_000_000_000_000_000)),
        ("error", "server", Error(ErrorCode.TEXT_AFTER_END, "text for utterance 1 after END")),
        ("error_non_ascii", "server", Error(ErrorCode.UNKNOWN_VOICE, "voix « inconnue »")),
        ("error_empty_message", "server", Error(ErrorCode.GOING_AWAY, "")),
        (
            "error_message_too_large",  # SPEC §2: a WebSocket message over max_message_bytes
            "server",
            Error(ErrorCode.FRAME_TOO_LARGE, "a WebSocket message holds at most 1048576 bytes"),
        ),
        ("speech_started", "server", SpeechStarted(16_000)),
        ("speech_stopped", "server", SpeechStopped(48_320)),
        ("transcript_final", "server", Transcript(16_000, 48_320, "Stop, bitte!", final=True)),
        ("transcript_partial", "server", Transcript(16_000, 32_000, "Sto", final=False)),
        ("stats", "server", Stats('{"frames_sent": 50, "late_frames": 0}')),
        ("stats_empty", "server", Stats("")),
        (
            "words",
            "server",
            Words(2, 7, (WordMark(0, 5, 1_000, 14_400), WordMark(6, 12, 14_400, 30_000))),
        ),
        ("words_none", "server", Words(0, 1, ())),
        ("played", "client", Played(1, 7, 26_160, 1_234_567_890)),
        # Opus both ways (SPEC §4.6.3): asked in Hello.options, granted in Welcome.info
        (
            "hello_opus",
            "client",
            Hello(sample_rate_hz=16_000, uplink_rate_hz=16_000, options=OPUS_OPTIONS),
        ),
        (
            "welcome_opus",
            "server",
            Welcome(1, SID, 16_000, 320, 16_000, 65536, 4096, 16, "tone", "a440", OPUS_INFO),
        ),
        ("played_final", "client", Played(1, 7, 26_400, 1_234_572_890, final=True)),
        ("heard", "server", Heard(1, 7, 26_400, 12)),
        (
            "barge_in_held",
            "server",
            BargeIn(BargeInOutcome.HELD, BargeInReason.ONSET, 1, 7, 17_280, 48_000),
        ),
        (
            "barge_in_resumed",
            "server",
            BargeIn(
                BargeInOutcome.RESUMED, BargeInReason.BACKCHANNEL, 1, 7, 17_280, 48_000, "Mhm."
            ),
        ),
        (
            "barge_in_committed",
            "server",
            BargeIn(BargeInOutcome.COMMITTED, BargeInReason.LONG, 1, 7, 17_280, 48_000),
        ),
        # with `vad.end_reports`: 200 ms of silence heard at 16 kHz, the words' answer 151 ms on
        ("turn_end_words", "server", TurnEnd(TurnEndBy.WORDS, 48_000, 3_200, 151_250)),
        ("turn_end_max_silence", "server", TurnEnd(TurnEndBy.MAX_SILENCE, 96_000, 16_000, 2_100)),
    ]


# Why `skip_then_ping` cannot round-trip: a decoder drops a skipped frame (SPEC §3.4), so
# the decoded frames do not hold its bytes, and encoding them gives only the Ping's.
SKIPPED_NOT_ENCODED = (
    "the unknown optional frame is skipped by the decoder (SPEC §3.4) and so is not among the"
    " decoded frames: encoding them gives only the bytes after it"
)

SKIP_CASES = [
    # name, direction, hex, frame after the skipped one (or None), skipped
    ("skip_unknown_optional_client", "client", h("05000000 4f 00 010203"), None, 1),
    ("skip_unknown_optional_server", "server", h("02000000 cf 00"), None, 1),
    ("skip_unknown_optional_any_flags", "client", h("03000000 7e ff 00"), None, 1),
    (
        "skip_then_ping",
        "client",
        h("04000000 4f 00 aaaa", "0a000000 06 00 0100000000000000"),
        Ping(1),
        1,
    ),
]

INVALID_CASES = [
    # framing
    ("length_zero", "client", h("00000000"), "MALFORMED"),
    ("length_one", "client", h("01000000 06"), "MALFORMED"),
    ("oversize_length_prefix", "client", h("fdff0000"), "FRAME_TOO_LARGE"),
    ("oversize_length_prefix_huge", "server", h("ffffffff 81 00"), "FRAME_TOO_LARGE"),
    ("incomplete_frame_at_end", "client", h("0a000000 06 00 01020304"), "MALFORMED"),
    ("incomplete_prefix_at_end", "server", h("0a00"), "MALFORMED"),
    # types and directions
    ("unknown_type_client", "client", h("02000000 3f 00"), "UNKNOWN_TYPE"),
    ("unknown_type_server", "server", h("02000000 9f 00"), "UNKNOWN_TYPE"),
    ("server_type_in_client_stream", "client", h("02000000 85 00"), "UNEXPECTED_FRAME"),
    ("client_type_in_server_stream", "server", h("02000000 04 00"), "UNEXPECTED_FRAME"),
    ("optional_server_type_in_client_stream", "client", h("02000000 cf 00"), "UNEXPECTED_FRAME"),
    # fixed sizes and flags
    ("ping_body_too_short", "client", h("06000000 06 00 01020304"), "MALFORMED"),
    ("ping_body_too_long", "client", h("0b000000 06 00 010203040506070809"), "MALFORMED"),
    ("pause_with_body", "client", h("03000000 04 00 00"), "MALFORMED"),
    ("ping_reserved_flag", "client", h("0a000000 06 01 0100000000000000"), "MALFORMED"),
    ("text_reserved_flag", "client", h("07000000 02 02 01000000 41"), "MALFORMED"),
    ("text_no_utterance_id", "client", h("05000000 02 01 010000"), "MALFORMED"),
    ("audio_up_odd_pcm", "client", h("09000000 07 00 00000000 010203"), "MALFORMED"),
    ("audio_body_too_short", "server", h("0b000000 81 00 0000 01000000 000000"), "MALFORMED"),
    ("audio_odd_pcm", "server", h("0d000000 81 01 0000 01000000 00000000 ff"), "MALFORMED"),
    (
        "interrupted_reserved_flag",
        "server",
        h("18000000 84 02 0100 00000000 0000000000000000 00000000 00000000"),
        "MALFORMED",
    ),
    ("audio_reserved_flag", "server", h("0e000000 81 80 0000 01000000 00000000 0000"), "MALFORMED"),
    ("utterance_done_too_short", "server", h("0a000000 83 00 0000 01000000 0000"), "MALFORMED"),
    ("welcome_too_short", "server", h("06000000 80 00 0100 0000"), "MALFORMED"),
    # strings
    ("text_bad_utf8", "client", h("08000000 02 00 01000000 fffe"), "MALFORMED"),
    ("text_overlong_utf8", "client", h("08000000 02 00 01000000 c080"), "MALFORMED"),
    ("text_surrogate_utf8", "client", h("09000000 02 00 01000000 eda080"), "MALFORMED"),
    ("text_truncated_utf8", "client", h("08000000 02 01 01000000 e282"), "MALFORMED"),
    (
        "hello_token_bad_utf8",
        "client",
        h("1c000000 01 00 0100 0100 80bb0000 1400 00000000 0200 c328 0000 0000 00000000"),
        "MALFORMED",
    ),
    (
        "hello_string_overruns_body",
        "client",
        h("1a000000 01 00 0100 0100 80bb0000 1400 00000000 0000 0000 ff00 00000000"),
        "MALFORMED",
    ),
    (
        "hello_options_overruns_body",
        "client",
        h("1a000000 01 00 0100 0100 80bb0000 1400 00000000 0000 0000 0000 05000000"),
        "MALFORMED",
    ),
    (
        "hello_truncated_options_length",
        "client",
        h("18000000 01 00 0100 0100 80bb0000 1400 00000000 0000 0000 0000 0000"),
        "MALFORMED",
    ),
    (
        "hello_trailing_bytes",
        "client",
        h("1b000000 01 00 0100 0100 80bb0000 1400 00000000 0000 0000 0000 00000000 00"),
        "MALFORMED",
    ),
    ("error_unknown_code", "server", h("04000000 88 00 6300"), "MALFORMED"),
    ("error_bad_utf8", "server", h("05000000 88 00 0100 ff"), "MALFORMED"),
    ("stats_bad_utf8", "server", h("03000000 c1 00 ff"), "MALFORMED"),
    # BARGE_IN's outcome is 0..2 and its reason 0..7
    (
        "barge_in_unknown_outcome",
        "server",
        h("1a000000 c4 00 03 00 0100 07000000 8043000000000000 80bb000000000000"),
        "MALFORMED",
    ),
    # TURN_END's `by` is 0..4, and its body a fixed 17 bytes
    (
        "turn_end_unknown_by",
        "server",
        h("13000000 c5 00 05 80bb000000000000 800c0000 d24f0200"),
        "MALFORMED",
    ),
    ("turn_end_short", "server", h("12000000 c5 00 02 80bb000000000000 800c0000 d24f02"), "MALFORMED"),
    # PLAYED has one flag (FINAL) and a fixed 22-byte body
    (
        "played_short",
        "client",
        h("17000000 42 01 0100 07000000 0000000000000000 00000000000000"),
        "MALFORMED",
    ),
    # a Words body holds whole 16-byte marks, each ending at or after its start
    ("words_partial_mark", "server", h("0c000000 c2 00 0200 07000000 00000000"), "MALFORMED"),
    (
        "words_mark_ends_before_it_starts",
        "server",
        h("18000000 c2 00 0200 07000000 05000000 03000000 00000000 10000000"),
        "MALFORMED",
    ),
    (
        "transcript_bad_utf8",
        "server",
        h("13000000 8b 01 0000000000000000 0100000000000000 c0"),
        "MALFORMED",
    ),
    # a valid frame, then garbage: the first frame decodes, then the error
    ("valid_then_unknown_type", "client", h("02000000 03 00", "02000000 3e 00"), "UNKNOWN_TYPE"),
]


# name, direction, frame: frames of a direction that negotiated Opus ("packet_audio": true)
PACKET_CASES = [
    ("audio_opus", "server", Audio(0, 1, 2, OPUS39)),
    ("audio_opus_last", "server", Audio(0, 1, 3, OPUS39, last=True)),
    ("audio_up_opus", "client", AudioUp(5, OPUS39)),
]


def build() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for name, direction, frame in valid_cases():
        case = {"name": name, "direction": direction, "hex": encode(frame).hex()}
        case["frame"] = frame_to_json(frame)
        cases.append(case)
    for name, direction, frame in PACKET_CASES:
        data = encode(frame, packet_audio=True)
        case = {"name": name, "direction": direction, "hex": data.hex(), "packet_audio": True}
        case["frame"] = frame_to_json(frame)
        cases.append(case)
    for name, direction, hexstr, frame, skipped in SKIP_CASES:
        case = {"name": name, "direction": direction, "hex": hexstr}
        case["frame"] = None if frame is None else frame_to_json(frame)
        case["skipped"] = skipped
        if frame is not None:
            case["round_trip"] = False
            case["round_trip_why"] = SKIPPED_NOT_ENCODED
        cases.append(case)
    for name, direction, hexstr, error in INVALID_CASES:
        cases.append({"name": name, "direction": direction, "hex": hexstr, "error": error})
    names = [c["name"] for c in cases]
    assert len(names) == len(set(names)), "duplicate vector names"
    return cases


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is out of date; run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({len(build())} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
