"""Noise suppression for the uplink (`vad.noise_suppression`): WebRTC's NS, after the echo
canceller and before the VAD, the turn model and the transcripts, as WebRTC's audio processing
runs them.

The suppressor (`pywebrtc_audio.NoiseSuppressor`, the one Chrome runs on a microphone: a
Wiener filter driven by its own speech/noise estimate) takes the levels Chrome offers, 6, 12,
18 and 21 dB of noise reduction (`LEVELS`). It works on whole 10 ms frames and answers
`NS_LATENCY_SAMPLES` (6 ms) late: `process` keeps whole frames (a remainder waits for the next
call) and drops the lateness from the stream's start, so output sample `k` is input sample `k`
and every position the session reports stays exact. The output runs 6 ms behind the input
when the input comes in whole frames: the uplink's 20 ms frames do, and the echo canceller's
output does once its frames are lined up with it (`lead`: it starts 8 ms short of a frame);
up to 10 ms more otherwise. Its cost is ~25 us of CPU per 20 ms (`python -m bench.noise`: ~0.12 %
of a core per session).

What it is for, and what not (measured, bench/results/README.md "Noise suppression"): hiss,
a fan's broadband noise or typing 5 dB under the voice or closer, where it brings Whisper's
errors down; a rumble or a hum Whisper ignores anyway; it cannot take out other voices, and
costs words among them; in noise the VAD hears a voice's onset ~20 ms later through it (a
barge-in comes that much later), and its strong levels hear a soft first syllable late more
often (so it is off unless the session asks, and "moderate" is the level to try).

One instance per session; not thread-safe (the session's uplink worker calls it).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt
import pywebrtc_audio

FloatArray = npt.NDArray[np.float32]

RATE_HZ: Final = 16_000
NS_FRAME_SAMPLES: Final = 160  # WebRTC's 10 ms frame at 16 kHz
NS_LATENCY_SAMPLES: Final = 96  # the suppressor's output is this late (tests/test_denoise.py)
# `vad.noise_suppression` -> WebRTC's level (kLow .. kVeryHigh: 6, 12, 18, 21 dB)
# (protocol.options.NOISE_SUPPRESSION: "off" and these)
LEVELS: Final = {"low": 0, "moderate": 1, "high": 2, "very_high": 3}


class Denoiser:
    """WebRTC NS on a 16 kHz mono stream, sample-aligned with its input (see the module)."""

    def __init__(self, level: str, *, lead: int = 0) -> None:
        """`lead`: the stream's first sample comes this many samples into a 10 ms frame (its
        input comes that short of whole frames: the echo canceller's output), so that its
        frames line up with the input's and no remainder waits."""
        if level not in LEVELS:
            raise ValueError(f"noise suppression level must be one of {', '.join(LEVELS)}")
        if not 0 <= lead < NS_FRAME_SAMPLES:
            raise ValueError(f"lead must be in 0..{NS_FRAME_SAMPLES - 1}, got {lead}")
        self._ns = pywebrtc_audio.NoiseSuppressor(RATE_HZ, 1, LEVELS[level])
        self._pending = np.zeros(lead, dtype=np.float32)  # (silence before the stream)
        self._skip = lead + NS_LATENCY_SAMPLES  # output still to drop: that, and the lateness

    def process(self, samples: FloatArray) -> FloatArray:
        """The next samples of the stream, noise suppressed: as many as the whole frames
        given so far allow (none to `NS_FRAME_SAMPLES` + `NS_LATENCY_SAMPLES` fewer than
        given, in all)."""
        if len(self._pending):
            samples = np.concatenate((self._pending, samples))
        whole = len(samples) - len(samples) % NS_FRAME_SAMPLES
        self._pending = samples[whole:].copy()
        if not whole:
            return np.zeros(0, dtype=np.float32)
        frames: FloatArray = np.ascontiguousarray(samples[:whole], dtype=np.float32)
        out = np.asarray(self._ns.process(frames), dtype=np.float32)  # (no copy: float32 in)
        if self._skip:
            k = min(self._skip, len(out))
            out, self._skip = out[k:], self._skip - k
        return out
