"""Random inputs from a `random.Random`: byte mutations, Hello options, client frames.

Plain `random` so the network fuzz and the soak need no hypothesis; the stateful tests reuse
`mutate` through `st.randoms()` (hypothesis then shrinks the choices).
"""

from __future__ import annotations

import json
import random
import struct
from typing import Any, Final

from duplexd.protocol import frames as fr

from . import known_bugs

INTERESTING_U32: Final = (0, 1, 2, 3, 4, 5, 6, 0x7F, 0xFF, 0x100, 0xFFF, 0x1000, 0xFFFF,
                          0xFFFA, 0xFFFB, 0xFFFC, 0x10000, 0x7FFF_FFFF, 0xFFFF_FFFF)  # fmt: skip
KNOWN_TYPES: Final = tuple(int(t) for t in fr.FrameType)


def _interesting_u32(rng: random.Random) -> int:
    return rng.choice(INTERESTING_U32) if rng.random() < 0.8 else rng.getrandbits(32)


def mutate(data: bytes, rng: random.Random, *, rounds: int = 0) -> bytes:
    """`data` with 1..4 random mutations (flip, overwrite, insert, delete, truncate, a u32
    written over any offset, a type or flags byte changed, a slice repeated)."""
    out = bytearray(data)
    for _ in range(rounds or rng.randint(1, 4)):
        n = len(out)
        kind = rng.randrange(9)
        i = rng.randrange(n + 1)
        if kind == 0 and n:  # flip one bit
            i = min(i, n - 1)
            out[i] ^= 1 << rng.randrange(8)
        elif kind == 1 and n:  # overwrite a byte
            out[min(i, n - 1)] = rng.randrange(256)
        elif kind == 2:  # insert random bytes
            out[i:i] = rng.randbytes(rng.randint(1, 8))
        elif kind == 3 and n:  # delete a slice
            del out[i : i + rng.randint(1, 8)]
        elif kind == 4:  # truncate
            del out[i:]
        elif kind == 5:  # a u32 (a length prefix?) over any offset
            out[i : i + 4] = struct.pack("<I", _interesting_u32(rng))
        elif kind == 6 and n > 4:  # the type byte of the first frame
            out[4] = rng.choice(KNOWN_TYPES) if rng.random() < 0.5 else rng.randrange(256)
        elif kind == 7 and n > 5:  # the flags byte of the first frame
            out[5] = rng.choice((1, 2, 0x80, 0xFF, rng.randrange(256)))
        elif n:  # repeat a slice
            j = rng.randint(i, min(n, i + 16))
            out[j:j] = out[i:j]
    return bytes(out)


# ---------------------------------------------------------------------------- Hello.options

_NUMBERS: Final = (0, 0.0, -0.0, 0.05, 0.049, 0.99, 0.991, 1, 30, 31, 32, 31.9, 150,
                   500, 1000, 1000.5, 5000, 5001, 10_000, 10_001, -1, 1e308, -1e308,
                   2**53 + 1)  # fmt: skip
_KEYS: Final = {
    "vad": ("threshold", "min_speech_ms", "min_silence_ms", "speech_pad_ms", "barge_in",
            "barge_in_min_speech_ms", "echo_cancel", "echo_threshold", "max_turn_s",
            "smart_end", "max_silence_ms", "smart_threshold", "smart_reask_ms"),
    "asr": ("transcripts", "partial_ms"),
}  # fmt: skip


def option_value(rng: random.Random, bugs: frozenset[str]) -> Any:
    r = rng.random()
    if r < 0.45:
        return rng.choice(_NUMBERS) if rng.random() < 0.7 else rng.uniform(-1e4, 1e4)
    if r < 0.6:
        return rng.random() < 0.5
    if r < 0.7 and "options-huge-int" not in bugs:
        return rng.choice((1, -1)) * 10 ** rng.randint(300, 400)
    if r < 0.75 and "options-nan-literal" not in bugs:
        return rng.choice((float("nan"), float("inf"), float("-inf")))
    return rng.choice((None, "", "x", [], {}, [1], {"a": 1}))


_HEX: Final = "0123456789abcdef"


def session_id_hex(rng: random.Random) -> str:
    hexits = "".join(rng.choice(_HEX) for _ in range(32))
    return hexits.upper() if rng.random() < 0.1 else hexits


def resume_section(rng: random.Random, *, good: float = 0.6) -> Any:
    """Hello.options.resume (SPEC §6.4): with probability `good` well-formed (some session:
    RESUME_FAILED unless it exists), else one field off (BAD_OPTIONS)."""
    section: dict[str, Any] = {
        "session_id": session_id_hex(rng),
        "token": rng.choice(("a" * 64, rng.randbytes(32).hex(), "t", "é" * 256, "x" * 256)),
        "received": rng.choice((0, 1, 42, 2**31, 2**64, 10**30)),
    }
    if rng.random() < good:
        return section
    key = rng.choice(("session_id", "token", "received", "missing", "section"))
    if key == "session_id":
        section[key] = rng.choice(
            (
                section["session_id"][:31],
                section["session_id"] + "0",
                "0x" + section["session_id"][2:],
                " " + section["session_id"][1:],
                section["session_id"][:31] + "\n",  # `$` would let it through
                "g" * 32,
                "\u0660" * 32,  # Arabic-Indic zeros: \d, but not hex digits
                int("1" * 32),
                None,
            )
        )
    elif key == "token":
        section[key] = rng.choice(("", "x" * 257, 7, None, ["t"]))
    elif key == "received":
        section[key] = rng.choice((-1, -(2**64), True, False, 1.0, 0.5, "3", None))
    elif key == "missing":
        del section[rng.choice(("session_id", "token", "received"))]
    else:
        return rng.choice((None, [], "x", 1, True))  # None: as if absent
    return section


def options_text(rng: random.Random, bugs: frozenset[str] | None = None) -> str:
    """A Hello.options text: often a good object, else a bad value, another JSON type, broken
    JSON, deep nesting; sometimes a resume section (good or bad)."""
    bugs = known_bugs.active() if bugs is None else bugs
    r = rng.random()
    if r < 0.2:
        return ""
    if r < 0.3:
        return json.dumps({"resume": resume_section(rng)})
    if r < 0.75:
        obj: dict[str, Any] = {}
        for section in rng.sample(("vad", "asr", "zz"), rng.randint(0, 3)):
            if rng.random() < 0.1:
                obj[section] = option_value(rng, bugs)  # a section that is not an object
                continue
            keys = _KEYS.get(section, ("a",))
            chosen = rng.sample(keys, rng.randint(0, min(3, len(keys))))
            if rng.random() < 0.2:
                chosen.append("unknown_key")
            obj[section] = {k: option_value(rng, bugs) for k in chosen}
        if rng.random() < 0.1:
            obj["resume"] = resume_section(rng)
        return json.dumps(obj)
    if r < 0.85:
        return rng.choice(("[]", "1", "null", '"s"', "true", " {} ", "{}", "\ufeff{}", "[{}]"))
    if r < 0.93:
        depth = rng.choice((10, 500, 5000, 100_000))
        return rng.choice(("[" * depth, '{"a":' * depth + "1" + "}" * depth))
    return rng.randbytes(rng.randint(1, 12)).decode("utf-8", "replace")


# ---------------------------------------------------------------------------- client frames


def hello(rng: random.Random, *, valid: float = 0.8) -> fr.Hello:
    """A Hello for a tone-engine daemon: with probability `valid` a good one."""
    if rng.random() < valid:
        return fr.Hello(
            sample_rate_hz=rng.choice(fr.SUPPORTED_SAMPLE_RATES_HZ),
            uplink_rate_hz=0 if rng.random() < 0.8 else rng.choice(fr.SUPPORTED_UPLINK_RATES_HZ),
            engine=rng.choice(("", "tone")),
            voice=rng.choice(("", "sine", "low", "high")),
        )
    return fr.Hello(
        min_version=rng.choice((0, 1, 1, 2, 0xFFFF)),
        max_version=rng.choice((0, 1, 1, 2, 0xFFFF)),
        sample_rate_hz=rng.choice((48_000, 24_000, 16_000, 44_100, 0, 0xFFFF_FFFF)),
        frame_ms=rng.choice((20, 20, 10, 0)),
        uplink_rate_hz=rng.choice((0, 0, 16_000, 48_000, 8_000)),
        token=rng.choice(("", "secret", "é")),
        engine=rng.choice(("", "tone", "vits", "nope")),
        voice=rng.choice(("", "sine", "nope")),
        options=options_text(rng),
    )


def text(rng: random.Random, max_chars: int = 12) -> str:
    alphabet = "ab c.?!éü✓😀\u0000"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, max_chars)))


def client_frame(rng: random.Random, *, next_id: int, uplink_seq: int = 0) -> fr.ClientFrame:
    """A frame a client might send once the session is open (not always a legal one)."""
    r = rng.random()
    if r < 0.45:
        uid = next_id if rng.random() < 0.85 else rng.choice((0, next_id - 1, 0xFFFF_FFFF))
        return fr.Text(max(uid, 0), text(rng), end=rng.random() < 0.5)
    if r < 0.55:
        return fr.Interrupt()
    if r < 0.65:
        return rng.choice((fr.Pause(), fr.Resume()))
    if r < 0.75:
        return fr.Ping(rng.getrandbits(64))
    if r < 0.8:
        return fr.GetStats()
    if r < 0.9:
        seq = uplink_seq if rng.random() < 0.9 else rng.choice((0, uplink_seq + 300))
        return fr.AudioUp(seq, bytes(2 * rng.choice((0, 160, 320))))
    return hello(rng)
