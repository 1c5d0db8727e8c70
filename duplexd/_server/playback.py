"""What the client says it played (PLAYED, SPEC.md §4.8), and the HEARD answer (§5.11).

A client that plays the audio (the browser client) reports, a few times a second and once
more when an utterance ends or is flushed at an interrupt, how many of its samples reached the
speaker. A final report is answered with HEARD: the characters whose words were played whole,
from the utterance's word timing (`PieceMap.chars_spoken`), which is what an agent should keep
of its reply. The latest report is also kept as the alignment point between the samples sent
and the client's audio clock (for echo cancellation).

Bounded: the word timing of the last `REMEMBERED` utterances that ended (done or interrupted)
is kept for their final reports; a report on any other utterance is ignored.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .._downlink.producer import PieceMap
from ..protocol import frames as fr

REMEMBERED: Final = 8  # ended utterances whose final report is still answered


@dataclass(frozen=True, slots=True)
class PlayedAt:
    """The latest report: sample `samples_played` of `utterance_id` played at `clock_us`."""

    utterance_id: int
    samples_played: int
    clock_us: int


class Playback:
    """The client's playback reports of one session. Trio thread only."""

    def __init__(self) -> None:
        # uid -> (its word timing, samples of it sent), for the utterances that ended
        self._ended: collections.OrderedDict[int, tuple[PieceMap, int]] = collections.OrderedDict()
        self.latest: PlayedAt | None = None
        self.reports = 0

    def ended(self, uid: int, pieces: PieceMap, samples_sent: int) -> None:
        """Utterance `uid` sent its last audio (`samples_sent` of it): keep its timing."""
        self._ended[uid] = (pieces, samples_sent)
        while len(self._ended) > REMEMBERED:
            self._ended.popitem(last=False)

    def report(
        self, frame: fr.Played, playing: Callable[[int], tuple[PieceMap, int] | None]
    ) -> fr.Heard | None:
        """Record a report; the HEARD answer to a final one, if the utterance is known.
        `playing(uid)`: the word timing of an utterance not ended yet and the samples of it
        sent so far (None if unknown)."""
        self.reports += 1
        self.latest = PlayedAt(frame.utterance_id, frame.samples_played, frame.clock_us)
        if not frame.final:
            return None
        known = self._ended.pop(frame.utterance_id, None)
        if known is not None:
            pieces, sent = known
        elif (live := playing(frame.utterance_id)) is not None:
            pieces, sent = live
        else:
            return None
        played = min(frame.samples_played, sent)  # never more than was sent
        return fr.Heard(
            epoch=frame.epoch,
            utterance_id=frame.utterance_id,
            samples_played=played,
            chars_heard=pieces.chars_spoken(played),
        )
