"""Streaming text segmentation: cut LLM text, as it streams in, into pieces for the TTS engine.

Text arrives in arbitrary chunks (often one token: ``"Hel"``, ``"lo"``, ``" there"``, ``","``).
`Segmenter` turns it into `Piece`s as soon as each one is decided:

* the **first** piece ends at the first clause boundary (comma, semicolon, colon, em or en
  dash, or a sentence end), so first audio starts early;
* **later** pieces are whole sentences (``. ! ?``, ellipsis, plus closing quotes/brackets; a
  line break), cut at a clause boundary once longer than `max_piece_chars`, and at the last
  word boundary (the last clause boundary if one lies past half of `max_piece_chars`) before
  `hard_max_piece_chars` when no boundary came sooner. No rule counts words: a sentence whose
  text is all there is never cut in the middle of a clause but by these character caps (a
  sentence-final fall and a pause in the middle of a phrase is what such a cut sounds like);
* **any** piece that would pass `hard_max_piece_chars` characters with no word or clause
  boundary to fall back to (a word longer than the cap, a run of CJK marks) is cut after
  exactly `hard_max_piece_chars` characters, or a few fewer so as not to split a cluster: a
  combining mark, and a character joined by a ZERO WIDTH JOINER, stay with their base (unless
  the whole piece is one cluster);
* a run of `MAX_RUN_CHARS` whitespace characters, or of `MAX_RUN_CHARS` CJK marks and closing
  quotes or brackets, ends the piece at its `MAX_RUN_CHARS`-th character, whatever follows.

A boundary is a run of whitespace (or, for CJK text, the point right after a full-width
sentence or clause mark).
It is decided only once the first non-whitespace character after it has arrived (or at
`Segmenter.finish`, or at the `MAX_RUN_CHARS`-th character of a long run), and every decision
looks only at text up to that character (the hard cap: up to the first non-whitespace
character at or past it). So the pieces never depend on how the text was chunked: feeding it
whole, or a character at a time, gives identical pieces. With LLM tokens such as ``" how"``
this costs no extra wait.

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

The one cut that depends on time, not text: `Segmenter.cut_early`, which the utterance runner
calls when waiting longer for the end of a clause would leave the listener with no audio
(`duplexd._downlink.utterance`). It ends the piece at the best boundary already decided: the
last clause boundary; else the last one before a conjunction, relative word or preposition
(``and``, ``because``, ``which``, ``to``, ``of``... `_PHRASE_WORDS`, written after at least two
words, and known to be that word only once the boundary after it is decided); else the last
word boundary. It never cuts a word (a boundary is decided only once the next word has begun),
and returns nothing when no boundary has been decided yet. Only this cut depends on how the
text was chunked, as it depends on when it was asked for.

Spans: pieces cover the received text contiguously. ``piece.text`` is
``text[piece.start_char:piece.end_char].strip()`` and is never empty; the whitespace between two
pieces (and any leading whitespace of the utterance) lies inside the earlier piece's span, except
where a piece is cut before its whitespace has ended: after a first piece cut at once at a
clause mark (above) its span ends at the mark, and after a piece ended by a run of
`MAX_RUN_CHARS` whitespace characters its span ends after the `MAX_RUN_CHARS`-th; the rest of
that whitespace starts the next piece's span, or, if no piece follows, lies outside every span.
So if the text holds any non-whitespace character, the spans cover exactly ``[0, len(text))``
but for such trailing whitespace; otherwise there are no pieces. Offsets count Python ``str``
characters (code points).

Bounds. The text comes from the network and this runs on the event loop, so what a client sends
must not decide the cost:

* **length**: ``len(piece.text) <= hard_max_piece_chars``, whatever the text (rules above). An
  engine's output samples and working memory grow with a piece's characters, so this cap is
  what bounds synthesis memory per piece; the daemon relies on it.
* **time**: linear in the text, whatever the chunking. Each scan resumes where the last one
  stopped (a pending run of whitespace or CJK marks is not read again); the quote depth, the
  current word's start and the last word, phrase and clause boundaries are running values. A
  cut back at an earlier boundary (or back over a cluster) leaves the rest of the piece, fewer
  than ``hard_max_piece_chars + MAX_RUN_CHARS`` characters, to be read again by the next; as a
  piece falls back only to its last clause or word boundary, no boundary there is taken again
  and a character is read at most three times or so by the text's own cuts. So
  `Segmenter.feed` costs O(len(chunk)) amortised, plus a bounded constant per call and per
  piece returned (a copy of the undecided piece). `Segmenter.cut_early` costs O(1) when it
  cuts nothing, else a copy of the piece, and what follows its cut is read once more: O(piece),
  for a piece of a word or more.
* **memory**: only the undecided piece is kept, from its first non-whitespace character (its
  leading whitespace is counted, not kept): fewer than ``hard_max_piece_chars + MAX_RUN_CHARS``
  characters between calls, and at most `_FEED_SLICE` more while a call works through a long
  chunk slice by slice (which the chunking invariance makes free).
"""

from __future__ import annotations

import enum
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Final

DEFAULT_MAX_PIECE_CHARS: Final = 200
DEFAULT_HARD_MAX_PIECE_CHARS: Final = 300
# A run of this many whitespace characters (or CJK marks and closers) ends the piece.
MAX_RUN_CHARS: Final = 64
# `Segmenter.feed` works through a longer chunk in slices of this many characters, so a
# cut copies a bounded buffer, never the rest of a long chunk.
_FEED_SLICE: Final = 512

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
_ZWJ: Final = "\u200d"  # ZERO WIDTH JOINER: joins the characters on either side
# Marks that end the first piece at once after a plain word (see the module docstring).
_EAGER_MARKS: Final = ",;:!?"
_FIRST_CANDIDATE_RE: Final = re.compile(
    "[\\s" + re.escape(_EAGER_MARKS) + "".join(sorted(_CJK_MARKS)) + "]"
)
_URL_SCHEMES: Final = frozenset({"http", "https", "ftp", "ftps", "mailto", "file", "ws", "wss"})
_PLAIN_WORD_RE: Final = re.compile(r"[^\W\d_]+(?:['\u2019-][^\W\d_]+)*")  # don't  well-known
# A phrase starts before these (conjunctions, relative words, prepositions): where
# `Segmenter.cut_early` cuts when no clause boundary was decided. Lowercase.
_PHRASE_WORDS: Final = frozenset(
    {
        "and", "but", "or", "nor", "so", "yet", "because", "since", "although", "though",
        "while", "whereas", "unless", "until", "after", "before", "if", "when", "where",
        "whether", "which", "who", "whom", "whose", "that", "than", "as",
        "to", "of", "in", "on", "for", "with", "at", "from", "by", "about", "into", "onto",
        "over", "under", "through", "during", "without", "within", "between", "against",
        "across", "along", "around", "behind", "beyond", "towards", "toward", "near", "like",
    }
)  # fmt: skip
_PHRASE_WORD_CHARS: Final = max(map(len, _PHRASE_WORDS)) + 2  # with an opener or closer

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
    # whitespace of the span before `text` (it starts at start_char + lead): derived, so not
    # compared
    lead: int = field(default=0, compare=False)


class _Kind(enum.IntEnum):
    """What a boundary is worth; higher is stronger."""

    NOBREAK = 0  # whitespace after an abbreviation, an initial, a list number
    WORD = 1
    CLAUSE = 2
    SENTENCE = 3


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


def _extends_cluster(prev: str, char: str) -> bool:
    """Whether `char` belongs with `prev` (a cut between them would split what is written)."""
    return unicodedata.category(char)[0] == "M" or char == _ZWJ or prev == _ZWJ


class Segmenter:
    """Segment one utterance's streaming text into `Piece`s (single use: one utterance).

    Invariants (see "Bounds" in the module docstring): ``len(piece.text)`` never passes
    `hard_max_piece_chars`; `feed` and `finish` cost time linear in the new text, amortised,
    plus a bounded constant per call and per piece returned; between calls `_buf` holds only
    the undecided piece from its first non-whitespace character, fewer than
    ``hard_max_piece_chars + MAX_RUN_CHARS`` characters.
    """

    def __init__(
        self,
        *,
        max_piece_chars: int = DEFAULT_MAX_PIECE_CHARS,
        hard_max_piece_chars: int = DEFAULT_HARD_MAX_PIECE_CHARS,
    ) -> None:
        """Create a segmenter with the given policy (see the module docstring)."""
        if not 1 <= max_piece_chars <= hard_max_piece_chars:
            raise ValueError("need 1 <= max_piece_chars <= hard_max_piece_chars")
        self.max_piece_chars: Final = max_piece_chars
        self.hard_max_piece_chars: Final = hard_max_piece_chars
        # The current, undecided piece: its span starts at _start; _buf = received[_base:]
        # holds it from its first non-whitespace character (empty until one arrives).
        self._buf = ""
        self._base = 0
        self._start = 0
        self._char_before_base = ""  # received[_base - 1], or "" at the start of the text
        self._pieces_emitted = 0
        self._finished = False
        # Scan state of the current piece, reset by every cut (indices into _buf):
        self._scan = 0  # boundaries before it are decided (but a pending run's)
        self._run = -1  # start of a run of whitespace or CJK marks read up to _scan, or -1
        self._word_start = 0  # start of the current word (after the last whitespace run)
        self._eager_word = -1  # start of the word whose first eager mark was already judged
        # the last boundaries seen, as (content_end, cut_at): any kind, clause, and the last
        # one before a phrase word (`_PHRASE_WORDS`) with two words or more before it
        self._word_gap: tuple[int, int] | None = None
        self._clause_gap: tuple[int, int] | None = None
        self._phrase_gap: tuple[int, int] | None = None
        self._gaps = 0  # boundaries seen (kind WORD or stronger)
        self._quotes = (0, 0, 0, 0)  # '"' count, and open-minus-close of \u201c ( \u00ab
        self._quotes_end = 0  # ... in _buf[:_quotes_end]

    @property
    def received_chars(self) -> int:
        """Characters received so far (the length of the whole text fed)."""
        return self._base + len(self._buf)

    def feed(self, chunk: str) -> list[Piece]:
        """Add a chunk of text; return the pieces now decided (often none), in order."""
        if self._finished:
            raise RuntimeError("Segmenter.feed() after finish()")
        if len(chunk) <= _FEED_SLICE:
            self._append(chunk)
            return self._drain()
        pieces: list[Piece] = []
        for at in range(0, len(chunk), _FEED_SLICE):  # same pieces, whatever the chunking
            self._append(chunk[at : at + _FEED_SLICE])
            pieces += self._drain()
        return pieces

    def cut_early(self) -> Piece | None:
        """End the undecided piece now, at the best boundary already decided (the last clause
        boundary, else the last one before a phrase word, else the last word boundary; see the
        module docstring), and return it; None (and nothing changes) if no boundary has been
        decided yet. The text after that boundary starts the next piece. O(piece)."""
        if self._finished:
            raise RuntimeError("Segmenter.cut_early() after finish()")
        gap = self._clause_gap or self._phrase_gap or self._word_gap
        return None if gap is None else self._cut(gap[1])

    def finish(self) -> list[Piece]:
        """Mark the end of the text; return every remaining piece (possibly none)."""
        if self._finished:
            raise RuntimeError("Segmenter.finish() called twice")
        self._finished = True
        return [self._cut(len(self._buf))] if self._buf else []

    # -- internals ---------------------------------------------------------------------------

    def _append(self, text: str) -> None:
        if self._buf:
            self._buf += text
            return
        body = text.lstrip()  # a piece's leading whitespace is counted, not kept
        if dropped := len(text) - len(body):
            self._char_before_base = text[dropped - 1]
            self._base += dropped
        self._buf = body

    def _drain(self) -> list[Piece]:
        pieces: list[Piece] = []
        while (cut_at := self._next_cut()) is not None:
            pieces.append(self._cut(cut_at))
        return pieces

    def _cut(self, cut_at: int) -> Piece:
        """Emit `_buf[:cut_at]` as a piece and start the next one."""
        buf = self._buf
        end = self._base + cut_at
        piece = Piece(buf[:cut_at].rstrip(), self._start, end, self._base - self._start)
        rest = buf[cut_at:]
        body = rest.lstrip()
        dropped = len(rest) - len(body)
        self._char_before_base = rest[dropped - 1] if dropped else buf[cut_at - 1]
        self._buf = body
        self._start = end
        self._base = end + dropped
        self._scan = self._word_start = self._gaps = self._quotes_end = 0
        self._run = self._eager_word = -1
        self._word_gap = self._clause_gap = self._phrase_gap = None
        self._quotes = (0, 0, 0, 0)
        self._pieces_emitted += 1
        return piece

    def _fallback(self) -> int | None:
        """Where to cut a piece that would pass the hard cap: a late clause, else a word."""
        if self._clause_gap is not None and self._clause_gap[0] >= self.max_piece_chars // 2:
            return self._clause_gap[1]
        return None if self._word_gap is None else self._word_gap[1]

    def _cap_cut(self, reached: int) -> int:
        """Where to cut a piece that reached the hard cap.

        `reached` is its first non-whitespace character at or past `hard_max_piece_chars`;
        only text up to it is read.
        """
        if (fallback := self._fallback()) is not None:
            return fallback
        limit = self.hard_max_piece_chars
        if reached > limit:  # _buf[limit:reached] is whitespace: the text ends before the cap
            return reached
        buf = self._buf  # no boundary to fall back to: cut at the cap, between two clusters
        cut_at = limit
        while cut_at > 0 and _extends_cluster(buf[cut_at - 1], buf[cut_at]):
            cut_at -= 1
        return limit if cut_at == 0 or buf[cut_at].isspace() else cut_at

    def _inside_quote(self, end: int) -> bool:
        """Whether `_buf[:end]` ends inside a quotation or bracket opened in it (a closer may
        follow); `end` never decreases within a piece."""
        new = self._buf[self._quotes_end : end]
        straight, curly, paren, guillemet = self._quotes
        self._quotes = quotes = (
            straight + new.count('"'),
            curly + new.count("\u201c") - new.count("\u201d"),
            paren + new.count("(") - new.count(")"),
            guillemet + new.count("\u00ab") - new.count("\u00bb"),
        )
        self._quotes_end = end
        return quotes[0] % 2 == 1 or quotes[1] > 0 or quotes[2] > 0 or quotes[3] > 0

    def _at_line_start(self, index: int) -> bool:
        before = self._buf[index - 1] if index > 0 else self._char_before_base
        return before == "" or before in _NEWLINES

    def _ends_plain_word(self, i: int) -> bool:
        """Whether `_buf[:i]` ends with a plain word (letters; no digit, dot, slash...)."""
        start = self._word_start
        if self._eager_word == start:  # the word holds an earlier mark: not a plain word
            return False
        self._eager_word = start
        word = self._buf[start:i].lstrip(_OPENERS)
        if _PLAIN_WORD_RE.fullmatch(word) is None:
            return False
        if self._buf[i] == ":" and word.lower() in _URL_SCHEMES:  # https://...
            return False
        return not self._inside_quote(i)

    def _should_cut(self, kind: _Kind, content_end: int) -> bool:
        if kind is _Kind.SENTENCE:
            return True
        if kind is not _Kind.CLAUSE:  # no rule counts words: whole clauses at least
            return False
        # the first piece ends at its first clause; later ones are whole sentences, unless
        # the sentence runs long
        return self._pieces_emitted == 0 or content_end >= self.max_piece_chars

    def _decide(self, kind: _Kind, content_end: int, cut_at: int) -> int | None:
        """Cut at a boundary, or remember it (for the caps' fallbacks and `cut_early`).

        `content_end` ends the word before the boundary, which starts at `_word_start`.
        """
        if self._should_cut(kind, content_end):
            return cut_at
        if kind >= _Kind.WORD:
            gap = self._word_gap
            start = self._word_start
            if (
                gap is not None
                and gap[1] == start  # the boundary right before this word
                and self._gaps >= 2  # with two words or more before it
                and content_end - start <= _PHRASE_WORD_CHARS
                and self._buf[start:content_end].strip(_OPENERS + _CLOSERS).lower() in _PHRASE_WORDS
            ):
                self._phrase_gap = gap
            self._word_gap = (content_end, cut_at)
            self._gaps += 1
        if kind is _Kind.CLAUSE:
            self._clause_gap = (content_end, cut_at)
        return None

    def _next_cut(self) -> int | None:
        """Index in `_buf` where the current piece ends, or None until more text arrives.

        Reads each character once (but for a cut back at an earlier boundary, which leaves the
        rest for the next piece), resuming at `_scan`; every decision reads `_buf` only up to
        the character that decides it, so the result does not depend on chunking.
        """
        buf = self._buf
        n = len(buf)
        limit = self.hard_max_piece_chars
        candidates = _FIRST_CANDIDATE_RE if self._pieces_emitted == 0 else _CANDIDATE_RE
        while True:
            run = self._run
            if run < 0:
                scan = self._scan
                m = candidates.search(buf, scan)
                i = n if m is None else m.start()
                # buf[scan:i] is plain text (whitespace is always a candidate): the piece
                # reaches the cap at its first non-whitespace character at or past `limit`
                reached = max(scan, limit)
                if reached < i or (reached == i < n and not buf[i].isspace()):
                    return self._cap_cut(reached)
                if m is None:
                    self._scan = n
                    return None
                if buf[i] in _EAGER_MARKS:  # first piece only; decided by the text up to i
                    if self._ends_plain_word(i):
                        return i + 1
                    self._scan = i + 1
                    continue
                self._run = run = i  # i > 0: _buf starts with a non-whitespace character
                self._scan = i + 1
            if buf[run].isspace():
                j = self._scan
                stop = min(n, run + MAX_RUN_CHARS)
                while j < stop and buf[j].isspace():
                    j += 1
                if j - run >= MAX_RUN_CHARS:  # a long run ends the piece, whatever follows
                    return j
                self._scan = j
                if j == n:  # the run may go on
                    return None
                self._run = -1
                if any(c in _NEWLINES for c in buf[run:j]):
                    kind = _Kind.SENTENCE
                else:
                    start = self._word_start
                    kind = _classify(buf[start:run], buf[j], self._at_line_start(start))
                if (cut_at := self._decide(kind, run, j)) is not None:
                    return cut_at
                self._word_start = j
                # (the loop goes on at j: a non-whitespace character, maybe past the cap)
            else:
                k = self._scan
                while True:
                    if k - run >= MAX_RUN_CHARS:  # a long run ends the piece
                        return k
                    if k == n:  # the run may go on
                        self._scan = n
                        return None
                    if buf[k] not in _CJK_MARKS and buf[k] not in _CLOSERS:
                        break
                    if k >= limit:  # run started under the cap
                        return self._cap_cut(k)
                    k += 1
                if buf[k].isspace():  # decided as a whitespace boundary
                    self._run = k
                    self._scan = k + 1
                    continue
                self._run = -1
                self._scan = k
                sentence = any(c in _CJK_SENTENCE_MARKS for c in buf[run:k])
                kind = _Kind.SENTENCE if sentence else _Kind.CLAUSE
                if (cut_at := self._decide(kind, k, k)) is not None:
                    return cut_at


def split_text(
    text: str,
    *,
    max_piece_chars: int = DEFAULT_MAX_PIECE_CHARS,
    hard_max_piece_chars: int = DEFAULT_HARD_MAX_PIECE_CHARS,
) -> list[Piece]:
    """Segment a whole text at once: `Segmenter.feed` all of it, then `finish`. Linear time."""
    seg = Segmenter(max_piece_chars=max_piece_chars, hard_max_piece_chars=hard_max_piece_chars)
    return seg.feed(text) + seg.finish()
