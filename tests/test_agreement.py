"""Tests of duplexd._uplink.agreement: the stable prefix of a growing transcript by local
agreement between consecutive passes (pure: made-up passes, no model)."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duplexd._uplink.agreement import LocalAgreement, Word, common_prefix, final_text, join, norm

pytestmark = pytest.mark.unit

SPOKEN = ["please", "book", "a", "table", "for", "two", "at", "seven", "thirty"]


def words(texts: list[str], start: int = 0, step: int = 4000) -> list[Word]:
    """Words `step` samples apart, each spanning most of its slot, from `start`."""
    return [
        Word(f" {t}", start + i * step, start + i * step + step - 500) for i, t in enumerate(texts)
    ]


def test_norm_ignores_case_and_punctuation() -> None:
    assert norm(" Table,") == norm("table") == "table"
    assert norm(" thirty.") == "thirty"
    assert norm(" ...") == ""


def test_common_prefix() -> None:
    a = words(["book", "a", "table"])
    assert common_prefix(a, words(["Book", "a", "cable"])) == 2
    assert common_prefix(a, words(["look"])) == 0
    assert common_prefix(a, a[:2]) == 2


def test_a_word_is_confirmed_when_two_consecutive_passes_agree() -> None:
    agreement = LocalAgreement(0)
    assert agreement.update(words(["please", "book", "a"])) == []  # one pass confirms nothing
    assert agreement.text == "" and agreement.commit == 0
    new = agreement.update(words(["Please", "book", "the", "tape"]))
    assert [w.text for w in new] == [" Please", " book"]
    assert agreement.text == "Please book"
    assert agreement.commit == words(["please", "book"])[1].end
    assert [w.text for w in agreement.pending] == [" the", " tape"]


def test_a_passs_last_word_with_an_end_mark_waits_for_a_word_after_it() -> None:
    agreement = LocalAgreement(0)
    agreement.update(words(["I", "need", "a", "taxi."]))
    assert agreement.update(words(["I", "need", "a", "taxi."])) == words(["I", "need", "a"])
    # the user went on: the pass after hears it, and the mark was Whisper's, not the speaker's
    agreement.update(words(["I", "need", "a", "taxi", "to", "the"]))
    assert agreement.text == "I need a taxi"


def test_disagreement_on_the_first_unconfirmed_word_confirms_nothing_after_it() -> None:
    agreement = LocalAgreement(0)
    agreement.update(words(["please", "look", "a", "table"]))
    assert agreement.update(words(["please", "book", "a", "table"])) == words(["please"])
    # "a table" agreed too, but after a disagreement: not in order, not confirmed
    assert agreement.text == "please"


def test_passes_decode_the_buffer_and_only_add() -> None:
    agreement = LocalAgreement(1000)
    agreement.update(words(["please", "book"], 1000))
    agreement.update(words(["please", "book", "a"], 1000))
    commit = agreement.commit
    assert agreement.text == "please book" and commit == 1000 + 4000 + 3500
    assert agreement.buffer_start == 1000 and agreement.context == ""
    # the next pass decodes the buffer again: the confirmed words, then the rest of the turn
    agreement.update(words(["Please", "book", "a", "table", "for"], 1000))
    agreement.update(words(["please", "book,", "a", "table", "for", "two"], 1000))
    assert agreement.text == "please book a table for"
    assert agreement.passes == 4


def test_a_pass_that_hears_a_confirmed_word_otherwise_adds_only_what_follows() -> None:
    agreement = LocalAgreement(0)
    agreement.update(words(["please", "book", "a", "table"]))
    agreement.update(words(["please", "book", "a", "table", "for"]))
    assert agreement.text == "please book a table"
    # "please" heard as "police": the last confirmed words are found, and what follows them
    agreement.update(words(["police", "book", "a", "table", "for", "two"]))
    assert agreement.update(words(["police", "book", "a", "table", "for", "two", "at"]))
    assert agreement.text == "please book a table for two"
    # nor are they there: by the timestamps, after the last confirmed word's end
    agreement.update(words(["please", "look", "the", "cable", "for", "two", "at", "seven"]))
    assert agreement.text == "please book a table for two at"


def test_a_tail_repeating_the_last_confirmed_word_is_not_a_new_word() -> None:
    agreement = LocalAgreement(0)
    agreement.update(words(["please", "book"]))
    agreement.update(words(["please", "book"]))
    commit = agreement.commit
    # a decode of the audio after a boundary a little early hears the end of "book" again
    agreement.update(words(["book", "a", "table"], commit - 2000))
    assert agreement.update(words(["book", "a", "table", "for"], commit - 2000))
    assert agreement.text == "please book a table"
    assert agreement.with_tail("table for two.") == "please book a table for two."


def test_the_final_is_the_confirmed_prefix_and_what_the_buffer_heard_after_it() -> None:
    agreement = LocalAgreement(0)
    assert agreement.final(" Please book.") == "Please book."  # no passes: all of it
    agreement.update(words(["Please", "book", "a", "table"]))
    agreement.update(words(["Please", "book", "a", "table", "for"]))
    assert agreement.final(" Please book a table for two.") == "Please book a table for two."
    assert agreement.final("please, book a table") == "Please book a table"
    assert agreement.final("Please book a table.") == "Please book a table."  # its end mark
    assert agreement.final("Please book a Table!") == "Please book a table"  # not a new word
    # a word before the last ones heard otherwise: found by the last confirmed words
    assert agreement.final("Police book a table for two.") == "Please book a table for two."
    # the last ones heard otherwise: not found; the caller decodes the tail alone
    assert agreement.final("Please look the table for two.") is None
    assert agreement.with_tail(" for two.") == "Please book a table for two."
    assert agreement.with_tail("table for two.") == "Please book a table for two."  # repeat
    assert agreement.with_tail("") == "Please book a table"
    # nothing after the confirmed words, which the buffer's decode wrote otherwise: its mark
    assert agreement.with_tail("", "Please book a Table?") == "Please book a table?"
    assert agreement.with_tail(" for", "Please book a table for.") == "Please book a table for."
    assert final_text("", " hello ") == "hello"
    assert join(words(["a", "b"])) == "a b"


def test_the_last_confirmed_word_and_one_before_it_place_what_follows() -> None:
    agreement = LocalAgreement(0)
    agreement.update(words(["Please", "book", "a", "table", "for", "two", "at", "seven."]))
    agreement.update(words(["Please", "book", "a", "table", "for", "two", "at", "7", ".3."]))
    assert agreement.text == "Please book a table for two at"
    # the decode at the end writes the number in digits: "at" and "for" are found
    heard = "Please book a table for 2 at 730."
    assert agreement.final(heard) == "Please book a table for two at 730."
    # "at" alone is not enough: the words before it were heard otherwise
    assert agreement.final("Please book a cable four to at 730.") is None


def test_a_long_buffer_starts_after_its_last_confirmed_sentence() -> None:
    spoken = ["I", "need", "a", "taxi.", "It", "should", "come", "at", "nine"]
    step = 16_000  # a word a second
    agreement = LocalAgreement(0)
    agreement.update(words(spoken[:6], step=step), end=6 * step)
    agreement.update(words(spoken[:7], step=step), end=7 * step)
    assert agreement.text == "I need a taxi. It should"
    assert agreement.buffer_start == 0  # 7 s: not long yet
    agreement.update(words(spoken[:8], step=step), end=8 * step + 1)
    assert agreement.buffer_start == words(spoken, step=step)[3].end  # after "taxi."
    assert agreement.context == "I need a taxi."
    # the next pass decodes from there, the sentence before as its prompt
    tail = words(spoken, step=step)[4:]
    assert [w.text for w in agreement.update(tail)] == [" at"]  # as the pass before heard
    assert agreement.text == "I need a taxi. It should come at"
    assert agreement.final("It should come at nine.") == "I need a taxi. It should come at nine."


def test_a_long_buffer_without_a_sentence_end_is_cut_at_its_last_confirmed_word() -> None:
    spoken = [f"w{i}" for i in range(24)]
    step = 16_000
    agreement = LocalAgreement(0)
    agreement.update(words(spoken[:12], step=step), end=12 * step)
    agreement.update(words(spoken[:13], step=step), end=13 * step)
    assert agreement.buffer_start == 0  # 13 s and no sentence end: not over 20 s
    agreement.update(words(spoken[:21], step=step), end=21 * step)
    assert agreement.buffer_start == agreement.commit == words(spoken, step=step)[12].end
    assert agreement.context == agreement.text


# ------------------------------------------------------------------ properties

word_text = st.sampled_from([*SPOKEN, "Please", "Book,", "table.", "tea", "uh"])


@st.composite
def passes(draw: st.DrawFn) -> list[list[str]]:
    """Passes over a growing turn: each a noisy reading of the words spoken so far."""
    out = []
    for n in range(1, len(SPOKEN) + 1):
        heard = list(SPOKEN[:n])
        for i in draw(st.lists(st.integers(0, n - 1), max_size=2)):  # misheard words
            heard[i] = draw(word_text)
        heard = heard[: draw(st.integers(max(0, n - 2), n))]  # the end not heard yet
        out.append(heard)
    return out


def run(agreement: LocalAgreement, reading: list[str]) -> list[Word]:
    """Feed one pass as the uplink does: the words of the whole buffer (the turn: none of
    these is long), confirmed ones included, each where it was spoken."""
    return agreement.update(words(reading))


@settings(max_examples=300, deadline=None)
@given(passes())
def test_confirmed_words_never_change_and_only_grow(readings: list[list[str]]) -> None:
    agreement = LocalAgreement(0)
    before: list[Word] = []
    for reading in readings:
        new = run(agreement, reading)
        assert agreement.confirmed == before + new  # an extension, never an edit
        assert all(a.end <= b.start for a, b in pairwise(agreement.confirmed))
        before = list(agreement.confirmed)


@settings(max_examples=300, deadline=None)
@given(passes(), st.lists(word_text, max_size=4))
def test_every_prefix_starts_the_final(readings: list[list[str]], tail: list[str]) -> None:
    agreement = LocalAgreement(0)
    prefixes = []
    for reading in readings:
        if run(agreement, reading):
            prefixes.append(agreement.text)
    # the final's decode of the buffer: the last reading and more words; or, when it heard
    # the confirmed words otherwise, the tail decoded alone
    final = agreement.final(" ".join(readings[-1] + tail))
    if final is None:
        final = agreement.with_tail(" ".join(tail))
    assert all(final.startswith(p) for p in prefixes)
    assert all(b.startswith(a) for a, b in pairwise(prefixes))


@settings(max_examples=300, deadline=None)
@given(passes())
def test_a_word_confirmed_was_in_two_consecutive_passes(readings: list[list[str]]) -> None:
    agreement = LocalAgreement(0)
    for reading in readings:
        pending = [norm(w.text) for w in agreement.pending]  # the previous pass's rest
        fed = words(reading)
        new = agreement.update(fed)
        if new:  # the next words of this pass, in order, agreeing with the previous pass
            j = fed.index(new[0])
            assert fed[j : j + len(new)] == new
            assert [norm(w.text) for w in new] == pending[: len(new)]
