"""The stable prefix of a growing turn's transcript, by local agreement between passes.

While the user speaks, the uplink transcribes the turn so far every `asr.partial_ms` (a
*pass*) and feeds each pass's words, with their sample spans, to `LocalAgreement.update`. A
word is *confirmed* once two consecutive passes agree on it, in order, after everything
confirmed before it (the longest common prefix of the two passes' unconfirmed words, compared
by `norm`: case and punctuation aside), but a pass's last word written with an end mark only
once a pass hears a word after it (Whisper ends a sentence where the audio stops: "I need a taxi
to the airport." while the user goes on). Confirmed words never change: a later pass only adds
to them.

Each pass decodes the turn's *buffer*: its audio from `buffer_start` (the turn's start, until
the turn grows long) to now, after the confirmed words before the buffer as Whisper's prompt
(`context`). Its first words are the confirmed ones again, and what follows them is the pass's
news (`rest`: found by the words' text, by their timestamps only when Whisper now hears a
confirmed word otherwise). The turn's final transcript is decoded the same way, and its text
is the confirmed prefix followed by what the decode heard after those words (`final`), so it
starts with every prefix a partial carried. Decoding the buffer, not only the audio after the
last confirmed word, costs the same in Whisper's cut window up to 8 s (window.py) and hears
each word with what came before it: decoded alone, a tail cut at a word timestamp lost a word
in six ("Please book table for at 730", "my flight and the evening": `bench.turns` with
`partial_ms` 300, 38 words of 234 missed, against 8 for a whole decode), and had no end mark's
probability worth asking. A buffer longer than `TRIM_SAMPLES` starts again after its last
confirmed sentence (a confirmed word written with an end mark), or after its last confirmed
word once it is longer than `HARD_TRIM_SAMPLES`: a pass's cost stays bounded in a long turn,
and Whisper's 30 s window holds it.

Pure: no model, no trio, no I/O (the tests drive it with made-up passes).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from .window import END_MARKS

MAX_OVERLAP: Final = 5  # words a pass may repeat from the end of the confirmed prefix ...
OVERLAP_SAMPLES: Final = 16_000  # ... when they start this close to `commit` (1 s at 16 kHz)
ANCHOR_WORDS: Final = 3  # of the last confirmed words, two found again place a pass's rest
TRIM_SAMPLES: Final = 8 * 16_000  # a longer buffer starts after its last confirmed sentence ...
HARD_TRIM_SAMPLES: Final = 20 * 16_000  # ... or after its last confirmed word


@dataclass(frozen=True, slots=True)
class Word:
    """One recognized word: `text` as the recognizer wrote it (leading space, punctuation
    attached), spoken in samples [start, end) of the turn's audio (16 kHz, absolute)."""

    text: str
    start: int
    end: int


def norm(text: str) -> str:
    """A word as compared between passes: lower case, letters and digits only."""
    return "".join(ch for ch in text.lower() if ch.isalnum())


def common_prefix(a: Sequence[Word], b: Sequence[Word]) -> int:
    """How many leading words `a` and `b` agree on (by `norm`)."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if norm(x.text) != norm(y.text):
            break
        n += 1
    return n


def join(words: Sequence[Word]) -> str:
    """The words as one text (single spaces, no space at either end)."""
    return " ".join(w.text.strip() for w in words if w.text.strip())


def final_text(confirmed: str, tail: str) -> str:
    """The final transcript: the confirmed prefix, then what was heard after it."""
    tail = tail.strip()
    if not confirmed:
        return tail
    return f"{confirmed} {tail}" if tail else confirmed


def after(head: Sequence[Word], words: Sequence[Word]) -> int | None:
    """Where `words` (a decode of the buffer) go on past `head` (the confirmed words in the
    buffer): after all of them when the decode starts with them; else after the word it
    aligns with the last of them (the two compared word by word, `difflib`), if that word
    and one more of the last `ANCHOR_WORDS` are found in it ("for two at" confirmed, "for 2
    at 730." heard); None when not (Whisper heard those words otherwise)."""
    n = len(head)
    if common_prefix(head, words) == n:
        return n
    if n < 2:
        return None
    a = [norm(w.text) for w in head]
    matcher = difflib.SequenceMatcher(a=a, b=[norm(w.text) for w in words], autojunk=False)
    found = [(i + k, j + k) for i, j, size in matcher.get_matching_blocks() for k in range(size)]
    last = [j for i, j in found if i == n - 1]
    near = sum(i >= n - ANCHOR_WORDS for i, _ in found)
    return last[0] + 1 if last and near >= 2 else None


class LocalAgreement:
    """The confirmed words of one turn that starts at 16 kHz sample `start`."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.buffer_start = start  # where a pass's audio starts
        self.confirmed: list[Word] = []
        self.pending: list[Word] = []  # the last pass's words after the confirmed ones
        self.passes = 0
        self._first = 0  # the first confirmed word in the buffer (an index of `confirmed`)

    @property
    def commit(self) -> int:
        """Where the last confirmed word ends (the audio no partial has spoken for)."""
        return self.confirmed[-1].end if self.confirmed else self.start

    @property
    def text(self) -> str:
        return join(self.confirmed)

    @property
    def context(self) -> str:
        """The confirmed words before the buffer: the prompt of the buffer's decodes."""
        return join(self.confirmed[: self._first])

    def update(self, words: Sequence[Word], end: int | None = None) -> list[Word]:
        """One pass's words, in order, decoded from `buffer_start`; returns the words this
        pass confirmed (possibly none). `end`: where the pass's audio ended (the buffer may
        then be trimmed, for the next pass)."""
        self.passes += 1
        words = self.rest([w for w in words if norm(w.text)])
        n = common_prefix(self.pending, words)
        if n and n == len(words) and words[-1].text.rstrip().endswith(END_MARKS):
            n -= 1  # (Whisper ends a sentence where the audio stops: wait for a word after it)
        new = list(words[:n])
        self.confirmed.extend(new)
        self.pending = list(words[n:])
        if end is not None:
            self._trim(end)
        return new

    def rest(self, words: Sequence[Word]) -> list[Word]:
        """The words of a decode of the buffer that come after the confirmed ones: by their
        text (`after`), else by their timestamps (each whose middle is past `commit`, a
        repeat of the last confirmed words at their start dropped). Words found after the
        last confirmed ones alone must also lie past `commit`."""
        head = self.confirmed[self._first :]
        j = after(head, words)
        commit = self.commit
        if j == len(head):
            return list(words[j:])
        if j is not None:  # (found by the last words: none of what follows comes before them)
            return [w for w in words[j:] if (w.start + w.end) // 2 >= commit]
        return self._drop_overlap([w for w in words if (w.start + w.end) // 2 >= commit])

    def final(self, heard: str) -> str | None:
        """The turn's final text, given the decode of the buffer (`heard`): the confirmed
        prefix, then the words heard after it (and the punctuation heard after the last
        confirmed word: "thirty" confirmed while the user spoke, "thirty." at the turn's
        end, which the end of turn's words' veto reads). None when the decode heard the
        confirmed words otherwise and they cannot be found in it (decode the audio after
        `commit` then: `with_tail`)."""
        said = [Word(t, 0, 0) for t in heard.split() if norm(t)]
        j = after(self.confirmed[self._first :], said)
        if j is None:
            return None
        text = self.text
        if j > 0 and self.confirmed[self._first :]:  # "thirty" confirmed, "thirty." heard
            last, now = self.confirmed[-1].text.strip(), said[j - 1].text.strip()
            if now.startswith(last) and norm(now) == norm(last):
                text += now[len(last) :]  # (the prefix a partial carried stays as it was)
        return final_text(text, join(said[j:]))

    def with_tail(self, tail: str, heard: str = "") -> str:
        """The turn's final text, given the decode of the audio after `commit` alone (a
        repeat of the last confirmed words at its start dropped, as in `update`). `heard`:
        the buffer's decode, whose end mark ends a final that has none (the tail "seven
        thirty" decoded alone, "at 7.30." in the buffer: the words' veto reads that mark)."""
        words = self._drop_overlap([Word(t, self.commit, self.commit) for t in tail.split()])
        text = final_text(self.text, join(words))
        end = heard.rstrip()[-1:]
        if end in END_MARKS and text[-1:].isalnum():
            text += end
        return text

    def _trim(self, end: int) -> None:
        """Start the buffer after its last confirmed sentence once it is longer than
        `TRIM_SAMPLES`, after its last confirmed word once longer than `HARD_TRIM_SAMPLES`."""
        if end - self.buffer_start <= TRIM_SAMPLES:
            return
        head = self.confirmed[self._first :]
        ends = [i for i, w in enumerate(head) if w.text.rstrip().endswith(END_MARKS)]
        if ends:
            cut = ends[-1]
        elif head and end - self.buffer_start > HARD_TRIM_SAMPLES:
            cut = len(head) - 1
        else:
            return
        self.buffer_start = head[cut].end
        self._first += cut + 1

    def _drop_overlap(self, words: list[Word]) -> list[Word]:
        """A decode that starts near `commit` may hear the end of the last confirmed word(s)
        again (word boundaries are approximate): drop a repeat of the confirmed prefix's last
        k words at its start."""
        if not self.confirmed or not words or words[0].start > self.commit + OVERLAP_SAMPLES:
            return words
        for k in range(min(MAX_OVERLAP, len(self.confirmed), len(words)), 0, -1):
            if common_prefix(self.confirmed[-k:], words[:k]) == k:
                return words[k:]
        return words
