"""Streaming synthesis: windowed VITS decoding, and first audio from the first clause."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import trio

from bench.asr_helpers import normalize_text, transcribe, word_error_rate
from duplexd._server.server import Daemon, serve_duplexd
from duplexd.client.session import open_session
from duplexd.engines.base import StreamingVoice
from duplexd.engines.registry import EngineSet
from duplexd.engines.vits import VitsEngine
from duplexd.engines.vits.stream import CONTEXT_FRAMES, FIRST_WINDOW_FRAMES
from duplexd.protocol import frames as fr

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("collect_leaked_sockets")]

TEXTS = [
    "Hello there,",
    "Yes.",
    "Hello there, how are you doing today? I hope all is well.",
    "The quick brown fox jumps over the lazy dog. Then it slept for a long time in the sun.",
]
HOP = 256


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1])


@pytest.fixture(scope="module")
def engine() -> Iterator[VitsEngine]:
    eng = VitsEngine(device="cpu", deterministic=True)
    yield eng
    eng.close()


@pytest.mark.parametrize("text", TEXTS)
def test_chunks_equal_one_shot(engine: VitsEngine, text: str) -> None:
    voice = engine.open_voice("joe")
    assert isinstance(voice, StreamingVoice)
    whole = voice.synthesize(text)
    chunks = list(voice.synthesize_stream(text))
    assert all(c.dtype == np.float32 and c.ndim == 1 and len(c) > 0 for c in chunks)
    joined = np.concatenate(chunks)
    assert abs(len(joined) - len(whole)) <= 4
    n = min(len(joined), len(whole))
    assert corr(joined[:n], whole[:n]) >= 0.999
    assert np.max(np.abs(joined[:n] - whole[:n])) < 1e-3


def test_first_chunk_is_short(engine: VitsEngine) -> None:
    voice = engine.open_voice("joe")
    chunks = list(voice.synthesize_stream(TEXTS[3]))
    total = sum(len(c) for c in chunks)
    assert len(chunks) >= 3
    assert len(chunks[0]) == FIRST_WINDOW_FRAMES * HOP  # ~0.28 s
    assert len(chunks[0]) < total / 5


def test_short_piece_is_one_shot(engine: VitsEngine) -> None:
    voice = engine.open_voice("joe")
    whole = voice.synthesize("Oh.")  # 35 latent frames
    assert len(whole) <= (FIRST_WINDOW_FRAMES + CONTEXT_FRAMES) * HOP
    chunks = list(voice.synthesize_stream("Oh."))
    assert len(chunks) == 1
    np.testing.assert_allclose(chunks[0], whole, atol=1e-5)


def test_nothing_to_say_yields_nothing(engine: VitsEngine) -> None:
    voice = engine.open_voice("joe")
    assert list(voice.synthesize_stream("")) == []
    assert list(voice.synthesize_stream(" ... !? ")) == []


def test_stopping_early_releases_the_voice(engine: VitsEngine) -> None:
    voice = engine.open_voice("joe")
    stream = voice.synthesize_stream(TEXTS[3])
    assert isinstance(stream, Iterator)
    first = next(stream)
    assert len(first) > 0
    assert engine.models.in_use(voice.spec.full_name) == 1  # pinned while streaming
    stream.close()  # type: ignore[attr-defined]
    assert engine.models.in_use(voice.spec.full_name) == 0


def test_streams_interleave_across_threads(engine: VitsEngine) -> None:
    voice = engine.open_voice("joe")
    a = voice.synthesize_stream(TEXTS[2])
    b = voice.synthesize_stream(TEXTS[3])
    out_a: list[np.ndarray] = []
    out_b: list[np.ndarray] = []
    for ca, cb in zip(a, b, strict=False):  # alternating steps share the inference thread
        out_a.append(ca)
        out_b.append(cb)
    out_a += list(a)
    out_b += list(b)
    assert corr(np.concatenate(out_a), voice.synthesize(TEXTS[2])) >= 0.999
    assert corr(np.concatenate(out_b), voice.synthesize(TEXTS[3])) >= 0.999


# -- end to end: a daemon, LLM-like streamed text -----------------------------------------------

FIRST_CLAUSE = ["Hello", " there", ","]
REST = [" how", " are", " you", " doing", " today", "?", " I", " hope", " all", " is", " well", "."]
FULL_TEXT = "".join(FIRST_CLAUSE + REST)


def _pcm_to_float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


@pytest.mark.slow
def test_daemon_streams_first_clause_then_rest() -> None:
    engine = VitsEngine(device="cpu", deterministic=True)

    async def main() -> tuple[bytes, bytes, float]:
        first_audio: dict[int, trio.Event] = {}

        def on_frame(frame: fr.ServerFrame, _now: float) -> None:
            if isinstance(frame, fr.Audio) and frame.utterance_id in first_audio:
                first_audio[frame.utterance_id].set()

        async with trio.open_nursery() as nursery:
            daemon: Daemon = await nursery.start(
                lambda task_status: serve_duplexd(
                    "127.0.0.1", 0, engines=EngineSet.of(engine), task_status=task_status
                )
            )
            async with open_session(daemon.url, on_frame=on_frame) as session:
                # The whole text in one message: the reference.
                uid = await session.say(FULL_TEXT)
                with trio.fail_after(60):
                    whole = await session.receive_utterance(uid)
                # LLM-like tokens: the first clause, then a pause with no more text.
                uid = session.new_utterance_id()
                first_audio[uid] = trio.Event()
                t_clause = 0.0
                for token in FIRST_CLAUSE:
                    await session.send_text(uid, token)
                    t_clause = trio.current_time()
                    await trio.sleep(1 / 30)
                with trio.fail_after(5):  # generous: ~0.1 s on a 2-core CPU
                    await first_audio[uid].wait()
                wait_s = trio.current_time() - t_clause
                for token in REST:
                    await session.send_text(uid, token)
                    await trio.sleep(1 / 30)
                await session.send_text(uid, "", end=True)
                with trio.fail_after(60):
                    streamed = await session.receive_utterance(uid)
            nursery.cancel_scope.cancel()
        return whole.pcm, streamed.pcm, wait_s

    try:
        whole_pcm, streamed_pcm, wait_s = trio.run(main)
    finally:
        engine.close()
    # The first audio came while the text was paused after the first clause.
    assert wait_s < 5
    rate = fr.SAMPLE_RATE_HZ
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        hyp_whole = transcribe(_pcm_to_float(whole_pcm), rate)
        hyp_streamed = transcribe(_pcm_to_float(streamed_pcm), rate)
    print(f"\nwhole: {hyp_whole!r}\nstreamed: {hyp_streamed!r}\nfirst audio after {wait_s:.3f} s")
    assert word_error_rate([FULL_TEXT], [hyp_streamed]) <= 0.15
    assert normalize_text(hyp_streamed) == normalize_text(hyp_whole)
