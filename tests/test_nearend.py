"""The near end over the echo (`duplexd._uplink.nearend`): the microphone louder than the
reference explains is the user talking, found within a few frames of their onset, and never
with the echo alone (in every generated room, the echo's tail after the agent stops
included); the uplink then asks a barge-in for the plain VAD threshold, so it comes sooner."""

from __future__ import annotations

import numpy as np
import pytest
from test_echo import QUIET, agent_voice, run, user_voice

from bench.rooms import ROOMS, ROOMS_BY_NAME, db, noise
from duplexd._uplink import nearend
from duplexd._uplink.nearend import HOLD_MS, NearEndOnset

pytestmark = pytest.mark.integration
RATE = 16_000


def _onset(audio: np.ndarray) -> int:
    """The first sample of `audio` within 30 dB of its loudest 10 ms."""
    frames = audio[: len(audio) // 160 * 160].reshape(-1, 160)
    energy = np.mean(np.square(frames, dtype=np.float64), axis=1)
    return int(np.argmax(energy > energy.max() / 1000)) * 160


@pytest.mark.parametrize("room", [r.name for r in ROOMS])
def test_the_echo_alone_is_never_taken_for_the_user(room: str) -> None:
    ref = agent_voice()
    total = len(ref) + RATE  # (and the second of echo tail and noise after it)
    echo = ROOMS_BY_NAME[room].echo(ref, total)
    for level in (QUIET, -55.0):
        ec, _ = run(ref, echo + noise(total, level))
        assert ec.frames > 0 and ec.near_end.frames == 0, level


@pytest.mark.parametrize("room", ["delay", "rt60-300", "rt60-600"])
@pytest.mark.parametrize("at_s", [2.0, 5.0])
def test_the_user_louder_than_the_echo_is_found_at_their_onset(room: str, at_s: float) -> None:
    """The user 10 dB over the echo while the agent talks: found within 80 ms of their first
    syllable (and held `HOLD_MS` past the last frame found)."""
    start, first = _user_over_the_echo(room, at_s)
    assert start <= first <= start + round(0.080 * RATE)


def _user_over_the_echo(room: str, at_s: float) -> tuple[int, int]:
    """The user ("Wait, stop, ...") 10 dB over the agent's echo in `room` from `at_s` on: (the
    sample of their onset, the first sample the check found the near end at)."""
    ref, user = agent_voice(), user_voice()
    total = len(ref) + RATE
    echo = ROOMS_BY_NAME[room].echo(ref, total)
    at = round(at_s * RATE)
    span = slice(at, at + len(user))
    talk = np.zeros(total, dtype=np.float32)
    talk[span] = user[: len(talk[span])] * 10 ** ((db(echo[span]) + 10 - db(user)) / 20)
    start = at + _onset(user)
    found: list[int] = []
    run(
        ref,
        echo + talk + noise(total, QUIET),
        each_frame=lambda ec: found.append(ec.near_end.until),
    )
    return start, next(u for u in found if u > start) - round(HOLD_MS * RATE / 1000)


def test_no_reference_no_verdict() -> None:
    """Nothing sent (or under -50 dBFS): the microphone's level says nothing of an echo."""
    onset = NearEndOnset()
    loud = np.full(RATE, 0.3, dtype=np.float32)
    onset.add(loud, np.zeros(RATE, dtype=np.float32), 0)
    onset.add(loud, np.full(RATE, 1e-3, dtype=np.float32), RATE)
    assert (onset.frames, onset.until) == (0, -1)


def test_a_gap_of_zeros_does_not_teach_it_that_any_echo_is_the_user() -> None:
    """2.5 s of digital silence in the uplink (a seq gap filled with zeros, a muted track)
    while the reference plays: not taken as the echo's return loss, so the echo after it is
    still the echo (it had flagged every frame after such a gap)."""
    ref = agent_voice()
    total = len(ref) + RATE
    mic = ROOMS_BY_NAME["delay"].echo(ref, total) + noise(total, QUIET)
    mic[2 * RATE : round(4.5 * RATE)] = 0.0
    ec, _ = run(ref, mic)
    assert ec.near_end.frames == 0


def test_a_louder_echo_path_is_learned_again() -> None:
    """The echo 20 dB louder from 4 s on (the loudspeaker turned up; the canceller told
    nothing): flagged at most a second, then learned as the echo (`reset`); none after."""
    ref = agent_voice()
    total = len(ref) + RATE
    echo = ROOMS_BY_NAME["delay"].echo(ref, total)
    echo[4 * RATE :] *= 10.0
    counts: list[int] = []
    ec, _ = run(
        ref, echo + noise(total, QUIET), each_frame=lambda ec: counts.append(ec.near_end.frames)
    )
    assert counts[round(6 * RATE / 320)] == ec.near_end.frames  # (nothing flagged after 6 s)
    assert ec.near_end.frames <= 110


def test_reset_forgets_the_echo() -> None:
    onset = NearEndOnset()
    rng = np.random.default_rng(0)
    far = (0.1 * rng.standard_normal(2 * RATE)).astype(np.float32)
    onset.add(0.1 * far, far, 0)  # (2 s of an echo 20 dB under its reference)
    assert onset.frames == 0
    onset.add(far, far, 2 * RATE)  # 20 dB louder at once: the near end
    assert onset.frames > 0
    onset.reset()
    flagged = onset.frames
    onset.add(far, far, 4 * RATE)  # (a new path: learned, not judged, for its first 0.5 s)
    assert onset.frames == flagged


@pytest.mark.parametrize(
    ("room", "at_s"), [("rt60-100", 4.7), ("rt60-300", 4.0), ("nonlinear", 2.1)]
)
@pytest.mark.parametrize("bands", [True, False])
def test_a_user_the_broadband_level_misses_stands_out_in_bands(
    room: str, at_s: float, bands: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Onsets where "Wait" is not 6 dB over what the agent's loudest frame of the room's tail
    explains, broadband, but is in bands where the agent's voice is quiet: found within 80 ms
    by the per-band check, and only at the next word (over half a second later) without it."""
    if not bands:
        monkeypatch.setattr(nearend, "BANDS_OVER", len(nearend.BAND_EDGES_HZ))  # (> bands)
    start, first = _user_over_the_echo(room, at_s)
    if bands:
        assert start <= first <= start + round(0.080 * RATE)
    else:
        assert first > start + round(0.500 * RATE)
