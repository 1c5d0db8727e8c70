"""Streaming text segmentation: cut LLM text, as it streams in, into pieces for the TTS engine.

Text arrives in arbitrary chunks (often one token: ``"Hel"``, ``"lo"``, ``" there"``, ``","``).
`Segmenter` turns it into `Piece`s as soon as each one is decided:

* the **first** piece ends at the first clause boundary (comma, semicolon, colon, em or en
  dash, or a sentence end), or
  after `first_piece_max_words` words, so first audio starts early;
* **later** pieces are whole sentences (``. ! ?``, ellipsis, plus closing quotes/brackets; a
  line break), but a sentence longer than the piece's word cap is cut when the cap is reached:
  at its last clause boundary if that lies past half the cap, else at the word boundary (the cap
  is `first_piece_max_words` times 2, 4, 8... for the 2nd, 3rd, 4th... piece, so text keeps
  ahead of the audio while an LLM is still writing a long sentence),
  at a clause boundary once longer than `max_piece_chars`, and at the last word boundary
  (the last clause boundary if one lies past half of `max_piece_chars`) before
  `hard_max_piece_chars` when no boundary came sooner.

A boundary is a run of whitespace (or, for CJK text, the point right after a full-width
sentence or clause mark).
It is decided only once the first non-whitespace character after it has arrived (or at
`Segmenter.finish`), and every decision looks only at text up to that character. So the pieces
never depend on how the text was chunked: feeding it whole, or a character at a time, gives
identical pieces. With LLM tokens such as ``" how"`` this costs no extra wait.

One exception makes first audio start sooner: in the **first** piece, a mark ``, ; : ! ?``
written right after a plain word (letters, inner apostrophes or hyphens, leading openers; no
digit, dot, slash...) ends the piece at once, right after the mark, whatever follows it
(``"Hello there,"`` is emitted as soon as the comma arrives, even if the LLM pauses). The rule
looks only at the text up to the mark, so chunking invariance holds. ``1,000``, ``10:30``,
``a.b?c``, ``https:`` and a mark inside an open quote or bracket (``"Really?" she said``)
still wait for what follows; so does ``.`` (abbreviations).

Not boundaries (but for the rule above): punctuation with no whitespace after it (``3.14``,
``$4.50``, ``1,000``, ``10:30``, URLs, e-mail addresses); a period after a known abbreviation
(``Mr. Dr. etc. e.g.`` …), after an initial or dotted acronym (``J. R. R. Tolkien``, ``U.S.``,
``a.m.``), after ``No.`` / ``p.`` / ``Fig.`` when a digit follows, after a list number at the
start of a line (``1.``), or when a lowercase letter follows; an ellipsis followed by a
lowercase letter is only a clause boundary.

Spans: pieces cover the received text contiguously. ``piece.text`` is
``text[piece.start_char:piece.end_char].strip()`` and is never empty; the whitespace between two
pieces (and any leading whitespace of the utterance) lies inside the earlier piece's span, except
after a first piece cut at once at a clause mark (above): its span ends at the mark, and the
whitespace after it starts the second piece's span. If the
text holds any non-whitespace character, the spans cover exactly ``[0, len(text))`` (but for
trailing whitespace after such a first piece when no other piece follows); otherwise there
are no pieces. Offsets count Python ``str`` characters (code points).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final

DEFAULT_FIRST_PIECE_MAX_WORDS: Final = 6
DEFAULT_MAX_PIECE_CHARS: Final = 200
DEFAULT_HARD_MAX_PIECE_CHARS: Final = 300

# Non-ASCII marks are spelled as escapes: EM DASH \u2014, EN DASH \u2013, ELLIPSIS \u2026,
# INTERROBANG \u203d, and the CJK full-width marks \u3002 (ideographic full stop), \uff01 (!),
# \uff1f (?), \uff0c (,), \uff1b (;), \uff1a (:), \u3001 (ideographic comma).
_ELLIPSIS: Final = "\u2026"
_CJK_SENTENCE_MARKS: Final = frozenset("\u3002\uff01\uff1f")
_CJK_CLAUSE_MARKS: Final = frozenset("\uff0c\uff1b\uff1a\u3001")
_CJK_MARKS: Final = _CJK_SENTENCE_MARKS | _CJK_CLAUSE_MARKS  # break with no space after them
_SENTENCE_MARKS: Final = frozenset("!?\u203d") | _CJK_SENTENCE_MARKS  # "." and ellipsis apart
_CLAUSE_MARKS: Final = frozenset(",;:\u2014\u2013") | _CJK_CLAUSE_MARKS
# Closing / opening quotes and brackets (and markdown emphasis) around a word.
_CLOSERS: Final = "\"')]}*_`\u201d\u2019\u00bb\u203a"
_OPENERS: Final = "\"'([{*_`\u201c\u2018\u00ab\u2039\u00bf\u00a1"
_NEWLINES: Final = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
_CANDIDATE_RE: Final = re.compile("[\\s" + "".join(sorted(_CJK_MARKS)) + "]")
_INITIALS_RE: Final = re.compile(r"(?:[^\W\d_]\.)+")  # J.  U.S.  e.g.  a.m.
# Marks that end the first piece at once after a plain word (see the module docstring).
_EAGER_MARKS: Final = ",;:!?"
_FIRST_CANDIDATE_RE: Final = re.compile(
    "[\\s" + re.escape(_EAGER_MARKS) + "".join(sorted(_CJK_MARKS)) + "]"
)
_URL_SCHEMES: Final = frozenset({"http", "https", "ftp", "ftps", "mailto", "file", "ws", "wss"})
_PLAIN_WORD_RE: Final = re.compile(r"[^\W\d_]+(?:['\u2019-][^\W\d_]+)*")  # don't  well-known

# Lowercased, without the final period. A period after these never ends a sentence.
_ABBREVIATIONS: Final = frozenset(
    {
        "mr", "mrs", "ms", "mx", "dr", "prof", "st", "sr", "jr", "rev", "fr", "gen", "col",
        "capt", "cpt", "lt", "sgt", "maj", "cmdr", "gov", "sen", "rep", "pres", "supt",
        "mt", "ft", "ave", "blvd", "rd", "hwy", "dept", "univ", "assn", "bros",
        "inc", "ltd", "co", "corp", "llc", "plc",
        "vs", "etc", "e.g", "i.e", "cf", "viz", "al", "approx", "ca", "est", "misc",
        "a.m", "p.m", "u.s", "u.k", "u.n", "e.u", "u.s.a",
        "jan", "feb", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
    }
)  # fmt: skip
# Abbreviations only when a digit follows ("No. 5", "p. 12"): "no." alone ends many sentences.
_NUMBER_ABBREVIATIONS: Final = frozenset({"no", "nos", "nr", "p", "pp", "fig", "figs", "vol"})


@dataclass(frozen=True, slots=True)
class Piece:
    """One segment for the TTS engine.

    `text` is the stripped text; `start_char` / `end_char` are offsets into the whole utterance
    text as received (the concatenation of every chunk), half-open, and include the whitespace
    that follows the piece.
    """

    text: str
    start_char: int
    end_char: int


class _Kind(enum.IntEnum):
    """What a boundary is worth; higher is stronger."""

    NOBREAK = 0  # whitespace after an abbreviation, an initial, a list number
    WORD = 1
    CLAUSE = 2
    SENTENCE = 3


def _inside_quote(text: str) -> bool:
    """Whether `text` ends inside a quotation or bracket opened in it (a closer may follow)."""
    return (
        text.count('"') % 2 == 1
        or text.count("\u201c") > text.count("\u201d")
        or text.count("(") > text.count(")")
        or text.count("\u00ab") > text.count("\u00bb")
    )


def _is_nonbreaking_period(core: str, next_char: str, at_line_start: bool) -> bool:
    """Whether the period ending `core` (closers stripped) is not a sentence end."""
    if next_char.islower():
        return True
    word = core.lstrip(_OPENERS)[:-1]
    if not word:
        return False
    key = word.lower()
    if key in _ABBREVIATIONS or _INITIALS_RE.fullmatch(word + "."):
        return True
    if key in _NUMBER_ABBREVIATIONS and next_char.isdigit():
        return True
    return at_line_start and word.isdigit()  # "1. Preheat the oven"


def _classify(token: str, next_char: str, at_line_start: bool) -> _Kind:
    """Kind of the whitespace boundary that follows `token` and precedes `next_char`."""
    core = token.rstrip(_CLOSERS)
    if not core:
        return _Kind.WORD
    last = core[-1]
    if core.endswith("...") or last == _ELLIPSIS:
        return _Kind.CLAUSE if next_char.islower() else _Kind.SENTENCE
    if last in _SENTENCE_MARKS:  # '"Really?" she asked' goes on after a lowercase letter
        return _Kind.CLAUSE if next_char.islower() else _Kind.SENTENCE
    if last == ".":
        if _is_nonbreaking_period(core, next_char, at_line_start):
            return _Kind.NOBREAK
        return _Kind.SENTENCE
    if last in _CLAUSE_MARKS:
        return _Kind.CLAUSE
    if token in ("-", "--") and not at_line_start:  # a spaced dash, not a list bullet
        return _Kind.CLAUSE
    return _Kind.WORD


class Segmenter:
    """Segment one utterance's streaming text into `Piece`s (single use: one utterance).

    `feed` and `finish` cost time linear in the new text plus, rarely, a rescan of the current
    unfinished piece (bounded by `hard_max_piece_chars`); memory holds only that piece.
    """

    def __init__(
        self,
        *,
        first_piece_max_words: int = DEFAULT_FIRST_PIECE_MAX_WORDS,
        max_piece_chars: int = DEFAULT_MAX_PIECE_CHARS,
        hard_max_piece_chars: int = DEFAULT_HARD_MAX_PIECE_CHARS,
    ) -> None:
        """Create a segmenter with the given policy (see the module docstring)."""
        if first_piece_max_words < 1:
            raise ValueError("first_piece_max_words must be >= 1")
        if not 1 <= max_piece_chars <= hard_max_piece_chars:
            raise ValueError("need 1 <= max_piece_chars <= hard_max_piece_chars")
        self.first_piece_max_words: Final = first_piece_max_words
        self.max_piece_chars: Final = max_piece_chars
        self.hard_max_piece_chars: Final = hard_max_piece_chars
        self._buf = ""  # text of the current, undecided piece: received[_base:]
        self._base = 0  # offset of _buf[0] in the whole received text
        self._scan = 0  # index in _buf from which boundaries are still undecided
        self._char_before_base = ""  # last character of the previous piece
        self._pieces_emitted = 0
        self._word_gap: tuple[int, int] | None = None  # (content_end, cut_at), last seen
        self._clause_gap: tuple[int, int] | None = None
        self._finished = False

    @property
    def received_chars(self) -> int:
        """Characters received so far (the length of the whole text fed)."""
        return self._base + len(self._buf)

    def feed(self, chunk: str) -> list[Piece]:
        """Add a chunk of text; return the pieces now decided (often none), in order."""
        if self._finished:
            raise RuntimeError("Segmenter.feed() after finish()")
        if not chunk:
            return []
        self._buf += chunk
        return self._drain()

    def finish(self) -> list[Piece]:
        """Mark the end of the text; return every remaining piece (possibly none)."""
        if self._finished:
            raise RuntimeError("Segmenter.finish() called twice")
        self._finished = True
        pieces = self._drain()
        if self._buf.strip():
            pieces.append(self._cut(len(self._buf)))
        return pieces

    # -- internals ---------------------------------------------------------------------------

    def _drain(self) -> list[Piece]:
        pieces: list[Piece] = []
        while (cut_at := self._next_cut()) is not None:
            pieces.append(self._cut(cut_at))
        return pieces

    def _cut(self, cut_at: int) -> Piece:
        """Emit `_buf[:cut_at]` as a piece and start the next one."""
        piece = Piece(self._buf[:cut_at].strip(), self._base, self._base + cut_at)
        self._char_before_base = self._buf[cut_at - 1]
        self._buf = self._buf[cut_at:]
        self._base += cut_at
        self._scan = 0
        self._word_gap = self._clause_gap = None
        self._pieces_emitted += 1
        return piece

    def _fallback(self) -> int | None:
        """Where to cut a piece that would pass the hard cap: a late clause, else a word."""
        if self._clause_gap is not None and self._clause_gap[0] >= self.max_piece_chars // 2:
            return self._clause_gap[1]
        return None if self._word_gap is None else self._word_gap[1]

    def _at_line_start(self, index: int) -> bool:
        before = self._buf[index - 1] if index > 0 else self._char_before_base
        return before == "" or before in _NEWLINES

    def _ends_plain_word(self, i: int) -> bool:
        """Whether `_buf[:i]` ends with a plain word (letters; no digit, dot, slash...)."""
        buf = self._buf
        ts = i
        while ts > 0 and not buf[ts - 1].isspace():
            ts -= 1
        word = buf[ts:i].lstrip(_OPENERS)
        if _PLAIN_WORD_RE.fullmatch(word) is None:
            return False
        if buf[i] == ":" and word.lower() in _URL_SCHEMES:  # https://...
            return False
        return not _inside_quote(buf[:i])

    def _should_cut(self, kind: _Kind, content_end: int) -> bool:
        if kind is _Kind.SENTENCE:
            return True
        if self._pieces_emitted == 0:
            if kind is _Kind.CLAUSE:
                return True
            if kind is _Kind.WORD:
                return len(self._buf[:content_end].split()) >= self.first_piece_max_words
            return False
        # later pieces: whole sentences, unless the sentence runs long. The word cap doubles
        # with every piece (12, 24, 48... words for the default 6) so the text stays ahead of
        # the audio without cutting sentences more often than needed.
        if kind is _Kind.WORD:
            return len(self._buf[:content_end].split()) >= self._cap_words()
        return kind is _Kind.CLAUSE and content_end >= self.max_piece_chars

    def _cap_words(self) -> int:
        return self.first_piece_max_words << min(self._pieces_emitted, 8)

    def _next_cut(self) -> int | None:
        """Index in `_buf` where the current piece ends, or None until more text arrives.

        Every branch reads `_buf` only up to the character that decides it, so the result
        does not depend on chunking.
        """
        buf = self._buf
        n = len(buf)
        limit = self.hard_max_piece_chars
        first = self._pieces_emitted == 0
        candidates = _FIRST_CANDIDATE_RE if first else _CANDIDATE_RE
        while True:
            m = candidates.search(buf, self._scan)
            if m is None:
                if n > limit and (fallback := self._fallback()) is not None:
                    return fallback
                self._scan = n
                return None
            i = m.start()
            if buf[i] in _EAGER_MARKS:  # first piece only; decided by the text up to the mark
                content_end = i + 1
                if content_end > limit and (fallback := self._fallback()) is not None:
                    return fallback
                if self._ends_plain_word(i):
                    return content_end
                self._scan = content_end
                continue
            is_space = buf[i].isspace()
            content_end = i if is_space else i + 1
            over_cap = content_end > limit
            if over_cap and (fallback := self._fallback()) is not None:
                return fallback
            if is_space:
                if i == 0 or (buf[0].isspace() and not buf[:i].strip()):  # leading whitespace
                    self._scan = i + 1
                    continue
                j = i + 1
                while j < n and buf[j].isspace():
                    j += 1
                if j == n:  # run not over yet, or trailing whitespace at the end
                    return None
                if any(c in _NEWLINES for c in buf[i:j]):
                    kind = _Kind.SENTENCE
                else:
                    ts = i
                    while ts > 0 and not buf[ts - 1].isspace():
                        ts -= 1
                    kind = _classify(buf[ts:i], buf[j], self._at_line_start(ts))
                cut_at = j
            else:
                k = i + 1
                while k < n and (buf[k] in _CJK_MARKS or buf[k] in _CLOSERS):
                    k += 1
                if k == n:
                    return None
                if buf[k].isspace():  # decided as a whitespace boundary
                    self._scan = k
                    continue
                sentence = any(c in _CJK_SENTENCE_MARKS for c in buf[i:k])
                kind = _Kind.SENTENCE if sentence else _Kind.CLAUSE
                content_end = cut_at = k
            if over_cap or self._should_cut(kind, content_end):
                if kind is _Kind.WORD and not first and not over_cap:
                    # a long sentence hit the word cap: prefer its last clause boundary
                    gap = self._clause_gap
                    if gap is not None and len(buf[: gap[0]].split()) >= self._cap_words() // 2:
                        return gap[1]
                return cut_at
            if kind >= _Kind.WORD:
                self._word_gap = (content_end, cut_at)
            if kind is _Kind.CLAUSE:
                self._clause_gap = (content_end, cut_at)
            self._scan = cut_at


def split_text(
    text: str,
    *,
    first_piece_max_words: int = DEFAULT_FIRST_PIECE_MAX_WORDS,
    max_piece_chars: int = DEFAULT_MAX_PIECE_CHARS,
    hard_max_piece_chars: int = DEFAULT_HARD_MAX_PIECE_CHARS,
) -> list[Piece]:
    """Segment a whole text at once: `Segmenter.feed` all of it, then `finish`. Linear time."""
    seg = Segmenter(
        first_piece_max_words=first_piece_max_words,
        max_piece_chars=max_piece_chars,
        hard_max_piece_chars=hard_max_piece_chars,
    )
    return seg.feed(text) + seg.finish()
