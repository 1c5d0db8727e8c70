"""Streaming resampling and PCM framing for the audio path.

Engine audio (float32 mono at the engine's native rate, e.g. 22,050 Hz) becomes session audio
(s16le at the session rate, 48,000 Hz by default) cut into fixed-size frames:

    StreamResampler -> float_to_s16 -> FrameChunker -> blocks of whole frames
    (or float_to_s16le for a one-shot bytes conversion)

and `fade_out` shapes the tail the writer sends at a barge-in (`duplexd._downlink.writer`).
Everything here is synchronous, allocation-light numpy and holds no locks; callers own the
threading. What it costs per second of audio: bench/results/README.md ("Figures of one machine").
"""

from __future__ import annotations

from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import soxr

FloatArray = npt.NDArray[np.float32]
Int16Array = npt.NDArray[np.int16]
Quality = Literal["QQ", "LQ", "MQ", "HQ", "VHQ"]

DEFAULT_QUALITY: Final[Quality] = "HQ"
S16_FULL_SCALE: Final = 32767
_EMPTY_F32: Final[FloatArray] = np.zeros(0, dtype=np.float32)


def _as_mono_f32(samples: npt.ArrayLike) -> FloatArray:
    """View (or, if needed, copy) `samples` as a contiguous 1-D float32 array."""
    arr = np.ascontiguousarray(samples, dtype=np.float32)
    if arr.ndim != 1:
        raise ValueError(f"expected mono 1-D samples, got shape {arr.shape}")
    return arr


class StreamResampler:
    """Resample a mono float32 stream from `in_rate_hz` to `out_rate_hz`, chunk by chunk.

    Chunking does not matter: feeding a signal in any split through `process` and then calling
    `flush` yields exactly the samples (bit-identical with soxr 1.x) of resampling it whole, and
    the total length is ``round(n * out_rate_hz / in_rate_hz)`` give or take a sample. Output lags
    input by the filter delay (a few ms at "HQ"); `flush` emits the held-back tail and resets the
    resampler for a fresh signal (a new utterance).

    When the rates are equal `process` returns its input as float32 (no copy if it already is)
    and `flush` returns an empty array.
    """

    def __init__(
        self, in_rate_hz: int, out_rate_hz: int, *, quality: Quality = DEFAULT_QUALITY
    ) -> None:
        """Build the resampler (soxr designs its filter here: once per utterance)."""
        if in_rate_hz <= 0 or out_rate_hz <= 0:
            raise ValueError(f"rates must be positive, got {in_rate_hz} -> {out_rate_hz}")
        self.in_rate_hz: Final = in_rate_hz
        self.out_rate_hz: Final = out_rate_hz
        self.quality: Final = quality
        self._stream: soxr.ResampleStream | None = (
            None
            if in_rate_hz == out_rate_hz
            else soxr.ResampleStream(in_rate_hz, out_rate_hz, 1, dtype="float32", quality=quality)
        )

    @property
    def is_identity(self) -> bool:
        """True when input and output rates are equal and samples pass straight through."""
        return self._stream is None

    def process(self, samples: npt.ArrayLike) -> FloatArray:
        """Resample one chunk; returns the output samples that are ready (possibly none).

        Cost is linear in the chunk: about 15 ns per input sample at 22,050 -> 48,000 "HQ".
        The returned array is new (the identity path may return `samples` itself).
        """
        arr = _as_mono_f32(samples)
        if self._stream is None:
            return arr
        if arr.size == 0:
            return _EMPTY_F32.copy()
        out: FloatArray = self._stream.resample_chunk(arr)
        return out

    def flush(self) -> FloatArray:
        """Emit the held-back tail of the signal and reset for a fresh one (about 160 us)."""
        if self._stream is None:
            return _EMPTY_F32.copy()
        tail: FloatArray = self._stream.resample_chunk(_EMPTY_F32, last=True)
        self._stream.clear()
        return tail

    def reset(self) -> None:
        """Drop any buffered input without emitting it (e.g. on barge-in). Cheap."""
        if self._stream is not None:
            self._stream.clear()


class Decimator:
    """Resample down by an integer `factor` (48 kHz -> 16 kHz: 3), chunk by chunk, holding
    nothing back: a windowed-sinc low-pass (`TAPS` taps, cut at 90 % of the new Nyquist) and
    every `factor`-th sample, the last taps kept between chunks. Each call gives len / factor
    samples (chunks must be multiples of `factor`), `delay` samples (at the new rate) late,
    always. soxr's streaming (`StreamResampler`) answers in blocks instead (0, 490, 0, 489,
    ... samples per 20 ms at 48 -> 16 kHz), holding 6-37 ms back: what follows it hears the
    audio that much later, by another amount each time. About 10 us per 20 ms frame."""

    TAPS: Final = 61

    def __init__(self, factor: int) -> None:
        n = np.arange(self.TAPS) - (self.TAPS - 1) / 2
        h = np.sinc(n * 0.9 / factor) * np.hamming(self.TAPS)
        self._h = (h / h.sum()).astype(np.float32)
        self.factor = factor
        self._tail = np.zeros(self.TAPS - 1, dtype=np.float32)
        self.delay = (self.TAPS - 1) // 2 // factor  # (30 input samples: 10 out, at 48 -> 16)

    def process(self, samples: npt.ArrayLike) -> FloatArray:
        x = _as_mono_f32(samples)
        if len(x) % self.factor:
            raise ValueError(f"a chunk of {len(x)} samples is no multiple of {self.factor}")
        joined = np.concatenate((self._tail, x))
        self._tail = joined[len(x) :]
        y = np.convolve(joined, self._h, mode="valid")  # y[i]: input i - `TAPS // 2`
        out: FloatArray = y[:: self.factor].astype(np.float32)
        return out


def float_to_s16(samples: npt.ArrayLike) -> Int16Array:
    """Convert float samples to int16: clip to [-1, 1], scale by 32767, round half to even.

    Returns a new native-endian int16 array; cost is a few vectorised passes (about 25 us for
    48,000 samples).
    """
    arr = np.asarray(samples, dtype=np.float32)
    scaled = np.clip(arr, -1.0, 1.0) * np.float32(S16_FULL_SCALE)
    out: Int16Array = np.rint(scaled).astype(np.int16)
    return out


def float_to_s16le(samples: npt.ArrayLike) -> bytes:
    """Convert float samples to s16le PCM bytes: clip to [-1, 1], scale by 32767, round.

    -1.0 maps to -32767 (not -32768), so the scale is symmetric. NaN is not expected and has
    undefined output. Cost: one `float_to_s16` plus one copy into `bytes`.
    """
    return float_to_s16(samples).astype("<i2", copy=False).tobytes()


def fade_out(samples: npt.ArrayLike, sample_rate_hz: int, fade_ms: float = 5.0) -> FloatArray:
    """Return a new float32 copy of `samples` whose last `fade_ms` fade to silence.

    The gain is a raised cosine, 0.5 * (1 + cos(pi * k / (n - 1))) for k = 0 .. n-1 over the last
    n = round(fade_ms * sample_rate_hz / 1000) samples (capped at the array length): the first
    faded sample keeps its value and the last one is exactly 0. Samples before the fade are
    unchanged. The input is never modified. Cost: one copy plus an n-sample multiply.
    """
    out = np.array(samples, dtype=np.float32, copy=True)
    if out.ndim != 1:
        raise ValueError(f"expected mono 1-D samples, got shape {out.shape}")
    fade_samples = min(round(fade_ms * sample_rate_hz / 1000), out.size)
    if fade_samples <= 0:
        return out
    if fade_samples == 1:
        out[-1] = 0.0
        return out
    k = np.arange(fade_samples, dtype=np.float64)
    gain = 0.5 * (1.0 + np.cos(np.pi * k / (fade_samples - 1)))
    out[-fade_samples:] = (out[-fade_samples:] * gain).astype(np.float32)
    out[-1] = 0.0
    return out


class FrameChunker:
    """Accumulate int16 samples across calls and cut them into frames of `frame_samples`.

    `push_block` returns every whole frame now available as one (frames, frame_samples) block
    (`push`: as s16le bytes per frame); the remainder (fewer than `frame_samples` samples) is
    kept for the next call. Cost: one concatenation of the remainder with the new samples.
    """

    def __init__(self, frame_samples: int) -> None:
        """Create an empty chunker."""
        if frame_samples <= 0:
            raise ValueError(f"frame_samples must be positive, got {frame_samples}")
        self.frame_samples: Final = frame_samples
        self._pending: Int16Array = np.zeros(0, dtype=np.int16)

    @property
    def pending_samples(self) -> int:
        """Samples held back, waiting for a whole frame (always < `frame_samples`)."""
        return int(self._pending.size)

    def push_block(self, samples: npt.ArrayLike) -> Int16Array:
        """Add int16 samples; return the whole frames now complete as one C-contiguous
        little-endian block of shape (frames, frame_samples), oldest first (0 rows if none):
        the producer pushes it into the ring in one call, no Python per frame."""
        arr = np.asarray(samples)
        if arr.dtype != np.int16:
            raise TypeError(f"FrameChunker takes int16 samples, got {arr.dtype}")
        if arr.ndim != 1:
            raise ValueError(f"expected mono 1-D samples, got shape {arr.shape}")
        buf = np.concatenate((self._pending, arr)) if self._pending.size else arr
        whole = buf.size // self.frame_samples * self.frame_samples
        self._pending = buf[whole:].copy()
        block = np.ascontiguousarray(buf[:whole], dtype="<i2")
        return block.reshape(-1, self.frame_samples)

    def push(self, samples: npt.ArrayLike) -> list[bytes]:
        """`push_block`, as s16le bytes of exactly ``2 * frame_samples`` bytes per frame."""
        return [row.tobytes() for row in self.push_block(samples)]

    def flush(self, pad: bool = True) -> tuple[bytes, int]:
        """Return the held-back partial frame and how many real samples it holds, then empty.

        With `pad` the bytes are zero-padded to a whole frame; without it they are just the real
        samples. When nothing is pending, returns ``(b"", 0)`` either way.
        """
        real = int(self._pending.size)
        if real == 0:
            return b"", 0
        data = self._pending
        if pad:
            data = np.concatenate((data, np.zeros(self.frame_samples - real, dtype=np.int16)))
        self._pending = np.zeros(0, dtype=np.int16)
        return data.astype("<i2", copy=False).tobytes(), real

    def clear(self) -> None:
        """Drop any pending samples (e.g. on barge-in)."""
        self._pending = np.zeros(0, dtype=np.int16)
