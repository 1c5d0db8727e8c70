"""Tests of duplexd._downlink.resample: streaming resampling, s16 conversion, fades and framing."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duplexd._downlink.resample import (
    Decimator,
    FrameChunker,
    StreamResampler,
    fade_out,
    float_to_s16,
    float_to_s16le,
)

pytestmark = pytest.mark.unit

F32 = npt.NDArray[np.float32]
RATE_PAIRS = [
    (22_050, 48_000),
    (22_050, 16_000),
    (22_050, 24_000),
    (16_000, 48_000),
    (24_000, 48_000),
    (44_100, 48_000),
    (48_000, 16_000),
    (48_000, 24_000),
    (44_100, 16_000),
]


def sweep(rate_hz: int, seconds: float, f0_hz: float = 50.0, f1_hz: float = 7_000.0) -> F32:
    """A linear sine sweep at amplitude 0.8."""
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    k = (f1_hz - f0_hz) / seconds
    return (0.8 * np.sin(2 * np.pi * (f0_hz * t + 0.5 * k * t * t))).astype(np.float32)


def run_chunks(rs: StreamResampler, x: F32, cuts: list[int]) -> F32:
    parts = np.split(x, sorted(c % (len(x) + 1) for c in cuts))
    out = [rs.process(p) for p in parts]
    out.append(rs.flush())
    return np.concatenate(out).astype(np.float32)


# -- StreamResampler -------------------------------------------------------------------------


@pytest.mark.parametrize(("in_hz", "out_hz"), RATE_PAIRS)
def test_chunked_equals_whole_and_length(in_hz: int, out_hz: int) -> None:
    x = sweep(in_hz, 0.5)
    whole = run_chunks(StreamResampler(in_hz, out_hz), x, [])
    rng = np.random.default_rng(in_hz + out_hz)
    cuts = [int(c) for c in rng.integers(0, len(x), 25)] + [1, 2, 3]
    chunked = run_chunks(StreamResampler(in_hz, out_hz), x, cuts)
    assert chunked.shape == whole.shape
    np.testing.assert_allclose(chunked, whole, atol=1e-5)
    assert abs(len(whole) - len(x) * out_hz / in_hz) <= 2


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(0, 20_000), max_size=30))
def test_chunking_invariance_property(cuts: list[int]) -> None:
    x = sweep(22_050, 0.3)
    whole = run_chunks(StreamResampler(22_050, 48_000), x, [])
    chunked = run_chunks(StreamResampler(22_050, 48_000), x, cuts)
    np.testing.assert_allclose(chunked, whole, atol=1e-5)


def test_resampled_tone_keeps_frequency_and_level() -> None:
    in_hz, out_hz = 22_050, 48_000
    t = np.arange(in_hz) / in_hz
    x = (0.5 * np.sin(2 * np.pi * 1_000 * t)).astype(np.float32)
    y = run_chunks(StreamResampler(in_hz, out_hz), x, [1_000, 5_000])
    mid = y[4_800:-4_800]
    ref = 0.5 * np.sin(2 * np.pi * 1_000 * np.arange(len(y)) / out_hz)[4_800:-4_800]
    assert np.sqrt(np.mean(mid**2)) == pytest.approx(np.sqrt(np.mean(ref**2)), rel=0.01)
    spectrum = np.abs(np.fft.rfft(mid))
    peak_hz = np.argmax(spectrum) * out_hz / len(mid)
    assert peak_hz == pytest.approx(1_000, abs=5)


def test_the_decimator_gives_every_frame_at_once_and_always_as_late() -> None:
    """48 -> 16 kHz in 20 ms frames: 320 samples out of every 960 (soxr's stream gives 0, 490,
    0, 489, ...), a click at input sample 3k out at sample k + `delay`, wherever it falls."""
    d = Decimator(3)
    assert d.delay == 10
    clicks = [5, 321, 640, 1000]
    x = np.zeros(960 * 8, dtype=np.float32)
    for k in clicks:
        x[3 * k] = 1.0
    out = [d.process(x[i : i + 960]) for i in range(0, len(x), 960)]
    assert [len(o) for o in out] == [320] * 8
    y = np.concatenate(out)
    for k in clicks:
        assert int(np.argmax(y[k + d.delay - 5 : k + d.delay + 6])) == 5
    with pytest.raises(ValueError, match="no multiple of 3"):
        d.process(np.zeros(100, dtype=np.float32))


def test_the_decimator_keeps_speech_band_tones_and_stops_aliases() -> None:
    """A 1 kHz tone keeps its level within 0.1 dB; 12 kHz (which would fold to 4 kHz) comes
    out more than 40 dB down."""
    t = np.arange(48_000) / 48_000
    for hz, lo, hi in ((1000, -0.1, 0.1), (12_000, -200.0, -40.0)):
        d = Decimator(3)
        x = np.sin(2 * np.pi * hz * t).astype(np.float32)
        y = np.concatenate([d.process(x[i : i + 960]) for i in range(0, len(x), 960)])
        gain_db = 20 * np.log10(np.sqrt(np.mean(y[1000:] ** 2)) / np.sqrt(0.5))
        assert lo <= gain_db <= hi, (hz, gain_db)


def test_flush_resets_for_a_new_signal() -> None:
    x = sweep(22_050, 0.2)
    rs = StreamResampler(22_050, 48_000)
    first = run_chunks(rs, x, [777])
    second = run_chunks(rs, x, [333])
    np.testing.assert_allclose(second, first, atol=1e-5)


def test_reset_drops_pending_input() -> None:
    x = sweep(22_050, 0.2)
    rs = StreamResampler(22_050, 48_000)
    rs.process(x[:1000])
    rs.reset()
    fresh = run_chunks(StreamResampler(22_050, 48_000), x, [])
    np.testing.assert_allclose(run_chunks(rs, x, []), fresh, atol=1e-5)


def test_identity_fast_path() -> None:
    rs = StreamResampler(48_000, 48_000)
    assert rs.is_identity
    x = sweep(48_000, 0.1)
    assert rs.process(x) is x
    np.testing.assert_array_equal(rs.process(x.astype(np.float64)), x)
    assert rs.flush().size == 0
    assert not StreamResampler(22_050, 48_000).is_identity


def test_output_is_float32_and_empty_chunks_are_fine() -> None:
    rs = StreamResampler(22_050, 48_000)
    assert rs.process(np.zeros(0, np.float32)).size == 0
    out = rs.process(np.ones(5_000, np.float64))
    assert out.dtype == np.float32
    assert rs.flush().dtype == np.float32


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        StreamResampler(0, 48_000)
    with pytest.raises(ValueError):
        StreamResampler(22_050, 48_000).process(np.zeros((2, 10), np.float32))


# -- float_to_s16le --------------------------------------------------------------------------


def test_float_to_s16le_clips_and_rounds() -> None:
    x = np.array([0.0, 1.0, -1.0, 2.0, -3.0, 0.5, 1.5 / 32767, -1.5 / 32767, 1e-6], np.float32)
    got = np.frombuffer(float_to_s16le(x), dtype="<i2")
    np.testing.assert_array_equal(got, [0, 32767, -32767, 32767, -32767, 16384, 2, -2, 0])


def test_float_to_s16le_is_little_endian_bytes() -> None:
    assert float_to_s16le(np.array([1.0, -1.0], np.float32)) == b"\xff\x7f\x01\x80"
    assert float_to_s16le(np.zeros(0, np.float32)) == b""


def test_float_to_s16_matches_bytes() -> None:
    x = sweep(48_000, 0.01)
    assert float_to_s16(x).dtype == np.int16
    assert float_to_s16(x).astype("<i2").tobytes() == float_to_s16le(x)


# -- fade_out --------------------------------------------------------------------------------


def test_fade_out_shape() -> None:
    rate_hz = 48_000
    x = np.full(1_000, 0.7, np.float32)
    y = fade_out(x, rate_hz, fade_ms=5.0)
    n = 240
    assert y is not x
    np.testing.assert_array_equal(x, np.float32(0.7))  # input untouched
    np.testing.assert_array_equal(y[:-n], x[:-n])
    assert y[-n] == pytest.approx(0.7)  # starts at the original level
    assert y[-1] == 0.0  # ends at exactly zero
    assert np.all(np.diff(y[-n:]) <= 0)  # monotone
    assert y[-n // 2] == pytest.approx(0.35, abs=0.01)  # raised cosine: half way, half gain


def test_fade_out_short_inputs() -> None:
    assert fade_out(np.zeros(0, np.float32), 48_000).size == 0
    y = fade_out(np.full(10, 1.0, np.float32), 48_000, fade_ms=5.0)  # shorter than the fade
    assert y[0] == pytest.approx(1.0)
    assert y[-1] == 0.0
    np.testing.assert_array_equal(fade_out(np.ones(4, np.float32), 48_000, fade_ms=0.0), 1.0)
    np.testing.assert_array_equal(
        fade_out(np.ones(4, np.float32), 48_000, fade_ms=1 / 48), [1, 1, 1, 0]
    )


# -- FrameChunker ----------------------------------------------------------------------------


def test_frame_chunker_exact_frames_across_calls() -> None:
    rng = np.random.default_rng(7)
    samples = rng.integers(-32768, 32767, 10_000, dtype=np.int16)
    chunker = FrameChunker(960)
    frames: list[bytes] = []
    for part in np.split(samples, [1, 500, 959, 961, 2_000, 2_000, 7_777]):
        frames += chunker.push(part)
        assert chunker.pending_samples < 960
    assert len(frames) == 10_000 // 960
    assert all(len(f) == 1_920 for f in frames)
    assert b"".join(frames) == samples[: len(frames) * 960].astype("<i2").tobytes()
    tail, real = chunker.flush()
    assert real == 10_000 % 960
    assert len(tail) == 1_920
    assert tail[: 2 * real] == samples[len(frames) * 960 :].astype("<i2").tobytes()
    assert tail[2 * real :] == bytes(1_920 - 2 * real)
    assert chunker.flush() == (b"", 0)


def test_frame_chunker_flush_unpadded_and_clear() -> None:
    chunker = FrameChunker(4)
    assert chunker.push(np.array([1, 2, 3, 4, 5], np.int16)) == [
        np.array([1, 2, 3, 4], "<i2").tobytes()
    ]
    assert chunker.flush(pad=False) == (np.array([5], "<i2").tobytes(), 1)
    chunker.push(np.array([9, 9], np.int16))
    chunker.clear()
    assert chunker.pending_samples == 0
    assert chunker.flush() == (b"", 0)


def test_frame_chunker_rejects_non_int16() -> None:
    with pytest.raises(TypeError):
        FrameChunker(4).push(np.zeros(4, np.float32))
    with pytest.raises(ValueError):
        FrameChunker(0)


def test_full_path_one_second() -> None:
    """1 s of 22,050 Hz audio through resampling, s16 conversion and 20 ms framing."""
    x = sweep(22_050, 1.0)
    rs = StreamResampler(22_050, 48_000)
    chunker = FrameChunker(960)
    frames: list[bytes] = []
    for start in range(0, len(x), 1_024):
        frames += chunker.push(float_to_s16(rs.process(x[start : start + 1_024])))
    frames += chunker.push(float_to_s16(rs.flush()))
    tail, real = chunker.flush()
    assert len(frames) == 50 and real == 0 and tail == b""
