"""Real speech for the full-duplex tests and the bench: the VITS engine's own voice, at 16 kHz.

One deterministic engine per process (noise scales 0, so clips repeat exactly); a second
"speaker" is the same voice slower (length_scale 1.3) and pitched up 12 % by resampling.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr

from bench.turns import Spoken, speech_onset, with_pause
from duplexd.engines.vits import VitsEngine

RATE = 16_000
Audio = npt.NDArray[np.float32]


class _SlowVits(VitsEngine):
    def _scales(self, spec: Any) -> Any:
        return replace(super()._scales(spec), length_scale=1.3)


@functools.lru_cache(maxsize=2)
def engine(slow: bool = False) -> VitsEngine:
    cls = _SlowVits if slow else VitsEngine
    return cls(device="cpu", deterministic=True, warmup=False)


@functools.lru_cache(maxsize=32)
def clip(text: str, *, other_speaker: bool = False) -> Audio:
    """`text` spoken, 16 kHz float32, as synthesized (leading/trailing engine silence kept)."""
    voice = engine(other_speaker).open_voice("joe")
    audio = voice.synthesize(text)
    rate = voice.sample_rate_hz
    if other_speaker:
        rate = int(rate * 1.12)  # played faster: pitched up
    out: Audio = np.asarray(soxr.resample(audio, rate, RATE), dtype=np.float32)
    return out


onset = speech_onset  # the first sample above the noise (the true speech onset)


def spoken(texts: list[str]) -> tuple[Audio, list[tuple[int, int]]]:
    """`texts` spoken one after another, from 0.5 s, 1 s of silence after each; and each
    one's speech span [onset, end) in samples."""
    clips = [clip(t) for t in texts]
    audio = np.zeros(RATE // 2 + sum(len(c) + RATE for c in clips), dtype=np.float32)
    spans, pos = [], RATE // 2
    for speech in clips:
        audio[pos : pos + len(speech)] = speech
        spans.append((pos + onset(speech), pos + len(speech) - onset(speech[::-1])))
        pos += len(speech) + RATE
    return audio, spans


def to_s16(audio: Audio) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def frames(audio: Audio, n: int = 320) -> list[bytes]:
    """Cut into uplink frames of `n` samples (the last one padded with silence)."""
    pad = (-len(audio)) % n
    pcm = to_s16(np.concatenate((audio, np.zeros(pad, dtype=np.float32))))
    return [pcm[i : i + 2 * n] for i in range(0, len(pcm), 2 * n)]


@functools.lru_cache(maxsize=32)
def paused_clip(text: str, word: int, pause_s: float = 0.6) -> Spoken:
    """`text` spoken in one go with `pause_s` of silence cut in before word number `word`
    (where the voice's word marks put it): a speaker pausing mid-sentence. `.audio` at 16 kHz,
    `.end` one past the last speech sample, `.pause` the silence's span."""
    return with_pause(engine().open_voice("joe"), text, word, pause_s)
