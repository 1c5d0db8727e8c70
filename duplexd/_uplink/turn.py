"""Is the user's utterance complete? Smart Turn v3.2, asked when the user falls silent.

`TurnModel.probability(audio)` scores the user's turn so far (16 kHz mono float, the speech
and the short silence after it) with Smart Turn v3.2 (Daily's Pipecat project, BSD-2, an int8
ONNX file shipped in `models/`, loaded offline; see `models/README.md`): the probability that
the speaker has finished rather than paused mid-thought. Semantics and prosody both count:
"I'd like a table for" is incomplete however it ends.

The model's input, as its reference inference computes it: the last `WINDOW_S` (8 s) of the
audio, zeros prepended to a shorter clip; the 128,000 samples normalized to zero mean and unit
variance; then Whisper's log-mel front end (400-sample Hann window, 160-sample hop, centred
with reflection, 80 Slaney mel bands, log10 clamped to 8 below the maximum, then (x + 4) / 4)
giving 80 x 800 features, here faster-whisper's `FeatureExtractor` (the same front end, in
numpy). One model per daemon (`load`), thread-safe; the session's uplink asks it once per
candidate end of turn, in a worker thread of its own (`UplinkServices.turn_offload`), never on
the event loop or the VAD's worker. Its cost per call: `python -m bench.uplink_cpu`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

TURN_RATE_HZ: Final = 16_000
WINDOW_S: Final = 8
WINDOW_SAMPLES: Final = WINDOW_S * TURN_RATE_HZ
_FEATURES: Final = (80, 800)
_EPS: Final = 1e-7  # variance floor of the waveform normalization


def bundled_model_path() -> Path:
    return Path(__file__).parent / "models" / "smart-turn-v3.2-cpu.onnx"


def model_input(audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The last 8 s of `audio` (zeros prepended if shorter), normalized to zero mean and unit
    variance: the waveform the features are computed from."""
    x = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    tail = np.asarray(audio, dtype=np.float32)[-WINDOW_SAMPLES:]
    if len(tail):
        x[-len(tail) :] = tail
    out: npt.NDArray[np.float32] = (x - x.mean()) / np.sqrt(x.var() + _EPS)
    return out


class TurnModel:
    """Smart Turn v3.2 on onnxruntime (CPU, `threads` intra-op threads). Blocking to build
    (loads the file): build it before serving. Thread-safe."""

    def __init__(self, path: str | Path | None = None, *, threads: int = 1) -> None:
        import onnxruntime
        from faster_whisper.feature_extractor import FeatureExtractor

        self.path = Path(path) if path else bundled_model_path()
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        self._session: Any = onnxruntime.InferenceSession(
            str(self.path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self._features = FeatureExtractor(feature_size=_FEATURES[0], chunk_length=WINDOW_S)

    def features(self, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The model's input for `audio`: float32, shape (1, 80, 800)."""
        mel = self._features(model_input(audio), padding=0)
        if mel.shape != _FEATURES:
            raise AssertionError(f"log-mel features of shape {mel.shape}, expected {_FEATURES}")
        return np.ascontiguousarray(mel[None], dtype=np.float32)

    def probability(self, audio: npt.NDArray[np.float32]) -> float:
        """How likely the utterance in `audio` (16 kHz, its end = now) is complete, 0..1."""
        (out,) = self._session.run(None, {"input_features": self.features(audio)})
        return float(out[0, 0])
