"""Whisper in a window cut to the clip (`duplexd/_uplink/window.py`): the same words as the
30 s window, a loop caught and decoded again, silence still silence."""

from __future__ import annotations

import numpy as np
import pytest

from duplexd._uplink import window
from duplexd._uplink.window import Heard


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
@pytest.mark.parametrize(
    "text, cut",
    [
        ("Hold on. Hold on. Hold on. Hold on. Hold", "Hold on."),
        ("Remember, remember, remember,", "Remember"),
        ("today? Today.", "today?"),
        ("Can you tell me what the weather is like today? Can you tell me what the",
         "Can you tell me what the weather is like today?"),
        ("Yeah, okay. Yeah, okay.", "Yeah, okay."),
        ("Can you tell me what the weather is like today?",
         "Can you tell me what the weather is like today?"),
        ("", ""),
    ],
)  # fmt: skip
def test_a_looped_text_is_cut_where_the_loop_began(text: str, cut: str) -> None:
    assert window.unlooped(text) == cut
    assert not window.looped(window.unlooped(text))


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


@pytest.mark.integration
def test_a_held_sound_after_the_hold_prompt_a_hum_is_heard_as_one_words_as_words() -> None:
    """The joe voice's "Mm-hmm." cut at 45 bounds around it (as `bench.hold_words` does):
    decoded plain, Whisper writes words for most ("in a month."); after `HOLD_PROMPT` with
    loops cut, most are a hum, and an interruption's every cut is still words. Such a decode
    is one pass in the cut window: never the 30 s one."""
    from bench.hold_words import clips
    from bench.speech import clip
    from duplexd._uplink.asr import Transcriber
    from duplexd._uplink.soft import is_backchannel
    from duplexd._uplink.transcripts import HOLD_PROMPT
    from duplexd.protocol.options import DEFAULT_BACKCHANNELS

    t = Transcriber(cpu_threads=2)
    try:
        hum = clips(clip("Mm-hmm."))
        plain = sum(is_backchannel(t.transcribe_sync(c), DEFAULT_BACKCHANNELS) for c in hum)
        held = [t.transcribe_sync(c, HOLD_PROMPT, cut_loops=True) for c in hum]
        hums = sum(is_backchannel(h, DEFAULT_BACKCHANNELS) for h in held)
        assert plain <= 15 and hums >= 30, (plain, hums, held)
        assert not any(window.looped(h) for h in held)
        for c in clips(clip("Wait, stop."))[::4]:
            heard = t.transcribe_sync(c, HOLD_PROMPT, cut_loops=True)
            assert not is_backchannel(heard, DEFAULT_BACKCHANNELS), heard
    finally:
        t.close()


@pytest.mark.integration
def test_whisper_is_surer_a_sentence_ends_at_its_end_than_at_a_pause_inside_it() -> None:
    """`Heard.end_mark` (the end of turn's check, ends.py): a sentence the voice spoke to its
    end against the same voice stopped mid-sentence after words that could end one. The
    heads' text passes the words' check (`sounds_unfinished`): only the mark tells them."""
    from bench.speech import clip, paused_clip
    from duplexd._uplink.asr import Transcriber
    from duplexd._uplink.unfinished import sounds_unfinished
    from duplexd.protocol.options import VadOptions

    threshold = VadOptions().end_mark_threshold
    quiet = np.random.default_rng(1).normal(0, 1e-3, 64 * 16).astype(np.float32)  # 64 ms
    t = Transcriber(cpu_threads=2)
    try:
        for text in (
            "Can you remind me to call my mother tomorrow?",
            "What time does the last train leave tonight?",
        ):
            heard = t.hear_sync(np.concatenate((clip(text), quiet)), end_mark=True)
            assert heard.end_mark is not None and heard.end_mark > threshold + 0.1, heard
        for text, word in (("The meeting is on Tuesday afternoon.", 4),):  # "is on | Tuesday"
            spoken = paused_clip(text, word)
            head = np.concatenate((spoken.audio[: spoken.pause[0]], quiet))  # type: ignore[index]
            heard = t.hear_sync(head, end_mark=True)
            assert not sounds_unfinished(heard.text), heard  # "The meeting is on."
            assert heard.end_mark is not None and heard.end_mark < threshold - 0.05, heard
        assert t.hear_sync(clip("Thank you."), end_mark=False).end_mark is None
        assert t.hear_sync(quiet, end_mark=True) == Heard("", None)  # no words: nothing known
    finally:
        t.close()
