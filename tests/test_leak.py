"""leak.py: the agent's voice that AEC3 let through, told from a user's voice over the echo."""

from __future__ import annotations

import numpy as np
import pytest

from bench.rooms import ROOMS_BY_NAME, db, noise
from duplexd._uplink.leak import HOLD_MS, LEAK_SCORE, LEAK_SHARE, SPAN_MS, LeakHold, leak_score
from duplexd._uplink.presence import PRESENCE_LAG_S

RATE = 16_000
SPAN = round(SPAN_MS * RATE / 1000)
LAGS = round(PRESENCE_LAG_S * RATE)


def _voices() -> tuple[np.ndarray, np.ndarray]:
    from bench.speech import clip

    agent = clip("Let me check the schedule for tomorrow; there are three meetings.")
    return agent, clip("Wait, stop, I have a question.", other_speaker=True)


def _leaks(mic: np.ndarray, reference: np.ndarray, end: int) -> bool:
    """Whether the span of `mic` ending at `end` is a leak, against `reference` on the same
    clock (AEC3 is handed it 40 ms before the echo's direct path)."""
    score, share = leak_score(mic[end - SPAN : end], reference[end - SPAN - LAGS : end])
    return score >= LEAK_SCORE and share >= LEAK_SHARE


@pytest.mark.integration
def test_the_agents_voice_let_through_is_a_leak_and_a_users_voice_is_not() -> None:
    """AEC3's output after a path jump is the echo itself, as the room returns it (direct path
    60 ms, then 150 ms from 3 s after the reference handed; RT60 300 ms): a leak in most
    windows where the agent talks (its onsets after a pause, little of it in the span, score
    less: the hold covers them). The user's voice at the echo's level over the room's noise,
    AEC3 having taken the echo out, is none in any window, over what AEC3 leaves of the echo
    or not, and nor is the noise alone.
    (With AEC3 itself, the user over the echo: `bench.aec_rooms`, and test_uplink_echo.py.)"""
    agent, user = _voices()
    total = len(agent) + RATE
    reference = np.concatenate([np.zeros(LAGS, np.float32), agent, np.zeros(RATE, np.float32)])
    echo = ROOMS_BY_NAME["path-change"].echo(agent, total)
    echo = np.concatenate([np.zeros(LAGS, np.float32), echo])
    floor = noise(len(echo), -55.0, seed=1)
    delay = np.concatenate([np.zeros(LAGS, np.float32), ROOMS_BY_NAME["delay"].echo(agent, total)])
    ends = range(LAGS + RATE // 2, LAGS + len(agent) - RATE // 4, RATE // 8)
    loud = [e for e in ends if db(echo[e - 512 : e]) > -45.0]
    assert len(loud) >= 12
    found = [_leaks(echo + floor, reference, end) for end in loud]
    assert np.mean(found) >= 0.75, found
    said = 512 + int(np.argmax(np.convolve(user**2, np.ones(512), "valid")))
    for end in loud:  # the user's loudest VAD window ends with the one judged, at the echo's
        talk = np.zeros_like(echo)  # level over the span judged
        at = end - said
        lo, hi = max(0, at), min(len(echo), at + len(user))
        talk[lo:hi] = user[lo - at : hi - at]
        judged = slice(end - SPAN, end)
        talk *= 10 ** ((db(echo[judged]) - db(talk[judged])) / 20)
        assert not _leaks(talk + floor, reference, end), end
        assert not _leaks(floor, reference, end), end
        for over_db in (0.0, 10.0):  # ... nor over what AEC3 leaves of a delay's echo (-25 dB)
            louder = talk * 10 ** (over_db / 20)
            assert not _leaks(louder + delay * 10 ** (-25.0 / 20) + floor, reference, end), end


@pytest.mark.unit
def test_a_leak_holds_the_windows_after_it_without_asking_again() -> None:
    """A leak found holds every window ending within `HOLD_MS` of it, without a GCC-PHAT; the
    window after that is asked afresh. Nothing sent (or no reference handed yet), nothing held."""
    rng = np.random.default_rng(0)
    far = rng.standard_normal(4 * RATE).astype(np.float32)
    delay = 1600  # 100 ms
    near = np.concatenate([np.zeros(delay, np.float32), far[:-delay]])
    asked = []

    def out(start: int, end: int) -> np.ndarray:
        asked.append(end)
        return near[start:end]

    padded = np.concatenate([np.zeros(LAGS, np.float32), far])

    def reference(start: int, end: int) -> np.ndarray:  # (from `LAGS` before `start`)
        return padded[start : end + LAGS]

    hold = LeakHold(RATE)
    first = RATE
    assert hold.held(first, out, reference) and asked == [first] and hold.found == 1
    last = first + round(HOLD_MS * RATE / 1000)
    assert hold.held(last, out, reference) and asked == [first]
    silent = np.zeros_like(far)
    assert not hold.held(last + 512, lambda s, e: silent[s:e], reference)
    assert not LeakHold(RATE).held(first, out, lambda s, e: np.zeros(e - s + LAGS, np.float32))
    assert not LeakHold(RATE).held(first, out, lambda s, e: None)  # (the clocks not paired yet)
