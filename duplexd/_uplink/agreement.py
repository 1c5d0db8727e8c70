"""The stable prefix of a growing turn's transcript, by local agreement between passes.

While the user speaks, the uplink transcribes the turn so far every `asr.partial_ms` (a
*pass*) and feeds each pass's words, with their sample spans, to `LocalAgreement.update`. A
word is *confirmed* once two consecutive passes agree on it, in order, after everything
confirmed before it (the longest common prefix of the two passes' unconfirmed words, compared
by `norm`: case and punctuation aside). Confirmed words never change: a later pass only adds
to them. Each pass after the first decodes only the audio after the last confirmed word's end
(`commit`), so does the turn's final transcript: its text is the confirmed prefix followed by
the decode of that tail (`final_text`), and so starts with every prefix a partial carried.

Pure: no model, no trio, no I/O (the tests drive it with made-up passes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

MAX_OVERLAP: Final = 5  # words a pass may repeat from the end of the confirmed prefix ...
OVERLAP_SAMPLES: Final = 16_000  # ... when they start this close to `commit` (1 s at 16 kHz)


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
    """The final transcript: the confirmed prefix, then the decode of the audio after it."""
    tail = tail.strip()
    if not confirmed:
        return tail
    return f"{confirmed} {tail}" if tail else confirmed


class LocalAgreement:
    """The confirmed words of one turn that starts at 16 kHz sample `start`."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.confirmed: list[Word] = []
        self.pending: list[Word] = []  # the last pass's words after the confirmed ones
        self.passes = 0

    @property
    def commit(self) -> int:
        """Where the audio still to decode starts: the last confirmed word's end."""
        return self.confirmed[-1].end if self.confirmed else self.start

    @property
    def text(self) -> str:
        return join(self.confirmed)

    def update(self, words: Sequence[Word]) -> list[Word]:
        """One pass's words, in order (from audio starting at `commit`); returns the words
        this pass confirmed (possibly none)."""
        self.passes += 1
        words = self._drop_overlap([w for w in words if norm(w.text)])
        n = common_prefix(self.pending, words)
        new = list(words[:n])
        self.confirmed.extend(new)
        self.pending = list(words[n:])
        return new

    def final(self, tail: str) -> str:
        """The turn's final text, given the decode of the audio after `commit` (a repeat of
        the last confirmed words at its start dropped, as in `update`)."""
        words = self._drop_overlap([Word(t, self.commit, self.commit) for t in tail.split()])
        return final_text(self.text, join(words))

    def _drop_overlap(self, words: list[Word]) -> list[Word]:
        """A pass that starts at `commit` may hear the end of the last confirmed word(s) again
        (word boundaries are approximate): drop a repeat of the confirmed prefix's last k
        words at its start."""
        if not self.confirmed or not words or words[0].start > self.commit + OVERLAP_SAMPLES:
            return words
        for k in range(min(MAX_OVERLAP, len(self.confirmed), len(words)), 0, -1):
            if common_prefix(self.confirmed[-k:], words[:k]) == k:
                return words[k:]
        return words
