"""Tests of duplexd._downlink.segment: streaming text segmentation for TTS."""

from __future__ import annotations

import itertools
import sys
import time
import unicodedata
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duplexd._downlink import segment
from duplexd._downlink.segment import MAX_RUN_CHARS, Piece, Segmenter, split_text

pytestmark = pytest.mark.unit

EAGER_MARKS = ",;:!?"
LATER = "Okay.\n"  # a first piece, so the text after it is segmented with the later-piece policy


def texts(text: str, **policy: int) -> list[str]:
    return [p.text for p in split_text(text, **policy)]


def later(text: str, **policy: int) -> list[str]:
    """Pieces of `text` when it follows a first piece."""
    pieces = texts(LATER + text, **policy)
    assert pieces[0] == LATER.strip()
    return pieces[1:]


def feed_chunks(chunks: list[str], **policy: int) -> list[Piece]:
    seg = Segmenter(**policy)
    out: list[Piece] = []
    for chunk in chunks:
        out += seg.feed(chunk)
    return out + seg.finish()


def check_spans(text: str, pieces: list[Piece]) -> None:
    """Pieces cover `text` contiguously; each text is its stripped span and is not empty."""
    if not text.strip():
        assert pieces == []
        return
    assert pieces[0].start_char == 0
    if pieces[-1].end_char < len(text):  # the blank tail after "Hi," is not a piece
        assert not text[pieces[-1].end_char :].strip()
        assert cut_in_whitespace(text, pieces, len(pieces) - 1)
        text = text[: pieces[-1].end_char]
    assert pieces[-1].end_char == len(text)
    for a, b in itertools.pairwise(pieces):
        assert a.end_char == b.start_char
    for p in pieces:
        assert p.start_char < p.end_char
        assert p.text == text[p.start_char : p.end_char].strip()
        assert p.text
    assert "".join(text[p.start_char : p.end_char] for p in pieces) == text
    # whitespace between pieces belongs to the earlier one (every later span starts non-blank),
    # except after a first piece cut at once at a clause mark (its span ends at the mark) or a
    # piece ended by a long run of whitespace (its span ends within the run)
    for k, p in enumerate(pieces[1:], start=1):
        if text[p.start_char].isspace():
            assert cut_in_whitespace(text, pieces, k - 1)


def cut_in_whitespace(text: str, pieces: list[Piece], k: int) -> bool:
    """Whether piece `k` may end before the whitespace after it: an eager first piece, or a
    piece ended by `MAX_RUN_CHARS` whitespace characters."""
    end = pieces[k].end_char
    if k == 0 and is_eager_first(text, pieces[0]):
        return True
    return end >= MAX_RUN_CHARS and text[end - MAX_RUN_CHARS : end].isspace()


def is_eager_first(text: str, first: Piece) -> bool:
    """Whether the first piece ends with a mark right after a letter, at its span's end."""
    end = first.end_char
    return end >= 2 and text[end - 1] in EAGER_MARKS and text[end - 2].isalpha()


# -- first piece ---------------------------------------------------------------------------


def test_first_piece_ends_at_first_clause() -> None:
    assert texts("Well, I think that is right. And so on.") == [
        "Well,",
        "I think that is right.",
        "And so on.",
    ]


@pytest.mark.parametrize("mark", [",", ";", ":", "\u2014", "\u2013"])
def test_first_piece_clause_marks(mark: str) -> None:
    assert texts(f"Right{mark} let us go now.")[0] == f"Right{mark}"


def test_spaced_em_dash_is_a_clause() -> None:
    assert texts("So \u2014 here we go.")[0] == "So \u2014"


def test_whole_sentences_are_never_cut_by_words() -> None:
    # Changed: the first piece used to end after its sixth word, later ones after 12, 24...
    # words; a sentence that is all there is now one piece (but for clause marks and the caps)
    doctor = "Doctor Patel said the results should be ready by the end of the week."
    airport = "How many kilometers is it from the airport to the city center?"
    assert texts(doctor + " " + airport) == [doctor, airport]
    assert texts(airport + " " + doctor) == [airport, doctor]
    words = " ".join(f"W{i}" for i in range(30)) + "."  # 149 characters, under the caps
    assert later(words + " " + words) == [words, words]


def test_first_piece_emitted_at_the_clause_mark() -> None:
    # Changed: the comma after a word ends the first piece at once, with no look-ahead; the
    # whitespace after it belongs to the next piece.
    seg = Segmenter()
    assert seg.feed("Hel") == []
    assert seg.feed("lo") == []
    assert seg.feed(",") == [Piece("Hello,", 0, 6)]
    assert seg.feed(" ") == []
    assert seg.feed("th") == []
    assert seg.feed("ere") == []
    assert seg.finish() == [Piece("there", 6, 12)]


@pytest.mark.parametrize("mark", [",", ";", ":", "!", "?"])
def test_first_clause_emitted_with_no_further_text(mark: str) -> None:
    seg = Segmenter()
    assert seg.feed("Hello") == []
    assert seg.feed(" there") == []
    assert seg.feed(mark) == [Piece(f"Hello there{mark}", 0, 12)]  # the LLM may pause here
    assert seg.feed(" how") == []
    assert seg.finish() == [Piece("how", 12, 16)]


def test_eager_mark_in_one_chunk_with_what_follows() -> None:
    assert split_text("Hello there, how are you?") == [
        Piece("Hello there,", 0, 12),
        Piece("how are you?", 12, 25),
    ]
    assert texts("Hi,there you.") == ["Hi,", "there you."]  # the same rule, whatever follows


@pytest.mark.parametrize(
    ("prefix", "rest"),
    [
        ("About 1,", "000 people came."),  # a digit before the mark
        ("Meet at 10:", "30 sharp."),
        ("Visit https:", "//example.com now."),  # a URL scheme
        ("See a.b?", "c=d now."),  # not a plain word
        ('"Really?', '" she asked.'),  # inside an open quote: a closer may follow
        ("(Yes,", " really) ok."),
        ("Wait.", " Now."),  # a period keeps its look-ahead (abbreviations)
    ],
)
def test_marks_that_still_wait(prefix: str, rest: str) -> None:
    seg = Segmenter()
    assert seg.feed(prefix) == []
    assert [p.text for p in seg.feed(rest) + seg.finish()] == texts(prefix + rest)


def test_eager_rule_only_in_first_piece() -> None:
    assert later("Well, sure; fine: ok! Done.") == ["Well, sure; fine: ok!", "Done."]


def test_first_piece_sentence() -> None:
    assert texts("Yes. Go.") == ["Yes.", "Go."]


# -- later pieces ----------------------------------------------------------------------------


def test_later_pieces_are_whole_sentences() -> None:
    assert later("This has, a comma; and more: all in one. Next one here.") == [
        "This has, a comma; and more: all in one.",
        "Next one here.",
    ]


def test_questions_and_exclamations_split() -> None:
    assert later("Is it? Yes! Great\u203d Done.") == ["Is it?", "Yes!", "Great\u203d", "Done."]


def test_closing_quotes_and_brackets() -> None:
    assert later('He said "hi." Then left. (It was late.) She slept.') == [
        'He said "hi."',
        "Then left.",
        "(It was late.)",
        "She slept.",
    ]
    assert later("\u201cReally?\u201d Yes.") == ["\u201cReally?\u201d", "Yes."]


def test_quoted_question_followed_by_lowercase_continues() -> None:
    assert later('"Really?" she asked. Fine.') == ['"Really?" she asked.', "Fine."]


@pytest.mark.parametrize(
    "sentence",
    [
        "Pi is 3.14 roughly.",
        "It costs $4.50 today.",
        "Meet at 10:30 sharp.",
        "About 1,000 people came.",
        "Mr. Smith met Mrs. Jones.",
        "Dr. Who and Ms. Marvel.",
        "Prof. Xavier lives on Main St. Westchester.",
        "Apples, pears, etc. Are fine.",
        "Fruit, e.g. Apples, i.e. Round ones.",
        "Wake at 7 a.m. Sharp and sleep at 11 p.m. Always.",
        "She moved to the U.S. In 1990.",
        "Born Jan. 5 and wed Feb. 3.",
        "See No. 5 and Fig. 2 on p. 12.",
        "Acme Inc. And Foo Ltd. Merged.",
        "Sammy Davis Jr. Sang well.",
        "J. R. R. Tolkien wrote it.",
        "Wait... what is that?",
        "Visit https://example.com/a.b?c=d now.",
        "Mail me@example.com today.",
        "Version 1.2.3 ships.",
        "Rock vs. Paper.",
        "The approx. total is big.",
    ],
)
def test_no_split_inside_sentence(sentence: str) -> None:
    assert later(sentence + " Next.") == [sentence, "Next."]


def test_ellipsis_followed_by_capital_ends_sentence() -> None:
    assert later("I wonder... Maybe not.") == ["I wonder...", "Maybe not."]
    assert later("I wonder\u2026 Maybe not.") == ["I wonder\u2026", "Maybe not."]


def test_ellipsis_followed_by_lowercase_is_a_clause() -> None:
    assert texts("Well... maybe so. Fine.") == ["Well...", "maybe so.", "Fine."]


def test_no_dot_without_digit_ends_sentence() -> None:
    assert later("I said no. Then left.") == ["I said no.", "Then left."]


def test_number_then_period_mid_line_ends_sentence() -> None:
    assert later("I have 3. Then more.") == ["I have 3.", "Then more."]


def test_newlines_end_sentences() -> None:
    assert later("First para\n\nSecond para here") == ["First para", "Second para here"]
    assert later("Shopping list:\n- eggs\n- milk") == ["Shopping list:", "- eggs", "- milk"]


def test_numbered_list_markers_do_not_split() -> None:
    assert texts("Steps:\n1. Preheat the oven.\n2. Mix it.") == [
        "Steps:",
        "1. Preheat the oven.",
        "2. Mix it.",
    ]


def test_long_sentence_cut_at_clause_after_max_chars() -> None:
    clause = "word " * 8 + "end, "  # 45 chars
    text = clause * 6 + "fin."
    pieces = later(text, max_piece_chars=100, hard_max_piece_chars=1000)
    assert all(p.endswith(",") for p in pieces[:-1])
    assert all(len(p) >= 100 for p in pieces[:-1])
    assert " ".join(pieces) == text.strip()


def test_long_sentence_without_punctuation_cut_at_word_under_cap() -> None:
    words = [f"w{i}" for i in range(400)]
    text = " ".join(words) + "."
    pieces = later(text, max_piece_chars=60, hard_max_piece_chars=80)
    assert len(pieces) > 5
    assert all(len(p) <= 80 for p in pieces)
    assert all(len(p) > 70 for p in pieces[:-1])  # cut late, at the last word under the cap
    assert " ".join(pieces).split() == text.split()


def test_hard_cap_prefers_a_late_clause() -> None:
    text = "a" * 40 + ", " + "bb " * 30 + "end."
    pieces = later(text, max_piece_chars=60, hard_max_piece_chars=80)
    assert pieces[0] == "a" * 40 + ","


def test_word_longer_than_cap_is_cut_at_the_cap() -> None:
    # Changed: a word longer than the hard cap used to stay whole (so a client could make one
    # piece, and the engine's memory for it, as long as it liked); now it is cut at the cap.
    long_word = "x" * 50
    pieces = later(f"{long_word} and more words here.", max_piece_chars=10, hard_max_piece_chars=20)
    assert pieces == ["x" * 20, "x" * 20, "x" * 10 + " and more", "words here."]


def test_default_cap() -> None:
    text = " ".join(["lorem"] * 200)
    pieces = later(text)
    assert all(len(p) <= 300 for p in pieces)


# -- edges and API ---------------------------------------------------------------------------


def test_empty_and_whitespace_only() -> None:
    assert split_text("") == []
    assert split_text("   \n\n ") == []
    seg = Segmenter()
    assert seg.feed("   ") == []
    assert seg.finish() == []


def test_leading_and_trailing_whitespace_go_into_spans() -> None:
    text = "  Hello, world.  \n"
    pieces = split_text(text)
    # Changed: the first piece ends at its comma; the space after it starts the next span.
    assert pieces == [Piece("Hello,", 0, 8), Piece("world.", 8, len(text))]


def test_finish_flushes_unterminated_text() -> None:
    seg = Segmenter()
    assert seg.feed("no punctuation at all") == []
    assert seg.finish() == [Piece("no punctuation at all", 0, 21)]


def test_decimal_across_chunks() -> None:
    seg = Segmenter()
    assert seg.feed("Okay. It is 3.") == [Piece("Okay.", 0, 6)]
    out = seg.feed("5 now.")
    assert [p.text for p in out + seg.finish()] == ["It is 3.5 now."]


def test_decimal_across_chunks_first_emits_on_next_char() -> None:
    seg = Segmenter()
    assert seg.feed("Okay.") == []
    assert seg.feed(" I") == [Piece("Okay.", 0, 6)]


def test_unicode_and_cjk() -> None:
    assert texts("\u4f60\u597d\uff0c\u4e16\u754c\u3002\u6211\u5f88\u597d\uff01\u8c22\u8c22") == [
        "\u4f60\u597d\uff0c",
        "\u4e16\u754c\u3002",
        "\u6211\u5f88\u597d\uff01",
        "\u8c22\u8c22",
    ]
    text = "Caf\u00e9 cr\u00e8me, s'il vous pla\u00eet. \u00c7a va? \U0001f600 Oui!"
    pieces = split_text(text)
    check_spans(text, pieces)
    assert [p.text for p in pieces] == [
        "Caf\u00e9 cr\u00e8me,",
        "s'il vous pla\u00eet.",
        "\u00c7a va?",
        "\U0001f600 Oui!",
    ]


def test_received_chars() -> None:
    seg = Segmenter()
    seg.feed("Hello, wor")
    seg.feed("ld")
    assert seg.received_chars == 12


def test_single_use() -> None:
    seg = Segmenter()
    seg.finish()
    with pytest.raises(RuntimeError):
        seg.feed("x")
    with pytest.raises(RuntimeError):
        seg.finish()


def test_bad_policy() -> None:
    with pytest.raises(ValueError):
        Segmenter(max_piece_chars=100, hard_max_piece_chars=50)


def test_token_stream_matches_whole() -> None:
    tokens = [
        *["Hel", "lo", " there", ",", " how", " are", " you", "?", " I", "'m", " Dr", "."],
        *[" J", ".", " Smith", ",", " and", " it", "'s", " 3", ".", "5", " degrees", "."],
    ]
    text = "".join(tokens)
    assert feed_chunks(tokens) == split_text(text)
    assert [p.text for p in split_text(text)] == [
        "Hello there,",
        "how are you?",
        "I'm Dr. J. Smith, and it's 3.5 degrees.",
    ]


# -- properties ------------------------------------------------------------------------------

_ALPHABET = st.sampled_from(
    [
        *"aAbBzZ019 .,;:!?'\"()-\n\t$@/",
        *["\u2014", "\u2026", "\u00e9", "\u3002", "\uff0c", "\u201d", "\U0001f600", "  ", "..."],
        *["Mr.", "e.g.", "3.14", "1,000", "10:30", " J. ", "U.S.", "No. 5", "\n\n", "etc."],
        *["Hi,", " well;", "ok:", "yes!", "so?", "http:", "\u201c", "don't,"],
    ]
)
_TEXT = st.lists(_ALPHABET, max_size=80).map("".join)
_POLICY = st.fixed_dictionaries(
    {
        "max_piece_chars": st.integers(1, 30),
        "hard_max_piece_chars": st.integers(30, 60),
    }
)


def _split_at(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    bounds = [0, *points, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=400, deadline=None)
@given(text=_TEXT, cuts=st.lists(st.integers(0, 10_000), max_size=40), policy=_POLICY)
def test_chunking_invariance_and_spans(text: str, cuts: list[int], policy: dict[str, int]) -> None:
    whole = split_text(text, **policy)
    check_spans(text, whole)
    assert feed_chunks(_split_at(text, cuts), **policy) == whole


@settings(max_examples=300, deadline=None)
@given(text=_TEXT, policy=_POLICY)
def test_eager_first_piece_needs_no_look_ahead(text: str, policy: dict[str, int]) -> None:
    """A first piece ending at a mark after a letter is out once the text up to it is in."""
    whole = split_text(text, **policy)
    if len(whole) < 2 or not is_eager_first(text, whole[0]):
        return  # (a last piece may end at a mark because the text ends there)
    if len(whole[0].text) == policy["hard_max_piece_chars"]:
        return  # Changed: it may be a word cut at the hard cap, decided by the next character
    seg = Segmenter(**policy)
    assert seg.feed(text[: whole[0].end_char]) == [whole[0]]


@settings(max_examples=150, deadline=None)
@given(text=_TEXT, policy=_POLICY)
def test_char_by_char_equals_whole(text: str, policy: dict[str, int]) -> None:
    assert feed_chunks(list(text), **policy) == split_text(text, **policy)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=60))
def test_arbitrary_unicode_spans(text: str) -> None:
    pieces = split_text(text)
    check_spans(text, pieces)
    assert feed_chunks(list(text)) == pieces


@settings(max_examples=200, deadline=None)
@given(
    words=st.lists(st.text("abcdefgh", min_size=1, max_size=12), min_size=1, max_size=120),
    cap=st.integers(20, 60),
)
def test_pieces_respect_cap_when_words_fit(words: list[str], cap: int) -> None:
    text = " ".join(words)
    pieces = split_text(text, max_piece_chars=cap // 2, hard_max_piece_chars=cap)
    assert all(len(p.text) <= cap for p in pieces)
    assert " ".join(p.text for p in pieces) == text


def test_long_sentences_are_cut_by_the_character_caps_only() -> None:
    """Changed: an LLM's long sentence without punctuation was cut into pieces of 6, 12, 24...
    words; now only `hard_max_piece_chars` cuts it (at its last word under the cap), and the
    utterance runner's `cut_early` when the listener would otherwise wait."""
    words = [f"w{i}" for i in range(100)]
    pieces = texts(" ".join(words) + ".")
    assert len(pieces) == 2  # 390 characters: one cut, at the last word that fits in 300
    assert len(pieces[0]) <= HARD < len(pieces[0]) + 1 + len(pieces[1].split()[0])
    assert " ".join(pieces).split() == (" ".join(words) + ".").split()


@settings(max_examples=200, deadline=None)
@given(
    sentences=st.lists(
        st.lists(st.text("abcdefgh", min_size=1, max_size=9), max_size=24),
        min_size=1,
        max_size=6,
    )
)
def test_sentences_under_the_caps_stay_whole(sentences: list[list[str]]) -> None:
    """Whole text of sentences without clause marks, each under `hard_max_piece_chars`: one
    piece a sentence, whatever their word counts."""
    written = [" ".join(["So", *words, "done."]) for words in sentences]  # no abbreviation
    assert texts(" ".join(written)) == written


def test_short_sentences_stay_whole_after_the_first_piece() -> None:
    assert later("This has, a comma; and more: all in one. Next one here.") == [
        "This has, a comma; and more: all in one.",
        "Next one here.",
    ]


# -- cut_early: the runner's cut when the listener would wait --------------------------------


def early(chunks: list[str], **policy: int) -> tuple[Piece | None, list[Piece]]:
    """Feed `chunks` (no piece may come of them), `cut_early`, then finish."""
    seg = Segmenter(**policy)
    for chunk in chunks:
        assert seg.feed(chunk) == []
    piece = seg.cut_early()
    return piece, seg.finish()


@pytest.mark.parametrize(
    ("streamed", "cut"),
    [
        # before a conjunction, relative word or preposition...
        (
            "Doctor Patel said the results should be ready by the",
            "Doctor Patel said the results should be ready",
        ),
        ("How many kilometers is it from the air", "How many kilometers is it"),
        ("The engineers who designed the bridge never exp", "The engineers"),
        # ... the last one; a phrase word is known only once the word after it has begun
        ("We walked along the river and talked until it", "We walked along the river and talked"),
        ("We walked along the river and", "We walked"),
        ("We walked along the river an", "We walked"),
        # ... with two words or more before it, else the last word boundary
        ("So if you want to", "So if you want"),
        ("Go to", "Go"),
        # the words the caps do not count: an abbreviation is not a boundary
        ("Please ask Mr. Smith", "Please ask"),
    ],
)
def test_cut_early_at_a_phrase_boundary(streamed: str, cut: str) -> None:
    piece, rest = early([streamed])
    assert piece == Piece(cut, 0, len(cut) + 1)
    assert [p.text for p in rest] == [streamed[len(cut) + 1 :]]


def test_cut_early_prefers_the_last_clause() -> None:
    # a later piece keeps its clauses until `max_piece_chars`
    seg = Segmenter()
    assert seg.feed("Okay. Well, the train to Paris, which leaves at noon from the") == [
        Piece("Okay.", 0, 6)
    ]
    assert seg.cut_early() == Piece("Well, the train to Paris,", 6, 32)
    assert seg.feed(" station, is late.") == []
    assert seg.finish() == [Piece("which leaves at noon from the station, is late.", 32, 79)]


def test_cut_early_without_a_boundary_changes_nothing() -> None:
    for chunks in (["Hello"], ["Hello "], ["  Hel", "lo  "], ["  "], []):
        seg = Segmenter()
        for chunk in chunks:
            assert seg.feed(chunk) == []
        assert seg.cut_early() is None  # no boundary decided: "Hello" may go on
        text = "".join(chunks)
        assert seg.feed("there, you.") + seg.finish() == split_text(text + "there, you.")
    seg = Segmenter()
    assert seg.feed("Hello the") == []
    assert seg.cut_early() == Piece("Hello", 0, 6)  # never "Hello the": "the" may go on
    assert seg.cut_early() is None  # "the" has no boundary after it yet
    assert seg.feed("re you") == []
    assert seg.cut_early() == Piece("there", 6, 12)
    assert seg.finish() == [Piece("you", 12, 15)]
    with pytest.raises(RuntimeError):
        seg.cut_early()


def test_cut_early_then_whole_sentences() -> None:
    """After a cut, the rest is a later piece: a whole sentence (no eager clause mark)."""
    seg = Segmenter()
    assert seg.feed("Doctor Patel said") == []
    assert seg.cut_early() == Piece("Doctor Patel", 0, 13)
    assert seg.feed(", the results should be ready, by the end of the week. Bye") == [
        Piece("said, the results should be ready, by the end of the week.", 13, 72)
    ]


_WORDS = st.sampled_from(
    [
        *["and", "to", "of", "which", "the", "a", "big", "Mr.", "3.14", "1,000", "U.S."],
        *["Hi,", "ok:", "yes!", "so?", "end.", "\u2014", "\u3002", "\u4f60\uff0c", "\n"],
        *["(to", "that)", '"if', "x" * 40, "  ", "\t"],
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    words=st.lists(_WORDS, max_size=60),
    spaces=st.lists(st.sampled_from([" ", "", "  "]), min_size=60, max_size=60),
    cuts=st.lists(st.integers(0, 10_000), max_size=30),
    asks=st.lists(st.booleans(), min_size=31, max_size=31),
    policy=_POLICY,
)
def test_cut_early_properties(
    words: list[str],
    spaces: list[str],
    cuts: list[int],
    asks: list[bool],
    policy: dict[str, int],
) -> None:
    """Whenever it is called: the pieces still cover the text and stay under the caps, the
    buffer stays bounded, and a piece cut early ends at a boundary already decided
    (whitespace or a CJK mark and its closers before it, the next word begun)."""
    text = "".join(w + sp for w, sp in zip(words, spaces, strict=False))
    chunks = _split_at(text, cuts)
    seg = Segmenter(**policy)
    out: list[Piece] = []
    bound = policy["hard_max_piece_chars"] + MAX_RUN_CHARS
    for chunk, ask in zip(chunks, asks, strict=False):
        out += seg.feed(chunk)
        if ask:
            piece = seg.cut_early()
            if piece is None:
                continue
            out.append(piece)
            assert piece.end_char < seg.received_chars
            assert not text[piece.end_char].isspace()  # the next word has begun
            before = text[piece.end_char - 1]  # a CJK mark, and the closers after it
            assert before.isspace() or before in "\u3002\uff0c" + segment._CLOSERS
        assert len(seg._buf) < bound
    out += seg.finish()
    check_spans(text, out)
    assert all(len(p.text) <= policy["hard_max_piece_chars"] for p in out)


@settings(max_examples=200, deadline=None)
@given(text=_TEXT, cuts=st.lists(st.integers(0, 10_000), max_size=20), policy=_POLICY)
def test_cut_early_returning_none_changes_nothing(
    text: str, cuts: list[int], policy: dict[str, int]
) -> None:
    """Asking after every chunk, but only where nothing can be cut: the same pieces as never
    asking."""
    seg = Segmenter(**policy)
    out: list[Piece] = []
    for chunk in _split_at(text, cuts):
        out += seg.feed(chunk)
        if seg._word_gap is None:  # (white-box: no boundary decided, so None is due)
            assert seg.cut_early() is None
    assert out + seg.finish() == split_text(text, **policy)


# -- bounds: what a client sends cannot make a piece long or the segmenter slow ---------------

HARD = 300  # DEFAULT_HARD_MAX_PIECE_CHARS


def feed_bounded(chunks: Iterable[str], **policy: int) -> list[Piece]:
    """Feed `chunks` one by one, checking after each that only a bounded piece is kept."""
    seg = Segmenter(**policy)
    bound = policy.get("hard_max_piece_chars", HARD) + MAX_RUN_CHARS
    out: list[Piece] = []
    for chunk in chunks:
        out += seg.feed(chunk)
        assert len(seg._buf) < bound
    return out + seg.finish()


def line_events(feed: Callable[[], object]) -> int:
    """Lines of segment.py executed while `feed` runs: its Python-level work, counted."""
    count = 0
    filename = segment.__file__

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        count += event == "line"
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename == filename else None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        feed()
    finally:
        sys.settrace(previous)
    return count


def check_bounded(text: str, **policy: int) -> list[Piece]:
    """One character at a time equals whole; pieces within the cap; spans as promised."""
    whole = split_text(text, **policy)
    check_spans(text, whole)
    assert feed_bounded(text, **policy) == whole
    cap = policy.get("hard_max_piece_chars", HARD)
    assert all(len(p.text) <= cap for p in whole)
    return whole


@pytest.mark.parametrize("spaces", [8_000, 32_767])
def test_long_run_of_spaces_one_char_at_a_time(spaces: int) -> None:
    """The hostile message: "a" then thousands of 1-byte TEXT chunks of a space."""
    text = "a" + " " * spaces
    pieces = check_bounded(text)
    # a run of MAX_RUN_CHARS spaces ends the piece; the rest of the run is in no piece
    assert pieces == [Piece("a", 0, 1 + MAX_RUN_CHARS)]
    after = Piece("b", 1 + MAX_RUN_CHARS, len(text) + 1)  # the rest of the run starts its span
    assert check_bounded(text + "b") == [pieces[0], after]


def test_long_run_of_cjk_marks_one_char_at_a_time() -> None:
    pieces = check_bounded("\u3002" * 10_922)
    sizes = [len(p.text) for p in pieces]
    assert sizes == [MAX_RUN_CHARS] * (10_922 // MAX_RUN_CHARS) + [10_922 % MAX_RUN_CHARS]


def test_long_runs_end_the_piece_whatever_follows() -> None:
    spaced = "Mr." + " " * MAX_RUN_CHARS + "Smith came."  # not a sentence end, but a long gap
    assert texts(spaced) == ["Mr.", "Smith came."]
    assert texts("Mr." + " " * (MAX_RUN_CHARS - 1) + "Smith came.") == [
        "Mr." + " " * (MAX_RUN_CHARS - 1) + "Smith came."
    ]
    marks = "\u4f60" + "\uff0c" * (MAX_RUN_CHARS - 1) + "\u201d" + "\u201d\u4e16"
    assert texts(marks) == [marks[: 1 + MAX_RUN_CHARS], "\u201d\u4e16"]


def test_word_without_spaces_is_cut_at_the_hard_cap() -> None:
    """`TEXT(uid=1, END, "a" * 32768)`: one legal message, no spaces, no longer one piece."""
    text = "a" * 32_768
    pieces = check_bounded(text)
    assert [len(p.text) for p in pieces] == [HARD] * (32_768 // HARD) + [32_768 % HARD]
    for size in (1, 7, 300, 4096, 32_768):
        chunks = [text[i : i + size] for i in range(0, len(text), size)]
        assert feed_chunks(chunks) == pieces


def test_hard_cap_counts_from_the_first_character() -> None:
    text = "   \n" + "b" * 45
    assert split_text(text, max_piece_chars=10, hard_max_piece_chars=20) == [
        Piece("b" * 20, 0, 24),
        Piece("b" * 20, 24, 44),
        Piece("b" * 5, 44, 49),
    ]


def test_hard_cap_still_prefers_a_boundary() -> None:
    pieces = later("ab " + "c" * 40, max_piece_chars=10, hard_max_piece_chars=20)
    assert pieces == ["ab", "c" * 20, "c" * 20]


@pytest.mark.parametrize(
    ("cluster", "note"),
    [
        ("e\u0301", "e + COMBINING ACUTE ACCENT"),
        ("a\u0301\u0323\u0308", "three combining marks"),
        ("\u0915\u093f", "DEVANAGARI KA + VOWEL SIGN I (a spacing mark)"),
        ("\u2764\ufe0f", "HEAVY BLACK HEART + VARIATION SELECTOR-16"),
        ("\U0001f468\u200d\U0001f469\u200d\U0001f467", "family emoji joined by ZWJ"),
    ],
)
def test_cap_does_not_split_a_cluster(cluster: str, note: str) -> None:
    for before in range(HARD - len(cluster) + 1, HARD):  # the cluster straddles the cap
        text = "x" * before + cluster + "y" * 10
        pieces = check_bounded(text)
        assert [p.text for p in pieces] == ["x" * before, cluster + "y" * 10], note
    text = "x" * (HARD - len(cluster)) + cluster + "y" * 10  # ends right at the cap
    assert [p.text for p in split_text(text)] == [text[:HARD], "y" * 10]


def test_a_cluster_longer_than_the_cap_is_cut_anyway() -> None:
    text = "a" + "\u0301" * 700  # zalgo: never an empty piece, never a piece over the cap
    pieces = check_bounded(text)
    assert [len(p.text) for p in pieces] == [300, 300, 101]
    spaced = "ab " + "\u0301" * 400  # marks on a space: not kept with it across a cut
    assert [len(p.text) for p in check_bounded(spaced)] == [2, 300, 100]


_HOSTILE = [
    pytest.param(lambda n: "a" + " " * n, id="spaces"),
    pytest.param(lambda n: "\u3002" * n, id="cjk-marks"),
    pytest.param(lambda n: "a" * n, id="one-word"),
    pytest.param(lambda n: ("a," * n)[:n], id="commas-in-a-word"),
    pytest.param(lambda n: ("1, " * n)[:n], id="numbers-and-commas"),
    pytest.param(lambda n: ('"(a:b ' * n)[:n], id="open-quotes"),
    pytest.param(lambda n: ("Mr. " * n)[:n], id="no-break"),
    pytest.param(lambda n: ("a b " + "c" * 297 + " ") * (n // 302), id="fall-back"),
    pytest.param(lambda n: "a" + "\u0301" * n, id="zalgo"),
    pytest.param(lambda n: ("x\u3002\u201d" * n)[:n], id="cjk-and-closers"),
    pytest.param(lambda n: ("Well, this is it. " * n)[:n], id="prose"),
]


@pytest.mark.parametrize("make", _HOSTILE)
def test_work_is_linear_in_the_text(make: Callable[[int], str]) -> None:
    """Python lines run per character stay flat as the text doubles: the old code, which
    reread a pending run of spaces or CJK marks on every chunk, ran 4,000 lines a character
    at 4,000 characters, 4x the lines for 2x the text. (C-level work per call, regex scans
    and copies, is bounded by the buffer, which `feed_bounded` checks.)"""

    def work_per_char(n: int) -> float:
        text = make(n)
        return line_events(lambda: feed_bounded(text)) / len(text)

    small, large = work_per_char(2_000), work_per_char(4_000)
    assert large <= 1.1 * small
    assert large <= 60


BOUNDARY_MARKS = EAGER_MARKS + "\u3002\uff0c\u201d"  # a piece may end after these
_LONG_RUNS = st.sampled_from(
    [
        *["a", "b ", "Mr. ", "Hi, ", ". ", "\u3002", "\u201d", "\u0301", "\u200d", "\U0001f600"],
        *[" " * 40, "\n" * 30, "\u3002" * 40, "\uff0c" * 33, "\u201d" * 20, "\u0301" * 25],
        "x" * 45,
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    text=st.lists(_LONG_RUNS, max_size=30).map("".join),
    cuts=st.lists(st.integers(0, 10_000), max_size=40),
    policy=_POLICY,
)
def test_bounds_hold_for_long_runs(text: str, cuts: list[int], policy: dict[str, int]) -> None:
    whole = split_text(text, **policy)
    check_spans(text, whole)
    assert all(len(p.text) <= policy["hard_max_piece_chars"] for p in whole)
    assert feed_chunks(_split_at(text, cuts), **policy) == whole
    assert feed_bounded(text, **policy) == whole
    for p in whole[:-1]:  # a cut at the cap (not at a boundary) keeps a base with its marks
        last, after = text[p.end_char - 1], text[p.end_char]
        at_boundary = last.isspace() or last in BOUNDARY_MARKS
        if not at_boundary and unicodedata.category(after)[0] == "M":
            # ... unless there was no base to go back to: one cluster, or marks on a space
            assert len(p.text) == policy["hard_max_piece_chars"]


@settings(max_examples=300, deadline=None)
@given(text=_TEXT, policy=_POLICY)
def test_pieces_never_pass_the_hard_cap(text: str, policy: dict[str, int]) -> None:
    assert all(len(p.text) <= policy["hard_max_piece_chars"] for p in split_text(text, **policy))


@pytest.mark.slow
def test_hostile_spaces_take_well_under_a_second() -> None:
    """Real time, generous bound: the 360 KB message of 32,767 one-space TEXT chunks (which
    blocked the event loop for 30 s on a 2-core box) and 10,922 "\u3002" chunks."""
    for chunks in (["a"] + [" "] * 32_767, ["\u3002"] * 10_922):
        seg = Segmenter()
        t0 = time.perf_counter()
        for chunk in chunks:
            seg.feed(chunk)
        seg.finish()
        assert time.perf_counter() - t0 < 0.5
