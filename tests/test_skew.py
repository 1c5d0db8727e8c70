"""The echo's slide against the reference (`duplexd/_uplink/skew.py`): learned from the presence
check's verdicts (where the echo's direct path was), followed once they make a line, never by a
jump; and GCC-PHAT's peak to a fraction of a lag (`duplexd/_uplink/phat.py`)."""

from __future__ import annotations

import numpy as np
import pytest

from duplexd._uplink.phat import peak_lag, phat
from duplexd._uplink.skew import MIN_SPAN_S, EchoSkew

pytestmark = pytest.mark.unit

RATE = 16_000
EVERY = 4_800  # a settled presence check's verdicts: every 300 ms of uplink


def feed(
    skew: EchoSkew,
    ppm: float,
    seconds: float,
    *,
    start: float = 0.0,
    base: float = 0.0,
    noise: float = 1.0,
    seed: int = 0,
    path: float = 0.0,
) -> list[float]:
    """Verdicts of an echo whose capture clock runs `ppm` against the player's, `seconds` of
    uplink from `start` s, each off by `noise` samples (RMS); `path`: the echo's offset added.
    Checks that no verdict moves the shift where the caller is; returns the shifts."""
    rng = np.random.default_rng(seed)
    slope = 1.0 / (1.0 + ppm * 1e-6) - 1.0
    shifts = []
    for k in range(round(seconds * RATE / EVERY)):
        now = round(start * RATE) + (k + 1) * EVERY
        at = now - RATE / 2
        before = skew.shift(now)
        skew.observe(at, base + path + slope * at + rng.normal(0.0, noise), now)
        assert skew.shift(now) == pytest.approx(before, abs=1e-9)  # (never a jump)
        shifts.append(skew.shift(now))
    return shifts


@pytest.mark.parametrize("ppm", [-300.0, -100.0, 0.0, 40.0, 300.0])
def test_a_steady_slide_is_learned_and_followed(ppm: float) -> None:
    skew = EchoSkew(RATE)
    feed(skew, ppm, 20.0, base=1234.5)
    assert skew.ppm == pytest.approx(ppm, abs=5.0)
    assert skew.restarts == 0


def test_nothing_is_followed_before_the_verdicts_span_long_enough() -> None:
    skew = EchoSkew(RATE)
    shifts = feed(skew, 300.0, MIN_SPAN_S - 1.5)
    assert skew.slope == 0.0 and set(shifts) == {0.0}
    feed(skew, 300.0, 3.0, start=MIN_SPAN_S - 1.5)
    assert skew.ppm == pytest.approx(300.0, abs=20.0)


def test_the_shift_follows_the_echo_once_learned() -> None:
    """Handed on with the shift, the reference keeps the same distance to the echo: over a
    minute at -300 ppm (18 ms of slide) it stays within a millisecond of where it was."""
    skew = EchoSkew(RATE)
    ppm = -300.0
    slope = 1.0 / (1.0 + ppm * 1e-6) - 1.0
    feed(skew, ppm, 10.0)
    at10 = 10 * RATE
    gap10 = slope * at10 - skew.shift(at10)
    feed(skew, ppm, 60.0, start=10.0, seed=1)
    at70 = 70 * RATE
    assert abs(slope * (at70 - at10)) > 250  # (the echo slid ~18 ms: 288 samples)
    assert slope * at70 - skew.shift(at70) == pytest.approx(gap10, abs=16.0)


def test_reflections_scattered_off_the_line_are_left_out() -> None:
    """Every fourth verdict found a reflection 3-20 ms away instead of the direct path."""
    skew = EchoSkew(RATE)
    rng = np.random.default_rng(3)
    slope = 1.0 / (1.0 - 200e-6) - 1.0
    for k in range(100):
        now = (k + 1) * EVERY
        off = rng.uniform(50, 320) * rng.choice([-1, 1]) if k % 4 == 3 else 0.0
        skew.observe(now - RATE / 2, slope * now + off + rng.normal(0, 1.0), now)
    assert skew.ppm == pytest.approx(-200.0, abs=10.0)
    assert skew.restarts == 0


def test_a_jump_of_the_path_starts_the_line_afresh_and_keeps_the_slope() -> None:
    """The player refilled its buffer: the echo comes 5 ms later from 20 s on. The line
    starts over from the verdicts after the jump; the clocks' slide followed stays."""
    skew = EchoSkew(RATE)
    feed(skew, 150.0, 20.0)
    assert skew.ppm == pytest.approx(150.0, abs=10.0)
    feed(skew, 150.0, 1.5, start=20.0, path=80.0, seed=1)
    assert skew.restarts == 1
    assert skew.ppm == pytest.approx(150.0, abs=10.0)
    feed(skew, 150.0, 20.0, start=21.5, path=80.0, seed=2)
    assert skew.restarts == 1
    assert skew.ppm == pytest.approx(150.0, abs=10.0)


def test_a_path_that_wanders_is_no_slide() -> None:
    """The echo's path moves back and forth by 1.5 ms over 10 s (a user walking about with
    a laptop): no line fits, nothing is followed."""
    skew = EchoSkew(RATE)
    for k in range(100):
        now = (k + 1) * EVERY
        skew.observe(now - RATE / 2, 24.0 * np.sin(2 * np.pi * now / (10 * RATE)), now)
    assert skew.slope == 0.0


def test_a_slide_no_clock_has_is_not_followed() -> None:
    skew = EchoSkew(RATE)
    feed(skew, -2_000.0, 20.0)
    assert skew.slope == 0.0


def test_a_peak_is_placed_between_lags() -> None:
    x = np.arange(12, dtype=np.float64)
    corr = 10.0 - (x - 5.3) ** 2
    assert peak_lag(corr, 5) == pytest.approx(5.3)
    assert peak_lag(corr, 0) == 0.0 and peak_lag(corr, 11) == 11.0
    flat = np.ones(12)
    assert peak_lag(flat, 5) == 5.0


def test_phat_finds_a_delay_to_a_fraction_of_a_lag() -> None:
    """A copy delayed by 37.5 samples (band-limited noise, fractionally delayed in the
    frequency domain): the peak at lag 37 or 38, placed between them within a quarter."""
    rng = np.random.default_rng(0)
    n, lags, delay = 8192, 100, 37.5
    far = rng.normal(0, 1, n + lags)
    spec = np.fft.rfft(far)
    freqs = np.fft.rfftfreq(len(far))
    spec[freqs > 0.4] = 0.0
    far = np.fft.irfft(spec, len(far))
    late = np.fft.irfft(np.fft.rfft(far) * np.exp(-2j * np.pi * freqs * delay), len(far))
    near = late[lags:]
    corr = phat(near.astype(np.float32), far.astype(np.float32))
    # `far[lag:]` lines up with `near`: near[i] = far[lags + i - delay]
    lag = int(np.argmax(corr))
    assert abs(lag - (lags - delay)) <= 1
    assert peak_lag(corr, lag) == pytest.approx(lags - delay, abs=0.25)


# A live session's verdicts (`python -m bench ... --uplink-echo-room rt60-300
# --uplink-drift-ppm=-300 --seed 2`, one of its two sessions, the first 27 s): (uplink sample
# heard at, the echo's offset, the uplink sample the check was at). At 4.4 and 4.7 s two
# verdicts 24 samples under the rest: the bench's player ran late for a moment.
LIVE = [
    (23200, 5734.8), (25600, 5735.3), (28000, 5735.6), (32000, 5739.3), (36800, 5740.0),
    (41600, 5740.2), (46400, 5740.3), (51200, 5744.5), (56000, 5744.7), (60800, 5745.2),
    (70400, 5721.7), (75200, 5721.8), (84800, 5755.2), (89600, 5756.7), (172160, 5781.2),
    (176960, 5781.5), (181760, 5781.5), (196160, 5788.8), (200960, 5788.9), (205760, 5788.9),
    (210560, 5792.9), (215360, 5793.0), (220160, 5793.1), (224960, 5793.4), (239360, 5802.6),
    (244160, 5803.2), (248960, 5803.6), (253760, 5804.2), (258560, 5805.5), (263360, 5805.8),
    (347200, 5833.5), (352000, 5833.9), (356800, 5833.4), (361600, 5838.0), (366400, 5838.3),
    (371200, 5843.0), (376000, 5843.7), (380800, 5843.9), (385600, 5844.7), (390400, 5845.1),
    (419200, 5854.7), (424000, 5855.8), (428800, 5855.9),
]  # fmt: skip


def test_a_verdict_off_by_a_millisecond_and_a_half_does_not_hold_the_line_back() -> None:
    """In that session the two verdicts, within the 2 ms of a jump, went into the fit and
    held the line back until 26.5 s (its RMS over 6 samples); they are left out of it now,
    and the slide is followed from 10.8 s."""
    skew = EchoSkew(RATE)
    formed = None
    for at, offset in LIVE:
        skew.observe(at, offset, at + 8_000)
        if formed is None and skew.slope:
            formed = at / RATE
    assert formed is not None and formed <= 11.0, formed
    assert skew.ppm == pytest.approx(-300.0, abs=20.0)
