"""Clips that wait for the transcriber decoded in one call (`Transcriber.hear`,
`window.decode_texts`): each heard as it is alone, the batch formed of the clips waiting, a
cancelled one left out or, once taken, its batch still answered, an error raised for each."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from duplexd._uplink import window
from duplexd._uplink.asr import ASR_RATE_HZ, Transcriber
from duplexd._uplink.window import Heard

pytestmark = pytest.mark.integration

TEXTS = (
    "Could you tell me what the weather will be like tomorrow?",
    "Please book a table for two at seven thirty.",
    "I want to fly to Paris next week.",
)
QUIET = np.random.default_rng(0).normal(0, 1e-3, 16_000).astype(np.float32)


@pytest.fixture(scope="module")
def transcriber() -> Any:
    t = Transcriber(cpu_threads=2)
    t.warm_up()
    yield t
    t.close()


async def waiting(transcriber: Transcriber, n: int) -> None:
    """Until `n` calls wait for the transcriber's limiter (and nothing else runs)."""
    await trio.testing.wait_all_tasks_blocked()
    assert transcriber.limiter.statistics().tasks_waiting == n


def clips() -> list[np.ndarray]:
    from bench.speech import clip

    return [clip(text) for text in TEXTS]


def test_clips_decoded_together_are_heard_as_each_alone(transcriber: Transcriber) -> None:
    audios = [*clips(), QUIET]
    hows = [
        transcriber._decoding(audios[0], None, end_mark=True),
        transcriber._decoding(audios[1], None, end_mark=True),
        transcriber._decoding(audios[2], None),
        transcriber._decoding(audios[3], None, end_mark=True),  # silence: no words
    ]
    keys = {window.batch_key(a, ASR_RATE_HZ, h) for a, h in zip(audios, hows, strict=True)}
    assert len(keys) == 1  # (each fits the 10 s window)
    model = transcriber._model
    for a in audios:  # the key's window is the one its features are padded to
        frames = window._features(model, a, whole=False)[0].shape[-1]
        assert window.window_s(len(a), ASR_RATE_HZ) * window.FRAMES_PER_S == frames
    # a prompt of its own: another batch (CTranslate2 starts a batch's transcripts together)
    prompted = transcriber._decoding(audios[1], "We are four.")
    assert window.batch_key(audios[1], ASR_RATE_HZ, prompted) not in keys
    together = window.decode_texts(model, audios, hows)
    alone = [window.decode_text(model, a, h) for a, h in zip(audios, hows, strict=True)]
    assert [h.text for h in together] == [h.text for h in alone]
    assert together[3] == Heard("") and together[2].end_mark is None
    for a, b in zip(together[:2], alone[:2], strict=True):
        assert a.end_mark is not None and b.end_mark is not None
        assert abs(a.end_mark - b.end_mark) < 0.02, (a, b)


async def test_the_hears_that_wait_are_decoded_in_one_call(transcriber: Transcriber) -> None:
    audios = clips()
    alone = [transcriber.hear_sync(a, end_mark=True) for a in audios]
    batches, batched = transcriber.batches, transcriber.batched
    got: dict[int, Heard] = {}

    async def hear(i: int) -> None:
        got[i] = await transcriber.hear(audios[i], end_mark=True)

    # (the limiter busy: the three wait, then one call takes them; it is let go first)
    async with trio.open_nursery() as nursery, transcriber.limiter:
        for i in range(3):
            nursery.start_soon(hear, i)
        await waiting(transcriber, 3)
    assert (transcriber.batches - batches, transcriber.batched - batched) == (1, 3)
    assert [got[i].text for i in range(3)] == [h.text for h in alone]


async def test_a_cancelled_hear_is_left_out_or_its_batch_still_answered(
    transcriber: Transcriber,
) -> None:
    audios = clips()
    alone = [transcriber.hear_sync(a).text for a in audios]
    batched = transcriber.batched
    got: dict[int, str] = {}
    scopes = [trio.CancelScope() for _ in audios]

    async def hear(i: int) -> None:
        with scopes[i]:
            got[i] = (await transcriber.hear(audios[i])).text

    # one cancelled while it waits: never decoded
    async with trio.open_nursery() as nursery, transcriber.limiter:
        for i in range(3):
            nursery.start_soon(hear, i)
        await waiting(transcriber, 3)
        scopes[1].cancel()
        await waiting(transcriber, 2)
    assert got == {0: alone[0], 2: alone[2]} and transcriber.batched - batched == 2
    assert not transcriber._asks

    # the one whose call decodes the batch cancelled while it decodes: the others are answered
    got.clear()
    scopes[:] = [trio.CancelScope() for _ in audios]
    async with trio.open_nursery() as nursery:
        async with transcriber.limiter:
            for i in range(3):
                nursery.start_soon(hear, i)
            await waiting(transcriber, 3)
        for _ in range(10_000):  # (until its thread decodes: a batch of three taken)
            if transcriber._busy:
                break
            await trio.sleep(0.001)
        scopes[0].cancel()
    assert got == {1: alone[1], 2: alone[2]} and transcriber.batched - batched == 5


async def test_a_batch_that_fails_raises_for_each_of_its_clips(
    transcriber: Transcriber, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: Any) -> list[Heard]:
        raise RuntimeError("the model failed")

    monkeypatch.setattr(window, "decode_texts", fail)
    audios = clips()
    errors: list[str] = []

    async def hear(i: int) -> None:
        try:
            await transcriber.hear(audios[i])
        except RuntimeError as exc:
            errors.append(str(exc))

    async with trio.open_nursery() as nursery, transcriber.limiter:
        for i in range(3):
            nursery.start_soon(hear, i)
        await waiting(transcriber, 3)
    assert errors == ["the model failed"] * 3


def _counting_generate(transcriber: Transcriber, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The batch sizes of the decoder's calls from now on (the real decoder runs)."""
    calls: list[int] = []
    real = window._generate_all

    def counted(model: Any, encoded: Any, tokenizer: Any, hows: list[Any]) -> Any:
        calls.append(len(hows))
        return real(model, encoded, tokenizer, hows)

    monkeypatch.setattr(window, "_generate_all", counted)
    return calls


async def test_a_clip_no_longer_wanted_after_its_encoder_skips_the_decoder(
    transcriber: Transcriber, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`wanted` is asked once the encoder has run: False raises `Unwanted` and the decoder
    never runs; True (or none) decodes as ever."""
    calls = _counting_generate(transcriber, monkeypatch)
    audio = clips()[2]
    asked: list[str] = []

    def wanted(answer: bool) -> Any:
        def ask() -> bool:
            asked.append("asked")
            return answer

        return ask

    with pytest.raises(window.Unwanted):
        transcriber.hear_sync(audio, end_mark=True, wanted=wanted(False))
    assert calls == [] and asked == ["asked"]
    heard = await transcriber.hear(audio, end_mark=True, wanted=wanted(True))
    assert "next week" in heard.text.lower() and calls == [1]
    assert len(asked) == 3  # (as its batch was formed, and after its encoder)


async def test_a_waiting_clip_no_longer_wanted_is_left_out_of_its_batch(
    transcriber: Transcriber, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three clips wait; by the time the limiter is free, the second is no longer wanted: its
    call raises `Unwanted`, and the other two are decoded together, as each alone."""
    audios = clips()
    alone = [transcriber.hear_sync(a).text for a in audios]
    calls = _counting_generate(transcriber, monkeypatch)
    moot = False
    got: dict[int, str] = {}

    async def hear(i: int) -> None:
        try:
            got[i] = (await transcriber.hear(audios[i], wanted=lambda: not (i == 1 and moot))).text
        except window.Unwanted:
            got[i] = "unwanted"

    async with trio.open_nursery() as nursery, transcriber.limiter:
        for i in range(3):
            nursery.start_soon(hear, i)
        await waiting(transcriber, 3)
        moot = True
    assert got == {0: alone[0], 1: "unwanted", 2: alone[2]} and calls == [2]
    assert not transcriber._asks
