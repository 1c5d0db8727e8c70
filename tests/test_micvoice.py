"""The microphone itself, heard while the user is surely talking over the echo
(`duplexd._uplink.micvoice`, `NearEndOnset.sure_over`): AEC3's suppressor ducks a user's first
syllables over a loud stretch of the echo, and the barge-in that waited for AEC3's output to
let them through comes one window after the check is sure. One stray frame found louder (the
echo path changed) is not sure, and the echo alone never barges in. The replays are
`bench.aec_rooms`' (its voices, rooms and onsets: bench/results/README.md, "The microphone
itself")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.aec_rooms import FRAME, RATE, _onset, replay, voices
from bench.rooms import ROOMS_BY_NAME, db, noise
from duplexd._uplink import nearend
from duplexd._uplink.micvoice import CAPACITY, MicVoice
from duplexd._uplink.nearend import NearEndOnset
from duplexd._uplink.vad import WINDOW, BargeIn, SileroVad, SpeechStart, VadModel

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bench_voices(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    return voices(Path(tmp_path_factory.mktemp("voices")))


def _trial_onset(agent: np.ndarray, i: int, trials: int = 32) -> int:
    """Where `bench.aec_rooms.measure` starts the user in its trial `i` of `trials`."""
    return round((1.0 + i * (len(agent) / RATE - 3.5) / (trials - 1)) * RATE) + 37 * i


@pytest.mark.parametrize(("trial", "within_ms"), [(7, 100), (11, 60)])
def test_a_ducked_onset_is_heard_in_the_microphone(
    bench_voices: tuple[np.ndarray, np.ndarray], trial: int, within_ms: int
) -> None:
    """RT60 300 ms, the user 10 dB over the echo on average: in trial 7 "Wait," starts under a
    loud stretch of the agent and AEC3's output held it 18-32 dB under the user for 70 ms and
    again after (the barge-in came 740 ms late before; trial 11: 180 ms)."""
    late, mic_windows = _barge_in_ms("rt60-300", trial, 32, bench_voices)
    assert late is not None and 0 <= late <= within_ms and mic_windows > 0, late


def _barge_in_ms(
    room: str, trial: int, trials: int, voices_: tuple[np.ndarray, np.ndarray]
) -> tuple[int | None, int]:
    """`bench.aec_rooms`' trial `trial` of `trials` in `room`: (the user's onset -> the
    barge-in in ms, or None: none within 2 s; the windows the microphone itself was heard in)."""
    agent, user = voices_
    total = len(agent) + RATE
    echo = ROOMS_BY_NAME[room].echo(agent, total)
    on = _onset(user)
    gain = 10 ** ((db(echo[RATE : len(agent)]) + 10.0 - db(user[on:])) / 20)
    at = _trial_onset(agent, trial, trials)
    talk = np.zeros(total, dtype=np.float32)
    talk[at : at + len(user)] = gain * user[: total - at]
    mic = echo + talk + noise(total, -55.0, seed=trial + 1)
    uplink, events, _ = replay(agent, mic, seed=trial + 1)
    barge = [k for k, e in events if isinstance(e, BargeIn) and k >= at // FRAME]
    late = (barge[0] - (at + on) // FRAME) * 20 if barge else None
    return (late if late is not None and late <= 2000 else None), uplink.counters.mic_windows


@pytest.mark.parametrize("bands", [True, False])
def test_wait_as_the_agent_resumes_is_heard_in_bands(
    bench_voices: tuple[np.ndarray, np.ndarray], bands: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RT60 100 ms, "Wait," 3-15 dB over the echo 180 ms after the agent resumes from its first
    pause (trial 10 of 48): AEC3 ducks all of it, and it is found only in bands. Frames found
    in bands make the check sure, so the microphone is heard: within 100 ms (740 ms, at the
    next word, when only broadband frames made it sure; and without the bands)."""
    if not bands:
        monkeypatch.setattr(nearend, "BANDS_OVER", len(nearend.BAND_EDGES_HZ))  # (> bands)
    late, mic_windows = _barge_in_ms("rt60-100", 10, 48, bench_voices)
    if bands:
        assert late is not None and 0 <= late <= 100 and mic_windows > 0, late
    else:
        assert late is None or late > 500, late


@pytest.mark.parametrize("sooner", [True, False])
def test_an_onset_just_after_the_first_pause_is_judged(
    bench_voices: tuple[np.ndarray, np.ndarray], sooner: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RT60 600 ms, "Wait," 250 ms after the agent resumes from its first pause (trial 0 of 48,
    at 1.05 s): with nothing judged for `GUARD_MS` (150 ms) after the reference comes back and
    0.5 s of the echo learned, the check judges from 1.03 s and the barge-in comes within 100
    ms; with 300 ms and 1 s it judged from 1.66 s, after "Wait," (AEC3's output alone: over
    100 ms)."""
    if not sooner:
        monkeypatch.setattr(nearend, "GUARD_MS", 300.0)
        monkeypatch.setattr(nearend, "_MIN_RATIOS", 100)
    late, _ = _barge_in_ms("rt60-600", 0, 48, bench_voices)
    assert late is not None
    assert late <= 100 if sooner else late > 100, late


def test_a_changed_echo_path_is_not_the_user(bench_voices: tuple[np.ndarray, np.ndarray]) -> None:
    """The echo path 60 -> 150 ms at 3 s, the uplink 30 ms late on average (seed 7): before
    `SURE_FRAMES`, the check found one frame louder than the echo explained, and heard in the
    microphone then, that frame's echo barged in (`bench.aec_jitter`). Since the reference
    moves at the first verdict that finds the echo moved (not at the second), no frame of
    this draw is louder than the echo explains (nor of seeds 0-11: measured), and the check
    is sure of nothing; one louder frame alone is `test_sure_only_after_three_of_five_frames`."""
    agent, _ = bench_voices
    total = len(agent) + RATE
    echo = ROOMS_BY_NAME["path-change"].echo(agent, total)
    uplink, events, _ = replay(agent, echo + noise(total, -55.0, seed=7), jitter_ms=30, seed=7)
    assert not [e for _, e in events if isinstance(e, BargeIn | SpeechStart)]
    assert uplink._echo is not None and uplink._echo.realignments == 2
    assert not uplink._echo.near_end.sure_over(0, uplink._pos)


def test_sure_only_after_three_of_five_frames() -> None:
    """Frames judged against a learned return loss: one louder frame moves `until`, and the
    check is sure of nothing; the third louder one in five makes it sure of the frames from the
    first of them on (not the echo's frame between, before, or after); a reset forgets it."""
    ne = NearEndOnset()
    far = np.full(160, 0.1, dtype=np.float32)
    echo = 0.01 * far  # (a return loss of 40 dB)
    pos = 0
    for _ in range(200):  # the reference's first `GUARD_MS`, then its return loss learned
        ne.add(echo, far, pos)
        pos += 160
    assert ne.judging
    loud = 10 * echo  # (20 dB over it: the user)

    def frame(near: np.ndarray) -> int:
        nonlocal pos
        ne.add(near, far, pos)
        pos += 160
        return pos - 160

    start = pos
    first = frame(loud)
    assert ne.until > pos and not ne.sure_over(0, pos + 10_000)
    frame(echo)
    frame(loud)
    assert not ne.sure_over(0, pos + 10_000)
    frame(loud)
    assert ne.sure_over(first, first + 1) and not ne.sure_over(start - 500, first)
    assert not ne.sure_over(pos, pos + 10_000)  # (nothing after the last louder frame)
    frame(loud)
    assert ne.sure_over(pos - 1, pos)  # (the span goes on with the louder frames)
    ne.reset()
    assert not ne.judging and not ne.sure_over(0, pos + 10_000)
    for _ in range(3):
        frame(loud)
    assert not ne.sure_over(0, pos + 10_000)  # (nothing judged until the echo is learned again)


def test_mic_voice_scores_the_windows_it_holds() -> None:
    """The same probabilities as a silero stream of its own fed the same windows; a window not
    held (not yet arrived, or overwritten) is 0.0."""
    model = VadModel()
    rng = np.random.default_rng(3)
    audio = (0.1 * rng.standard_normal(CAPACITY + 4 * WINDOW)).astype(np.float32)
    mic, ref = MicVoice(model), SileroVad(model)
    assert mic.prob(0) == 0.0  # (nothing yet)
    got, want = [], []
    for start in range(0, len(audio), 300):  # (pieces that do not line up with windows)
        mic.add(audio[start : start + 300])
    for pos in range(len(audio) - CAPACITY + WINDOW, len(audio) - WINDOW + 1, WINDOW):
        got.append(mic.prob(pos))
        want.append(ref.prob(audio[pos : pos + WINDOW]))
    assert got == pytest.approx(want, abs=1e-6)
    assert mic.prob(0) == 0.0  # (overwritten)
    assert mic.prob(len(audio)) == 0.0  # (not arrived)


def test_mic_voice_scores_the_windows_between_with_a_stream_of_their_own() -> None:
    """The half-step's windows (halfstep.py), half a window off the VAD's, interleaved with
    them: each phase scores as a silero stream of its own fed its windows, the one that wraps
    around the end of the ring included."""
    model = VadModel()
    rng = np.random.default_rng(6)
    audio = (0.1 * rng.standard_normal(2 * CAPACITY)).astype(np.float32)
    mic = MicVoice(model)
    mic.add(audio[: CAPACITY + WINDOW])
    first = WINDOW + WINDOW // 2
    vads = {0: SileroVad(model), WINDOW // 2: SileroVad(model)}
    got, want = [], []
    for pos in range(first, CAPACITY + WINDOW // 2, WINDOW // 2):  # (ends at CAPACITY + WINDOW)
        got.append(mic.prob(pos))
        want.append(vads[pos % WINDOW].prob(audio[pos : pos + WINDOW]))
    assert got == pytest.approx(want, abs=1e-6)
    assert any(p % CAPACITY > CAPACITY - WINDOW for p in range(first, CAPACITY, WINDOW // 2))


def test_mic_voice_starts_afresh_after_a_skipped_window_and_keeps_a_long_gap() -> None:
    """A window after one not scored is scored as a fresh stream would; one `add` longer than
    it keeps (a long gap filled with silence) leaves its last `CAPACITY` samples."""
    model = VadModel()
    rng = np.random.default_rng(4)
    audio = (0.1 * rng.standard_normal(3 * CAPACITY)).astype(np.float32)
    mic = MicVoice(model)
    mic.add(audio)
    end = len(audio)
    assert mic.prob(end - CAPACITY - WINDOW) == 0.0  # (no longer held)
    last = end - WINDOW
    mic.prob(last - 4 * WINDOW)
    got = mic.prob(last)  # (three windows skipped)
    assert got == pytest.approx(SileroVad(model).prob(audio[last:]), abs=1e-6)
