"""The words' side of the end of turn (duplexd/_uplink/unfinished.py): transcripts that stop
mid-sentence, from Whisper's own output on the bench's paused turns, and ones that do not."""

from __future__ import annotations

import pytest

from duplexd._uplink.unfinished import sounds_unfinished

pytestmark = pytest.mark.unit

# (what the bundled Whisper wrote for the first half of bench/turns.py's paused sentences, at
# 64 ms of their pause; and others)
UNFINISHED = [
    "I'd like a table for...",
    "Could you turn the lights and...",
    "Let me think, maybe...",
    "I want to fly to",
    "Please send the report to",
    "Can you remind me to call my",
    "So I was thinking that, um",
    "The train leaves from the",
    "I'd like the soup and",
    "Well, because —",
    # no end mark: what Whisper wrote in a window cut to the turn (duplexd/_uplink/window.py)
    "my flight lands at around",
    "the meeting is on",
    "I want to fly",
]
FINISHED = [
    "Please book a table for 2 at 7.30.",
    "What is it for?",
    "Where to?",
    "Turn it on.",
    "Come in.",
    "Thank you, that is all I needed.",
    "Could you tell me what the weather will be like tomorrow?",
    "I called her.",
    "I think so.",
    "Okay.",
    "Yes!",
    "9",  # a bare number answers without a mark
    'He said "stop."',
    "",
]


@pytest.mark.parametrize("text", UNFINISHED)
def test_stops_mid_sentence(text: str) -> None:
    assert sounds_unfinished(text)


@pytest.mark.parametrize("text", FINISHED)
def test_may_end_here(text: str) -> None:
    assert not sounds_unfinished(text)
