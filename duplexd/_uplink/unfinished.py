"""Does a transcript stop mid-sentence? The words' side of the end of turn.

The turn model (turn.py) hears how the user stopped; it is fooled by a pause that sounds
final ("I'd like a table for" scored 0.96 complete on the bench's voice). The speculative
transcript of the same silence (transcripts.py, made from its first 150 ms) says what was
said, and some endings cannot end an English utterance: an article, a possessive, a preposition that
needs its object, a conjunction, a filler, or Whisper's own mark of a trailing-off voice ("...",
a comma, a dash). Nor does a text with no end mark at all: Whisper ends a sentence it heard end
with a period, question or exclamation mark (all 32 of `bench.asr_window`'s sentences, and
"Yes.", "Okay.", "Paris.") and leaves a voice that stops mid-sentence unmarked ("my flight
lands at around", "I want to fly"), except a bare number ("9"), which may end an answer.
`sounds_unfinished` answers that, and the uplink then waits for the user to go on (up to
`vad.max_silence_ms`) even when the turn model calls the turn complete.

Words that may end an utterance are left out on purpose, however often they also lead on: the
particles of phrasal verbs ("turn it on", "come in", "turn around"), "her" (an object), "so",
"that", "too"; and a question mark always ends ("What is it for?"). English only: the uplink
asks only when the transcriber's language is English.
"""

from __future__ import annotations

import re
from typing import Final

# closed-class words an utterance does not end on (lower case, no punctuation)
LEADING_ON: Final = frozenset(
    (
        *("a", "an", "the", "my", "your", "our", "their", "his", "its"),
        *("of", "at", "from", "with", "to", "for", "into", "onto", "toward", "towards", "by"),
        *("about", "than", "and", "or", "but", "nor", "because", "if", "although", "unless"),
        *("whereas", "um", "uh", "er", "erm", "hmm"),
    )
)
_TRAILING_OFF: Final = ("...", "…", ",", "-", "–", "—", ";", ":")  # noqa: RUF001
_ENDED: Final = (".", "?", "!", '"', "'", ")")  # a sentence's end mark (or a quote's or aside's)
_WORD: Final = re.compile(r"[a-z0-9']+")


def sounds_unfinished(text: str) -> bool:
    """Whether `text` (a transcript) stops where an English utterance does not end."""
    t = text.strip().lower()
    if not t or t.endswith("?"):
        return False
    if t.endswith(_TRAILING_OFF):
        return True
    words = _WORD.findall(t)
    if not words:
        return False
    if not t.endswith(_ENDED) and not words[-1].isdigit():
        return True  # no end mark: "my flight lands at around"
    return words[-1] in LEADING_ON
