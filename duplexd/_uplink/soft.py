"""Soft barge-in: hold the agent's audio on the user's onset, then tell a backchannel from an
interruption (`vad.barge_in_mode: "soft"`, protocol/SPEC.md §4.6.2).

The onset is decided as for an immediate barge-in (`SpeechDetector`'s `BargeIn`), so the
agent's audio stops just as fast; but it is held, not flushed. `SoftBargeIn` then follows the
sound, window by window (16 kHz sample positions, in the uplink worker), and decides:

- the user spoke on for `soft_max_speech_ms` (in all, since the onset): an interruption (LONG);
- the sound ended (`soft_silence_ms` of silence) shorter than `soft_min_speech_ms`: a noise, a
  click, a short cough: the audio goes on (TOO_SHORT);
- it ended longer than that: the transcriber is asked what was said (`WordsCheck`, answered
  with `answer`): no words (a cough, a laugh, a breath) or only backchannel words ("mhm",
  "yeah", "okay", or a hum however Whisper spells it) let the audio go on (NO_WORDS,
  BACKCHANNEL); any other word interrupts
  (WORDS); a session without transcripts cannot tell, and interrupts (UNHEARD);
- no decision `soft_window_ms` after the onset (the user keeps starting and stopping, or the
  transcriber is slow): an interruption (TIMEOUT).

If the user speaks again while the transcriber works, its answer is stale (the sound is not
over) and the next silence asks again. Pure state, no I/O: the uplink runs it in its worker
and delivers what it decides on the trio thread, where the session acts on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from ..protocol.frames import BargeInReason
from ..protocol.options import VadOptions
from .vad import VAD_RATE_HZ, WINDOW

_WORD: Final = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*")  # "mm-hmm", "uh-huh", "i'm"
# a hum as Whisper writes it: "mm", "hmm", "mhm", "mm-hmm", and forms the list does not hold:
# "MmMmM" (bench.hold_words: tiny.en writes one hum several ways as its bounds move), a spelled
# "M-H-M" (a probe of the VITS voice's "Mhm"). Two letters at least, an m among them (not "N.",
# a clipped "no"), and not a hyphenated pair without an h ("mm-mm", "nn-nn": "no")
_HUM: Final = re.compile(r"(?=[hn]*m)[mhn]{2,}")
_NO_HUM: Final = re.compile(r"([mn]+)-\1")


def spoken_words(text: str) -> list[str]:
    """The words of a transcript, lowercased, without punctuation."""
    return _WORD.findall(text.lower())


def backchannel_words(backchannels: tuple[str, ...]) -> frozenset[str]:
    """The words `backchannels` allow (entries of several words count word by word: "got it"
    allows "got" and "it")."""
    return frozenset(w for entry in backchannels for w in spoken_words(entry))


def is_hum(word: str) -> bool:
    """Whether `word` (lowercased, as `spoken_words` gives it) is a hum: only m, h and n,
    with an m, two letters at least, and not "mm-mm" (a "no")."""
    return _HUM.fullmatch(word.replace("-", "")) is not None and not _NO_HUM.fullmatch(word)


def is_backchannel(text: str, backchannels: tuple[str, ...] | frozenset[str]) -> bool:
    """Whether every word of `text` is one of `backchannels` (or of `backchannel_words`), or
    a hum (`is_hum`) when they allow one."""
    allowed = (
        backchannels if isinstance(backchannels, frozenset) else backchannel_words(backchannels)
    )
    hums = any(is_hum(w) for w in allowed)
    return all(
        w in allowed or (hums and is_hum(w)) or _clipped(w, allowed)
        for w in _letters_joined(spoken_words(text))
    )


def _clipped(word: str, allowed: frozenset[str]) -> bool:
    """Whether `word` is an allowed hyphenated word cut short past its hyphen ("uh-h" for
    "uh-huh": Whisper writes what the sound's end cut off; `bench.backchannels` had "Uh-h"
    interrupt)."""
    return "-" in word and any("-" in a and a.startswith(word) for a in allowed)


def _letters_joined(words: list[str]) -> list[str]:
    """`words` with each run of single letters m, h, n (and hums among them) made one word:
    Whisper spells a hum letter by letter too ("N M M.", "M M", "N Mm.": `bench.hold_words`);
    a lone "n" stays one."""
    out: list[str] = []
    run = ""
    for w in words:
        if (len(w) == 1 and w in "mhn") or is_hum(w):
            run += w
            continue
        if run:
            out.append(run)
            run = ""
        out.append(w)
    return [*out, run] if run else out


@dataclass(frozen=True, slots=True)
class WordsCheck:
    """The sound in [start, end) ended (the silence after it began at `stop`): what words are
    in it? Answer with `SoftBargeIn.answer(id, text)`."""

    id: int
    start: int
    end: int
    stop: int


@dataclass(frozen=True, slots=True)
class Settled:
    """The held barge-in whose sound began at `onset` is decided: the audio goes on (`resume`)
    or is interrupted."""

    onset: int
    resume: bool
    reason: BargeInReason
    text: str = ""


class SoftBargeIn:
    """The decision about one held barge-in at a time. Not thread-safe (the uplink worker)."""

    def __init__(self, options: VadOptions, *, transcripts: bool) -> None:
        ms = VAD_RATE_HZ / 1000
        self.options = options
        self.transcripts = transcripts
        self._allowed = backchannel_words(options.backchannels)
        self._min_speech = round(options.soft_min_speech_ms * ms)
        self._max_speech = round(options.soft_max_speech_ms * ms)
        self._silence = round(options.soft_silence_ms * ms)
        self._window = round(options.soft_window_ms * ms)
        self._pad = round(options.speech_pad_ms * ms)
        self._onset: int | None = None  # None: nothing held
        self._speech = 0  # samples of speech since the onset
        self._silence_start: int | None = None
        self._asked: int | None = None  # the check of the silence now going on
        self._checks = 0

    @property
    def open(self) -> bool:
        return self._onset is not None

    def start(self, onset: int, end: int) -> None:
        """A barge-in held at `onset`, decided by the window ending at `end` (the speech so
        far is [onset, end))."""
        self._onset, self._speech = onset, end - onset
        self._silence_start = self._asked = None

    def close(self) -> None:
        """Forget the hold (decided, or ended by the session)."""
        self._onset = None

    def window(
        self, start: int, speech: bool, silent: bool | None = None
    ) -> Settled | WordsCheck | None:
        """The window [start, start + WINDOW) after the onset: `speech` (over the threshold),
        `silent` (under the lower one, as the detector's silences: default `not speech`), or
        neither (it changes nothing but the time)."""
        if silent is None:
            silent = not speech
        onset = self._onset
        if onset is None:
            return None
        end = start + WINDOW
        if speech:
            self._speech += WINDOW
            self._silence_start = self._asked = None  # the sound goes on: a check is stale
            if self._speech >= self._max_speech:
                return self._settle(False, BargeInReason.LONG)
        elif silent:
            if self._silence_start is None:
                self._silence_start = start
            if end - self._silence_start >= self._silence and self._asked is None:
                if self._speech < self._min_speech:
                    return self._settle(True, BargeInReason.TOO_SHORT)
                if not self.transcripts:
                    return self._settle(False, BargeInReason.UNHEARD)
                self._asked = self._checks
                self._checks += 1
                stop = self._silence_start
                return WordsCheck(self._asked, max(0, onset - self._pad), stop + self._pad, stop)
        if end - onset >= self._window:
            return self._settle(False, BargeInReason.TIMEOUT)
        return None

    def answer(self, check: int, text: str) -> Settled | None:
        """The transcript of `WordsCheck` `check`; None if the hold is over or the user spoke
        on since it was asked (stale)."""
        if self._onset is None or self._asked != check:
            return None
        if not spoken_words(text):
            return self._settle(True, BargeInReason.NO_WORDS, text)
        if is_backchannel(text, self._allowed):
            return self._settle(True, BargeInReason.BACKCHANNEL, text)
        return self._settle(False, BargeInReason.WORDS, text)

    def _settle(self, resume: bool, reason: BargeInReason, text: str = "") -> Settled:
        onset, self._onset = self._onset, None
        assert onset is not None
        return Settled(onset, resume, reason, text.strip())
