"""Word timing for VITS: which phoneme ids of a piece sound which word of its text, and so,
with the durations the model predicts for every id, where each word's audio lies.

espeak-ng phonemizes a whole clause at once and does not say where a word's phonemes are; it
joins unstressed function words ("of the" -> one phoneme word), expands numbers and symbols
("$4.50" -> four words) and changes a word's sound with its neighbours ("the" before a vowel).
So the words are found by alignment: every word of the text is phonemized alone (cached), the
words' sounds are concatenated, and that string is aligned with the piece's phonemes (difflib's
matching blocks; both without stress marks, spaces and punctuation). A phoneme of the piece
takes the word of the sound it matched, or of the nearest matched one before it; a stress mark
takes the word of the sound after it; a space or punctuation belongs to no word. The owners
never go backwards, so each word owns one contiguous run of ids (possibly none: a word espeak
does not say).

Cost: one espeak call per distinct word (cached), and an alignment linear-ish in the piece's
phonemes (at most a few hundred), in the synthesis worker thread, once per piece.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Final

import numpy as np
import numpy.typing as npt

from ..base import WordMark, text_words
from .phonemes import BOS, EOS, PAD, phonemize, split_phonemes

_STRESS: Final = frozenset("\u02c8\u02cc")  # primary and secondary stress marks
_NO_WORD: Final = -1


def _is_sound(ph: str) -> bool:
    return unicodedata.category(ph)[0] in "LM" and ph not in _STRESS


@functools.lru_cache(maxsize=8192)
def _word_sounds(word: str, espeak_voice: str) -> str:
    """The sounds of one word said alone (no stress marks, spaces or punctuation)."""
    return "".join(
        ph for sentence in phonemize(word, espeak_voice) for ph in sentence if _is_sound(ph)
    )


def phoneme_owners(words: Sequence[str], phonemes: Sequence[str], espeak_voice: str) -> list[int]:
    """For each phoneme of `phonemes` (a piece's, in order), the index of the word of `words`
    it sounds, or -1 (a space, punctuation); never decreasing between sounds."""
    a: list[str] = []
    a_owner: list[int] = []
    for w, word in enumerate(words):
        sounds = _word_sounds(word, espeak_voice)
        a.extend(sounds)
        a_owner.extend([w] * len(sounds))
    b_at = [i for i, ph in enumerate(phonemes) if _is_sound(ph)]
    b = [phonemes[i] for i in b_at]
    owner_b = [_NO_WORD] * len(b)
    if a and b:
        matcher = SequenceMatcher(None, a, b, autojunk=False)
        for block in matcher.get_matching_blocks():
            owner_b[block.b : block.b + block.size] = a_owner[block.a : block.a + block.size]
    # unmatched sounds take the word before them (the first ones: the first word matched)
    last = next((o for o in owner_b if o != _NO_WORD), 0 if words else _NO_WORD)
    for k, o in enumerate(owner_b):
        if o == _NO_WORD or o < last:
            owner_b[k] = last
        else:
            last = o
    owners = [_NO_WORD] * len(phonemes)
    for k, i in enumerate(b_at):
        owners[i] = owner_b[k]
    # stress marks go with the sound after them; anything between two sounds of one word
    # (a length mark or tie that is not a letter) stays with that word
    following = _NO_WORD
    for i in range(len(phonemes) - 1, -1, -1):
        if owners[i] != _NO_WORD:
            following = owners[i]
        elif phonemes[i] in _STRESS:
            owners[i] = following
        elif phonemes[i] == " " or unicodedata.category(phonemes[i])[0] in "PZ":
            following = _NO_WORD
    return owners


@dataclass(frozen=True, slots=True)
class TimedIds:
    """A piece as phoneme-id sequences, and for every id the word it sounds (-1: none)."""

    words: list[tuple[int, int]]  # character spans of the piece's words (`text_words`)
    sequences: list[list[int]]
    owners: list[npt.NDArray[np.int32]]  # per sequence, per id


def timed_ids(
    text: str, espeak_voice: str, id_map: Mapping[str, Sequence[int]], *, max_phonemes: int
) -> TimedIds:
    """`phonemes.text_to_ids(text)` with the word of every id (the same sequences)."""
    words = text_words(text)
    if all(unicodedata.category(ch)[0] in "PZC" for ch in text):
        return TimedIds(words, [], [])  # as text_to_ids: nothing to say
    sentences = phonemize(text, espeak_voice)
    flat = [ph for sentence in sentences for ph in sentence]
    owners = phoneme_owners([text[s:e] for s, e in words], flat, espeak_voice)
    sequences: list[list[int]] = []
    seq_owners: list[npt.NDArray[np.int32]] = []
    at = 0
    for sentence in sentences:
        for part in split_phonemes(sentence, max_phonemes):
            part_owners = owners[at : at + len(part)]
            at += len(part)
            if any(unicodedata.category(ph).startswith("L") for ph in part):
                ids, id_owners = _ids_with_owners(part, part_owners, id_map)
                sequences.append(ids)
                seq_owners.append(np.asarray(id_owners, dtype=np.int32))
    return TimedIds(words, sequences, seq_owners)


def _ids_with_owners(
    phonemes: Sequence[str], owners: Sequence[int], id_map: Mapping[str, Sequence[int]]
) -> tuple[list[int], list[int]]:
    """`phonemes.phonemes_to_ids`, and the owner of each id: a PAD goes with the phoneme
    before it, but after a word's last phoneme with none (measured: the model puts the
    silence before a pause there); BOS, EOS and the first PAD with none."""
    ids: list[int] = [*id_map[BOS], *id_map[PAD]]
    out: list[int] = [_NO_WORD] * len(ids)
    known = [(ph, owner) for ph, owner in zip(phonemes, owners, strict=True) if ph in id_map]
    for k, (ph, owner) in enumerate(known):
        mapped = id_map[ph]
        ids.extend(mapped)
        ids.extend(id_map[PAD])
        last = k + 1 == len(known) or known[k + 1][1] != owner
        out.extend([owner] * len(mapped))
        out.extend([_NO_WORD if last else owner] * len(id_map[PAD]))
    ids.extend(id_map[EOS])
    out.extend([_NO_WORD] * len(id_map[EOS]))
    return ids, out


def sequence_marks(
    owners: npt.NDArray[np.int32],
    durations: npt.NDArray[np.int64],
    offset_samples: int,
) -> dict[int, tuple[int, int]]:
    """Sample span (from the piece's start) of every word sounded in one sequence, given the
    samples each id lasts (`durations`) and where the sequence's audio starts."""
    ends = np.cumsum(durations) + offset_samples
    starts = ends - durations
    spans: dict[int, tuple[int, int]] = {}
    present = owners[owners != _NO_WORD]
    for w in np.unique(present).tolist():
        at = np.flatnonzero(owners == w)
        spans[w] = (int(starts[at[0]]), int(ends[at[-1]]))
    return spans


class MarkCursor:
    """Turns the word spans of a piece's sequences, as each becomes known, into `WordMark`s:
    every word once, in order; a word with no audio of its own (one espeak did not say) gets
    an empty span where the word before it ended."""

    def __init__(self, words: Sequence[tuple[int, int]]) -> None:
        self._words = words
        self._next = 0
        self._end = 0  # where the last mark ended

    def take(self, spans: Mapping[int, tuple[int, int]]) -> list[WordMark]:
        """Marks of the words up to the last one in `spans` (one sequence's words)."""
        return self._marks(max(spans) + 1 if spans else self._next, spans)

    def finish(self) -> list[WordMark]:
        """Marks of the words left (none of them sounded)."""
        return self._marks(len(self._words), {})

    def _marks(self, stop: int, spans: Mapping[int, tuple[int, int]]) -> list[WordMark]:
        marks: list[WordMark] = []
        for w in range(self._next, stop):
            start, end = spans.get(w, (self._end, self._end))
            start = max(start, self._end)
            end = max(start, end)
            marks.append(WordMark(*self._words[w], start, end))
            self._end = end
        self._next = max(self._next, stop)
        return marks
