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


def test_disagreement_on_the_first_unconfirmed_word_confirms_nothing_after_it() -> None:
    agreement = LocalAgreement(0)
    agreement.update(words(["please", "look", "a", "table"]))
    assert agreement.update(words(["please", "book", "a", "table"])) == words(["please"])
    # "a table" agreed too, but after a disagreement: not in order, not confirmed
    assert agreement.text == "please"


def test_later_passes_start_at_the_commit_and_only_add() -> None:
    agreement = LocalAgreement(1000)
    agreement.update(words(["please", "book"], 1000))
    agreement.update(words(["please", "book", "a"], 1000))
    commit = agreement.commit
    assert agreement.text == "please book" and commit == 1000 + 4000 + 3500
    # the next pass decodes from the commit: its words are the rest of the turn
    agreement.update(words(["a", "table", "for"], commit))
    agreement.update(words(["a", "table", "for", "two"], commit))
    assert agreement.text == "please book a table for"
    assert agreement.passes == 4


def test_a_pass_repeating_the_last_confirmed_word_is_not_a_new_word() -> None:
    agreement = LocalAgreement(0)
    agreement.update(words(["please", "book"]))
    agreement.update(words(["please", "book"]))
    commit = agreement.commit
    # a boundary a little early: the pass hears the end of "book" again
    agreement.update(words(["book", "a", "table"], commit - 2000))
    assert agreement.update(words(["book", "a", "table", "for"], commit - 2000))
    assert agreement.text == "please book a table"


def test_the_final_is_the_confirmed_prefix_and_the_tail() -> None:
    agreement = LocalAgreement(0)
    assert agreement.final(" Please book.") == "Please book."  # no passes: the tail is all
    agreement.update(words(["Please", "book", "a"]))
    agreement.update(words(["Please", "book", "a", "table"]))
    assert agreement.final(" table for two.") == "Please book a table for two."
    assert agreement.final("a table for two.") == "Please book a table for two."  # the repeat
    assert agreement.final("") == "Please book a"
    assert final_text("", " hello ") == "hello"
    assert join(words(["a", "b"])) == "a b"


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
    """Feed one pass as the uplink does: only the words after the confirmed ones, decoded
    from the commit point (the recognizer hears the turn from there)."""
    done = len(agreement.confirmed)
    return agreement.update(words(reading[done:], agreement.commit + 1))


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
    final = agreement.final(" ".join(tail))
    assert all(final.startswith(p) for p in prefixes)
    assert all(b.startswith(a) for a, b in pairwise(prefixes))


@settings(max_examples=300, deadline=None)
@given(passes())
def test_a_word_confirmed_was_in_two_consecutive_passes(readings: list[list[str]]) -> None:
    agreement = LocalAgreement(0)
    for reading in readings:
        pending = [norm(w.text) for w in agreement.pending]  # the previous pass's rest
        fed = words(reading[len(agreement.confirmed) :], agreement.commit + 1)
        new = agreement.update(fed)
        if new:  # the next words of this pass, in order, agreeing with the previous pass
            j = fed.index(new[0])
            assert fed[j : j + len(new)] == new
            assert [norm(w.text) for w in new] == pending[: len(new)]
