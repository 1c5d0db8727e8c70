"""Whisper in a window cut to the clip (`duplexd/_uplink/window.py`): the same words as the
30 s window, a loop caught and decoded again, silence still silence."""

from __future__ import annotations

import numpy as np
import pytest

from duplexd._uplink import window


@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "loop"),
    [
        ("today? Today.", True),
        ("Can you tell me what the weather is like today? Can you tell me what the", True),
        ("she loves it there. And she loves it there.", True),
        ("no no", True),
        ("Can you tell me what the weather is like today?", False),
        ("I would like a cup of tea and a piece of chocolate cake, please.", False),
        ("one by one", False),
        ("", False),
    ],
)
def test_a_loop_is_a_word_or_two_again_or_a_phrase_twice(text: str, loop: bool) -> None:
    assert window.looped(text) is loop


@pytest.mark.unit
def test_a_clip_fits_a_window_with_its_padding() -> None:
    rate = 16_000
    assert window.fits(np.zeros(round((30 - window.PAD_S) * rate), np.float32), rate)
    assert not window.fits(np.zeros(round((30 - window.PAD_S) * rate) + 1, np.float32), rate)


@pytest.mark.integration
def test_the_cut_window_hears_what_the_whole_one_does() -> None:
    from bench.speech import clip
    from duplexd._uplink.asr import Transcriber

    cut, whole = Transcriber(cpu_threads=2), Transcriber(cpu_threads=2, cut_window=False)
    try:
        for text in (
            "Can you tell me what the weather is like today?",
            "I'd like a table for four.",
            "Please call me back tomorrow morning, after nine o'clock.",
        ):
            audio = clip(text)
            loud = np.flatnonzero(np.abs(audio) > 0.01)
            turn = audio[max(0, loud[0] - 3200) : loud[-1] + 1024]  # as a speculation sees it
            assert cut.transcribe_sync(turn) == whole.transcribe_sync(turn)
            words = "".join(w.text for w in cut.words_sync(turn, offset=100))
            assert words.replace(" ", "") == cut.transcribe_sync(turn).replace(" ", "")
            assert all(w.start >= 100 for w in cut.words_sync(turn, offset=100))
        quiet = np.random.default_rng(0).normal(0, 1e-3, 16_000).astype(np.float32)
        assert cut.transcribe_sync(quiet) == "" and cut.words_sync(quiet) == []
    finally:
        cut.close()
        whole.close()


@pytest.mark.integration
def test_a_looping_window_is_decoded_again_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every text taken for a loop: the 30 s window's text is the answer."""
    from bench.speech import clip
    from duplexd._uplink.asr import Transcriber

    windows: list[bool] = []
    encode = window._encode

    def spy(model, audio, *, whole):  # type: ignore[no-untyped-def]
        windows.append(whole)
        return encode(model, audio, whole=whole)

    monkeypatch.setattr(window, "_encode", spy)
    monkeypatch.setattr(window, "looped", lambda text: True)
    t = Transcriber(cpu_threads=2)
    try:
        audio = clip("I'd like a table for four.")
        assert "table for four" in t.transcribe_sync(audio).lower()
    finally:
        t.close()
    assert windows == [False, True]
