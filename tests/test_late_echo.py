"""The late echo's suppressor (late.py): the turn's audio less the room's tail AEC3 leaves.

On its own: every position comes back once, in order, `LOOKAHEAD` and a hop late, exactly as
it came where nothing is modelled; its fits stay finite and at least 0. Through a session's
uplink in the generated rooms (`bench.aec_rooms.replay`, the daemon's own batches on a
MockClock): the echo in the turn's audio at least 25 dB down in the reverberant rooms (AEC3
alone: 20 in the RT60 600 ms room), the user's level under double talk within 0.2 dB of AEC3's
alone, and the VAD's events the same with it as without (it only writes the turn's ring).
AEC3 alone is the same uplink with `FLOOR` at 1: nothing taken out."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.aec_rooms import replay
from bench.rooms import ROOMS_BY_NAME, db, noise
from duplexd._uplink import late
from duplexd._uplink.late import HOP, LOOKAHEAD, LateEcho

RATE = 16_000
WINDOW = 512


def feed(
    le: LateEcho, mic: np.ndarray, far: np.ndarray | None, *, prob: float = 0.0
) -> list[tuple[int, np.ndarray]]:
    """`mic` through `le` as the uplink does: AEC3's hops handed (`far`, unless None) before
    the VAD's windows of the same samples; the (position, samples) given back."""
    got: list[tuple[int, np.ndarray]] = []
    handed = 0
    for pos in range(0, len(mic) - WINDOW + 1, WINDOW):
        while far is not None and handed < pos + WINDOW:
            le.add(mic[handed : handed + HOP], far[handed : handed + HOP], handed)
            handed += HOP
        at, done = le.process(pos, mic[pos : pos + WINDOW], prob)
        if len(done):
            got.append((at, done))
    return got


def joined(got: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """The pieces given back, checked to follow each other from position 0."""
    assert got and got[0][0] == 0
    for (at, done), (next_at, _) in itertools.pairwise(got):
        assert next_at == at + len(done)
    return np.concatenate([done for _, done in got])


@pytest.mark.unit
def decided(samples: int) -> int:
    """How much of `samples` fed comes back: whole hops whose lookahead came, less the hop
    each one finishes before it."""
    return (samples - LOOKAHEAD) // HOP * HOP - HOP


def test_where_nothing_is_modelled_the_audio_comes_back_exactly_later() -> None:
    rng = np.random.default_rng(1)
    mic = rng.normal(0, 0.1, 4 * RATE).astype(np.float32)
    # AEC3 handed every hop, with a silent reference: no echo modelled, every gain 1
    out = joined(feed(LateEcho(), mic, np.zeros_like(mic)))
    assert len(out) == decided(len(mic))
    np.testing.assert_allclose(out, mic[: len(out)], atol=1e-6)


@pytest.mark.unit
def test_every_position_comes_back_once_and_afresh_after_a_jump() -> None:
    rng = np.random.default_rng(2)
    mic = rng.normal(0, 0.1, RATE).astype(np.float32)
    far = rng.normal(0, 0.1, RATE).astype(np.float32)
    le = LateEcho()
    out = joined(feed(le, mic, far))
    assert len(out) == decided(len(mic) // WINDOW * WINDOW)
    # a position that does not follow: nothing from before it comes back
    jump = 10 * WINDOW + 7 * RATE  # (a whole number of hops, as AEC3's are)
    for k in range(0, 8 * WINDOW, HOP):
        le.add(mic[k : k + HOP], far[k : k + HOP], jump + k)
    got = [le.process(jump + w * WINDOW, mic[w * WINDOW : (w + 1) * WINDOW], 0.0) for w in range(8)]
    pieces = [(at, done) for at, done in got if len(done)]
    assert pieces[0][0] == jump
    for (at, done), (next_at, _) in itertools.pairwise(pieces):
        assert next_at == at + len(done)
    assert sum(len(done) for _, done in pieces) == decided(8 * WINDOW)  # (none before it)


@pytest.mark.unit
def test_with_aec3_idle_nothing_is_given_back_and_the_ring_keeps_its_audio() -> None:
    le = LateEcho()
    mic = np.random.default_rng(3).normal(0, 0.1, RATE).astype(np.float32)
    assert feed(le, mic, None) == []
    assert le.removed_db == 0.0


@pytest.mark.unit
@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=40)
)
def test_the_couplings_stay_finite_and_at_least_zero(
    hops: list[tuple[float, float, float]],
) -> None:
    """Any run of microphone and reference levels (silence, a constant, a burst) leaves every
    tail's coupling finite and >= 0: a singular or negative fit takes nothing out."""
    le = LateEcho()
    rng = np.random.default_rng(0)
    pos = 0
    for mic_level, far_level, prob in hops:
        for _ in range(4):
            mic = (mic_level * rng.normal(0, 0.1, WINDOW)).astype(np.float32)
            far = (far_level * rng.normal(0, 0.1, WINDOW)).astype(np.float32)
            for k in range(0, WINDOW - WINDOW % HOP, HOP):
                le.add(mic[k : k + HOP], far[k : k + HOP], pos + k)
            le.process(pos, mic, prob)
            pos += WINDOW
    c = le._coupling()
    assert np.all(np.isfinite(c)) and np.all(c >= 0)


# ---------------------------------------------------------------------- through the uplink


def voices() -> tuple[np.ndarray, np.ndarray]:
    from bench.speech import clip

    agent = np.concatenate(
        [
            clip("Sure, I can help you with that. The weather is sunny with a light breeze."),
            clip("Let me check the schedule for tomorrow; there are three meetings."),
        ]
    )
    return agent, clip("Wait, stop, I have a question.", other_speaker=True)


def turn_audio(agent: np.ndarray, mic: np.ndarray) -> tuple[np.ndarray, list]:
    uplink, events, _ = replay(agent, mic)
    return uplink._audio(0, uplink._pos), [(k, type(e).__name__) for k, e in events]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("room", "min_db"),
    [("rt60-300", 25.0), ("rt60-600", 25.0), ("path-change", 20.0)],  # (measured 38, 34, 25)
)
def test_the_rooms_tail_is_taken_out_of_the_turns_audio(
    room: str, min_db: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ERLE of the turn's audio from its second second on; AEC3 alone (measured 32, 20, 19)
    at least 3 dB short of it. The path change: AEC3 leaks while it finds the new path, and
    the VAD scores some of that as speech, which is left whole."""
    agent, _ = voices()
    total = len(agent) + RATE
    echo = ROOMS_BY_NAME[room].echo(agent, total)
    mic = echo + noise(total, -70.0)
    out, events = turn_audio(agent, mic)
    span = slice(RATE, min(len(agent), len(out)))  # (after AEC3's first second)
    assert db(echo[span]) - db(out[span]) >= min_db
    monkeypatch.setattr(late, "FLOOR", 1.0)  # AEC3 alone: the same uplink, nothing taken out
    alone, events_alone = turn_audio(agent, mic)
    assert db(echo[span]) - db(alone[span]) <= db(echo[span]) - db(out[span]) - 3.0
    assert events == events_alone  # (the VAD hears AEC3's output either way)


@pytest.mark.integration
@pytest.mark.parametrize("room", ["rt60-600", "nonlinear"])
def test_the_user_talking_over_the_echo_keeps_their_level(
    room: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user 10 dB above the echo, 1.3 s and 3.7 s in: their level in the turn's audio
    within 0.2 dB of AEC3's alone (nothing is taken out, nor learned, while they talk)."""
    agent, user = voices()
    total = len(agent) + RATE
    echo = ROOMS_BY_NAME[room].echo(agent, total)
    for at in (round(1.3 * RATE), round(3.7 * RATE)):
        talk = np.zeros(total, dtype=np.float32)
        span = slice(at, at + len(user))
        talk[span] = user * 10 ** ((db(echo[span]) + 10 - db(user)) / 20)
        mic = echo + talk + noise(total, -55.0)
        with monkeypatch.context() as m:
            m.setattr(late, "FLOOR", 1.0)
            alone, events_alone = turn_audio(agent, mic)
        out, events = turn_audio(agent, mic)
        assert abs(db(out[span]) - db(alone[span])) <= 0.2
        assert events == events_alone
