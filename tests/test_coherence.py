"""The microphone's coherence with the reference (`duplexd._uplink.coherence`): the agent's echo
is coherent with what was sent at the echo's delay, the user's voice is not; and the uplink
uses it where a level alone is fooled: an echo path that gets louder (the loudspeaker turned
up) reads as a user louder than the echo explains (nearend.py), and barged in on the agent's
own voice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_echo import QUIET, agent_voice, run, user_voice

from bench.aec_louder import run_case
from bench.aec_rooms import FRAME, RATE, voices
from bench.rooms import ROOMS_BY_NAME, db, noise
from duplexd._uplink import coherence
from duplexd._uplink.coherence import ECHO_COHERENCE, SPAN_MS, EchoCoherence

pytestmark = pytest.mark.integration
SPAN = round(SPAN_MS * RATE / 1000)


@pytest.fixture(scope="module")
def bench_voices(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    return voices(Path(tmp_path_factory.mktemp("voices")))


def _spans(near: np.ndarray, far: np.ndarray, delay: int) -> list[float]:
    """The coherence of every span ending at a 20 ms frame's end, fed frame by frame, where
    the reference is sounding."""
    c = EchoCoherence()
    got = []
    for end in range(FRAME, len(near) + 1, FRAME):
        c.add(near[end - FRAME : end], far[end - FRAME : end], end - FRAME, delay)
        got.append(c.of(end, delay))
    return [x for x in got if x is not None]


def test_the_echo_is_coherent_with_the_reference_and_another_voice_is_not() -> None:
    """The agent's voice 40 ms later at -10 dB over quiet noise (the reference leads it so):
    coherent in nearly every span; at the wrong delay, or the user's voice (the bench's second
    speaker) instead of the echo at the same level, in none."""
    ref, user = agent_voice(), user_voice()
    delay = round(0.040 * RATE)
    echo = np.zeros_like(ref)
    echo[delay:] = ref[:-delay] * 10 ** (-10 / 20)
    near = echo + noise(len(ref), QUIET)
    spans = _spans(near, ref, delay)
    assert len(spans) > 100 and np.mean(np.asarray(spans) >= ECHO_COHERENCE) >= 0.9
    assert max(_spans(near, ref, delay + round(0.020 * RATE))) < ECHO_COHERENCE
    other = np.zeros_like(ref)
    other[: len(user)] = user[: len(ref)] * 10 ** ((db(echo) - db(user)) / 20)
    assert max(_spans(other + noise(len(ref), QUIET), ref, delay)) < 0.5


def test_nothing_is_judged_without_a_reference_or_what_it_needs() -> None:
    c = EchoCoherence()
    loud = np.random.default_rng(0).normal(0.0, 0.1, RATE).astype(np.float32)
    c.add(loud, np.full(RATE, 1e-3, dtype=np.float32), 0, 640)  # (-60 dBFS: nothing sent)
    assert c.of(RATE, 640) is None
    c.add(loud, loud, RATE, 640)
    assert c.of(2 * RATE, 0) == pytest.approx(1.0)  # (the same signal)
    assert c.of(2 * RATE + 1, 0) is None  # not held yet
    assert c.of(2 * RATE, -1) is None
    c.add(loud, loud, 4 * RATE, 640)  # a gap: what was held does not line up with it
    assert c.of(4 * RATE + SPAN, 0) == pytest.approx(1.0)
    assert c.of(4 * RATE + SPAN - 1, 0) is None
    assert c.judged == 2


def test_the_canceller_hands_it_the_delay_the_echo_was_found_at() -> None:
    """In the rt60-100 room, once the reference is moved to lead the echo by 40 ms, the
    presence check finds its direct path 30 ms after it (within the slack: not moved again);
    the coherence is taken there, not at the lead (its median over the echo 0.86 against 0.39,
    measured)."""
    ref = agent_voice()
    total = len(ref) + RATE
    echo = ROOMS_BY_NAME["rt60-100"].echo(ref, total)
    ec, _ = run(ref, echo + noise(total, QUIET))
    assert ec.realignments == 1 and ec.coherence.delay == round(0.030 * RATE)


def test_a_louder_echo_is_not_heard_as_the_users_voice(
    bench_voices: tuple[np.ndarray, np.ndarray],
) -> None:
    """The delay room's echo 8 dB louder from 3 s on (the loudspeaker turned up), nobody
    talking: the near-end check finds the microphone louder than the echo it learned and is
    sure of it, so the microphone itself would be heard (the agent's voice, as silero hears
    it); it is coherent with the reference, so it is not: no window counts the microphone's
    voice, and the barge-in it made (3.48 s) is gone. Without the coherence (a threshold none
    reaches) six windows did. What is left are AEC3's leaks of the louder echo over the
    lowered threshold, in the stretch's first 32 ms (too short to judge) and at 3.38 s: a
    louder path still barges in (bench/results/README.md, "Coherent with the reference")."""
    agent, _ = bench_voices
    with_ = run_case(agent, "delay", 8.0, 3.0, check=True)
    without = run_case(agent, "delay", 8.0, 3.0, check=False)
    assert with_["mic_windows"] == 0 < without["mic_windows"] and with_["coherent"] > 0
    assert coherence.ECHO_COHERENCE == ECHO_COHERENCE  # (put back)
    barged, barged_without = with_["barge_ins"], without["barge_ins"]
    assert set(barged) < set(barged_without), (with_, without)
    assert all(3.0 <= t < 3.5 for t in barged_without), without


def test_a_stretch_found_to_be_the_echo_stays_the_echo() -> None:
    """Once a stretch of louder microphone is found coherent, its later spans are the echo
    whatever they read (a coherence about the line flipped the near end on and off, window by
    window, and each flip could barge in again); a new stretch is judged afresh."""
    rng = np.random.default_rng(1)
    ref = rng.normal(0.0, 0.1, 2 * RATE).astype(np.float32)
    other = rng.normal(0.0, 0.1, 2 * RATE).astype(np.float32)
    c = EchoCoherence()
    c.add(ref[:RATE], ref[:RATE], 0, 0)  # the echo: the reference itself
    assert c.is_echo(RATE, since=RATE - SPAN)
    c.add(other[RATE:], ref[RATE:], RATE, 0)  # then a voice that is not
    now = c.of(2 * RATE, 0, since=RATE - SPAN)
    assert now is not None and now < 0.3
    assert c.is_echo(2 * RATE, since=RATE - SPAN)  # (the same stretch)
    assert not c.is_echo(2 * RATE, since=2 * RATE - SPAN)  # (a new one)
