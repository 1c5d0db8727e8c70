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

A word's span is its ids' predicted durations, except the end of a word before a pause (or
at the end of its sequence): the silence id after its last phoneme still holds that phoneme's
release or decay, so it ends where its sound does in the decoded audio (`sound_end`).

Cost: one espeak call per distinct word (cached), and an alignment linear-ish in the piece's
phonemes (at most a few hundred), in the synthesis worker thread, once per piece; per word
before a pause, an envelope of at most `TAIL_MAX_MS` of audio and of the word.
"""

from __future__ import annotations

import bisect
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
    _give_unmatched_words(phonemes, b_at, owner_b, len(words))
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


def _give_unmatched_words(
    phonemes: Sequence[str], b_at: Sequence[int], owner_b: list[int], n_words: int
) -> None:
    """A spoken word none of whose sounds matched (espeak says "a" alone as the letter's name,
    in a sentence as a schwa) goes to the next text word that no sound matched, when one lies
    between the matched words around it; rewrites `owner_b` in place."""
    runs: list[list[int]] = []  # indices into b of each spoken word's sounds
    for k, i in enumerate(b_at):
        if (
            runs
            and k > 0
            and all(_is_sound(ph) or ph in _STRESS for ph in phonemes[b_at[k - 1] + 1 : i])
        ):
            runs[-1].append(k)
        else:
            runs.append([k])
    after = [n_words] * len(runs)  # the first word matched after each run (one pass back)
    for r in range(len(runs) - 2, -1, -1):
        matched = [owner_b[k] for k in runs[r + 1] if owner_b[k] != _NO_WORD]
        after[r] = matched[0] if matched else after[r + 1]
    before = _NO_WORD
    for r, run in enumerate(runs):
        if all(owner_b[k] == _NO_WORD for k in run):
            if before + 1 < after[r]:
                before += 1
                for k in run:
                    owner_b[k] = before
        else:
            before = max(before, *(owner_b[k] for k in run))


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
    before it; BOS, EOS and the first PAD with none. Between two words, the ids up to the
    last punctuation mark (measured: the model puts a pause's silence in the PAD after a
    word's last phoneme, before the mark) belong to none, and the rest (the space and its
    PADs, or the whole run where no mark stands) to the word after them: connected speech
    has no gap between words, and the transition is the next word's onset."""
    ids: list[int] = [*id_map[BOS], *id_map[PAD]]
    out: list[int] = [_NO_WORD] * len(ids)
    known = [(ph, owner) for ph, owner in zip(phonemes, owners, strict=True) if ph in id_map]
    for ph, owner in known:
        mapped = id_map[ph]
        ids.extend(mapped)
        ids.extend(id_map[PAD])
        out.extend([owner] * (len(mapped) + len(id_map[PAD])))
    ids.extend(id_map[EOS])
    out.extend([_NO_WORD] * len(id_map[EOS]))
    _give_gaps_to_next_word(known, id_map, out)
    return ids, out


def _give_gaps_to_next_word(
    known: Sequence[tuple[str, int]], id_map: Mapping[str, Sequence[int]], out: list[int]
) -> None:
    """Rewrites `out` (from `_ids_with_owners`) for the gaps between words (see there)."""
    pad = len(id_map[PAD])
    at = len(id_map[BOS]) + pad
    spans: list[tuple[int, int, str, int]] = []  # (first id, end id, phoneme, owner)
    for ph, owner in known:
        size = len(id_map[ph]) + pad
        spans.append((at, at + size, ph, owner))
        at += size
    k = 0
    while k < len(spans):
        if spans[k][3] == _NO_WORD:
            k += 1
            continue
        word = spans[k][3]
        j = k
        while j + 1 < len(spans) and spans[j + 1][3] == word:
            j += 1
        gap_from = spans[j][1] - pad  # the word's last PAD
        n = j + 1
        while n < len(spans) and spans[n][3] == _NO_WORD:
            n += 1
        if n < len(spans):  # a word follows
            marked = any(unicodedata.category(spans[m][2])[0] == "P" for m in range(j + 1, n))
            owner = _NO_WORD if marked else spans[n][3]
            out[gap_from : spans[n][0]] = [owner] * (spans[n][0] - gap_from)
        else:
            out[gap_from : spans[j][1]] = [_NO_WORD] * pad
        k = n


# A word before a pause (or at the end of its sequence) does not stop where its last
# phoneme's id does: the PAD after that id holds the release of a final stop (the /k/ burst of
# "week.") and the decay of the last sound, then the pause's silence (measured on the joe
# voice: sound 30-70 ms into it, then ~-70 dB). Such a word ends where its sound has fallen
# TAIL_TOP_DB below its loudest ENVELOPE_MS block, looked for up to TAIL_MAX_MS past that id.
TAIL_TOP_DB: Final = 50.0
TAIL_MAX_MS: Final = 100
ENVELOPE_MS: Final = 5


@dataclass(frozen=True, slots=True)
class WordSpan:
    """Samples of one word in its sequence's audio: `[start, end)` by the predicted
    durations, and `limit` (> `end` only for a word before a pause): how far its sound may
    go on into the ids after it that belong to no word (see `sound_end`)."""

    start: int
    end: int
    limit: int


def word_spans(
    owners: npt.NDArray[np.int32], durations: npt.NDArray[np.int64], tail_max_samples: int
) -> dict[int, WordSpan]:
    """The span (from the sequence's first sample) of every word sounded in one sequence,
    given the samples each id lasts (`durations`)."""
    ends = np.cumsum(durations)
    starts = ends - durations
    n = len(owners)
    spans: dict[int, WordSpan] = {}
    present = owners[owners != _NO_WORD]
    for w in np.unique(present).tolist():
        at = np.flatnonzero(owners == w)
        first, last = int(at[0]), int(at[-1])
        start, end = int(starts[first]), int(ends[last])
        after = last + 1
        while after < n and owners[after] == _NO_WORD:
            after += 1
        limit = min(int(ends[after - 1]), end + tail_max_samples) if after > last + 1 else end
        spans[w] = WordSpan(start, end, limit)
    return spans


def sound_end(audio: npt.NDArray[np.float32], span: WordSpan, block: int) -> int:
    """Where the word of `span` stops sounding in `audio` (its sequence's, decoded at least up
    to `span.limit`): the end of the last `block`-sample block of `[end, limit)` whose level
    is within `TAIL_TOP_DB` of the word's loudest block; `span.end` when none is."""
    start, end, limit = span.start, span.end, span.limit
    if limit <= end or end <= start:
        return end
    word = audio[start:end].astype(np.float64)
    whole = len(word) // block * block
    loudest = (word[:whole].reshape(-1, block) ** 2).mean(axis=1).max() if whole else 0.0
    loudest = max(loudest, float((word**2).mean()))
    if loudest <= 0.0:
        return end  # a word of digital silence: nothing to follow
    tail = audio[end:limit].astype(np.float64)
    blocks = -(-len(tail) // block)
    padded = np.zeros(blocks * block)
    padded[: len(tail)] = tail**2
    level = padded.reshape(blocks, block).sum(axis=1) / np.minimum(
        block, len(tail) - np.arange(blocks) * block
    )
    loud = np.flatnonzero(level >= loudest * 10 ** (-TAIL_TOP_DB / 10))
    return end if not loud.size else min(limit, end + (int(loud[-1]) + 1) * block)


class SequenceMarks:
    """The spans of one sequence's words as its audio is decoded, for `MarkCursor.take`: a
    word's span comes once the audio it starts in is there (`add`), moved by where the
    sequence starts in the piece; a word before a pause ends where its sound does
    (`sound_end`) if the audio up to its limit is there too, else where its last id does."""

    def __init__(
        self,
        owners: npt.NDArray[np.int32],
        durations: npt.NDArray[np.int64],
        rate_hz: int,
        offset_samples: int,
    ) -> None:
        self._spans = word_spans(owners, durations, rate_hz * TAIL_MAX_MS // 1000)
        self._block = rate_hz * ENVELOPE_MS // 1000
        self._offset = offset_samples
        self._waiting = sorted(self._spans)  # words whose spans are still to come
        self._decoded: list[npt.NDArray[np.float32]] = []
        self._samples = 0

    def reach(self, hop: int) -> list[tuple[int, int]]:
        """`stream.plan_windows`' `reach`: for each word before a pause, the frame it starts
        in and the frame its limit lies in (`hop` samples a frame)."""
        spans = self._spans.values()
        return [(s.start // hop, -(-s.limit // hop)) for s in spans if s.limit > s.end]

    def add(self, audio: npt.NDArray[np.float32], *, last: bool) -> dict[int, tuple[int, int]]:
        """Take the sequence's next decoded audio; return the spans of the words whose audio
        starts in what has been decoded (every word left when `last`)."""
        self._decoded.append(audio)
        self._samples += len(audio)
        spans, waiting = self._spans, self._waiting
        k = len(waiting)
        if not last:
            k = bisect.bisect_left([spans[w].start for w in waiting], self._samples)
        ready, self._waiting = waiting[:k], waiting[k:]
        whole = None
        out: dict[int, tuple[int, int]] = {}
        for w in ready:
            span = spans[w]
            end = span.end
            if span.end < span.limit <= self._samples:
                if whole is None:
                    whole = (
                        self._decoded[0]
                        if len(self._decoded) == 1
                        else np.concatenate(self._decoded)
                    )
                end = sound_end(whole, span, self._block)
            out[w] = (span.start + self._offset, end + self._offset)
        return out


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
