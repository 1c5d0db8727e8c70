"""Hypothesis strategies for the stateful tests: frames of both directions, Hellos, options."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from duplexd.protocol import frames as fr

from . import known_bugs

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, 0xFFFF_FFFF_FFFF_FFFF)


def encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    return True


text = st.text(max_size=40).filter(encodable)
short = st.text(max_size=12).filter(encodable)
pcm = st.integers(0, 200).flatmap(lambda n: st.binary(min_size=2 * n, max_size=2 * n))
json_text = st.sampled_from(["", "{}", '{"a": 1}', '{"voice": "Zoë 😀", "x": [1, 2]}'])

CLIENT_FRAMES: st.SearchStrategy[fr.Frame] = st.one_of(
    st.builds(fr.Hello, u16, u16, u32, u16, u32, short, short, short, json_text),
    st.builds(fr.Text, u32, text, st.booleans()),
    st.just(fr.Interrupt()),
    st.just(fr.Pause()),
    st.just(fr.Resume()),
    st.builds(fr.Ping, u64),
    st.builds(fr.AudioUp, u32, pcm),
    st.just(fr.GetStats()),
    st.builds(fr.Played, u16, u32, u64, u64, st.booleans()),
)
SERVER_FRAMES: st.SearchStrategy[fr.Frame] = st.one_of(
    st.builds(
        fr.Welcome,
        u16,
        st.binary(min_size=16, max_size=16),
        *[u32] * 6,
        short,
        short,
        json_text,
    ),
    st.builds(fr.Audio, u16, u32, u32, pcm, st.booleans()),
    st.builds(fr.UtteranceStarted, u16, u32),
    st.builds(fr.UtteranceDone, u16, u32, u64, u32),
    st.builds(fr.Interrupted, u16, u32, u64, u32, u32, st.booleans()),
    st.just(fr.Paused()),
    st.just(fr.Resumed()),
    st.builds(fr.Pong, u64, u64),
    st.builds(fr.Error, st.sampled_from(fr.ErrorCode), text),
    st.builds(fr.SpeechStarted, u64),
    st.builds(fr.SpeechStopped, u64),
    st.builds(fr.Transcript, u64, u64, text, st.booleans()),
    st.builds(fr.Stats, json_text),
    st.builds(fr.Heard, u16, u32, u64, u32),
    st.builds(
        fr.BargeIn,
        st.sampled_from(fr.BargeInOutcome),
        st.sampled_from(fr.BargeInReason),
        u16,
        u32,
        u64,
        u64,
        text,
    ),
    st.builds(fr.TurnEnd, st.sampled_from(fr.TurnEndBy), u64, u32, u32),
    st.builds(
        fr.Words,
        u16,
        u32,
        st.lists(
            st.tuples(u32, u32, u32, u32).map(
                lambda t: fr.WordMark(
                    min(t[0], t[1]), max(t[0], t[1]), min(t[2], t[3]), max(t[2], t[3])
                )
            ),
            max_size=4,
        ).map(tuple),
    ),
)


def frames_from(peer: str) -> st.SearchStrategy[fr.Frame]:
    return CLIENT_FRAMES if peer == "client" else SERVER_FRAMES


# ---------------------------------------------------------------------------- Hello.options

_KNOWN = {
    "vad": [
        "threshold",
        "min_speech_ms",
        "min_silence_ms",
        "speech_pad_ms",
        "barge_in",
        "barge_in_min_speech_ms",
        "echo_cancel",
        "echo_threshold",
        "max_turn_s",
        "smart_end",
        "max_silence_ms",
        "smart_threshold",
        "smart_reask_ms",
        "end_reports",
    ],
    "asr": ["transcripts", "partial_ms"],
}


def option_values() -> st.SearchStrategy[Any]:
    bugs = known_bugs.active()
    numbers = st.one_of(
        st.sampled_from([0, 0.05, 0.0499, 0.99, 0.9901, 1, 30, 30.5, 31.99, 32, 5000, 10_000]),
        st.integers(-(10**6), 10**6),
        st.floats(allow_nan=False, allow_infinity=False),
    )
    if "options-huge-int" not in bugs:
        numbers |= st.integers(10**300, 10**400) | st.integers(-(10**400), -(10**300))
    if "options-nan-literal" not in bugs:
        numbers |= st.sampled_from([float("nan"), float("inf"), float("-inf")])
    scalars = st.one_of(numbers, st.booleans(), st.none(), short)
    return st.one_of(scalars, st.lists(scalars, max_size=2), st.dictionaries(short, scalars))


HEX = "0123456789abcdefABCDEF"
session_ids = st.text(HEX, min_size=32, max_size=32)


def resume_sections() -> st.SearchStrategy[Any]:
    """Hello.options.resume (SPEC §6.4): mostly well-formed (any session id, token and count:
    no such session, RESUME_FAILED), else one field off: a session id of 31/33 digits, not
    hex, with a space or "0x"; a token empty, too long or not a string; a count negative, a
    bool, a float, a string; a key missing; a section that is not an object."""
    good = st.fixed_dictionaries(
        {
            "session_id": session_ids,
            "token": st.one_of(
                st.text(HEX, min_size=64, max_size=64),
                st.text(min_size=1, max_size=8).filter(encodable),
                st.integers(250, 256).map(lambda n: "t" * n),
            ),
            "received": st.one_of(st.integers(0, 100), st.integers(0, 10**30)),
        },
        optional={"other": st.integers()},
    )
    bad_values = {
        "session_id": st.one_of(
            st.text(HEX, min_size=31, max_size=31),
            st.text(HEX, min_size=33, max_size=33),
            st.sampled_from(["", "0x" + "0" * 30, " " + "a" * 31, "a" * 31 + " ", "g" * 32]),
            st.text(min_size=32, max_size=32).filter(encodable),
            st.integers(),
            st.none(),
        ),
        "token": st.one_of(
            st.just(""), st.integers(257, 300).map(lambda n: "t" * n), st.integers(), st.none()
        ),
        "received": st.one_of(
            st.integers(-(10**30), -1),
            st.booleans(),
            st.floats(0, 100),
            st.just("1"),
            st.none(),
        ),
    }

    @st.composite
    def one_off(draw: st.DrawFn) -> Any:
        section = dict(draw(good))
        key = draw(st.sampled_from(sorted(bad_values)))
        if draw(st.booleans()):
            section[key] = draw(bad_values[key])
        else:
            del section[key]
        return section

    return st.one_of(good, one_off(), st.sampled_from([None, [], "x", 1, {}]))


def option_objects() -> st.SearchStrategy[dict[str, Any]]:
    values = option_values()
    sections = {
        name: st.dictionaries(st.sampled_from([*keys, "other"]), values, max_size=4)
        for name, keys in _KNOWN.items()
    }
    section = st.one_of(*sections.values(), values)
    return st.one_of(
        st.dictionaries(st.sampled_from(["vad", "asr", "other"]), section, max_size=3),
        st.dictionaries(st.sampled_from(["vad", "asr", "other"]), section, max_size=2).flatmap(
            lambda obj: resume_sections().map(lambda resume: {**obj, "resume": resume})
        ),
    )


# (deferred: hypothesis prints a strategy's repr when a filter retries, and these are big)


def resume_options_texts() -> st.SearchStrategy[str]:
    """Hello.options that only resume (good or bad)."""
    return st.deferred(lambda: resume_sections().map(lambda r: json.dumps({"resume": r})))


def options_texts() -> st.SearchStrategy[str]:
    """Hello.options: good and bad objects (resume sections too), other JSON values, broken
    JSON, deep nesting."""
    return st.deferred(
        lambda: st.one_of(
            st.just(""),
            option_objects().map(json.dumps),
            resume_options_texts(),
            st.sampled_from(
                ["{}", "[]", "1", "null", '"s"', "true", " {} ", "[{}]", "{", "\ufeff{}"]
            ),
            st.sampled_from([10, 1000, 100_000]).map(lambda n: "[" * n),
            short,
        )
    )


def hellos() -> st.SearchStrategy[fr.Hello]:
    """Mostly acceptable Hellos, with every field sometimes out of what v1 allows."""
    return st.builds(
        fr.Hello,
        min_version=st.one_of(st.just(1), st.just(0), u16),
        max_version=st.one_of(st.just(1), st.just(2), u16),
        sample_rate_hz=st.one_of(st.sampled_from(fr.SUPPORTED_SAMPLE_RATES_HZ), u32),
        frame_ms=st.one_of(st.just(20), u16),
        uplink_rate_hz=st.one_of(st.sampled_from([0, 16_000, 48_000]), u32),
        token=short,
        engine=short,
        voice=short,
        options=st.one_of(st.just(""), options_texts()),
    )
