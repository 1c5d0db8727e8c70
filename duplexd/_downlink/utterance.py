"""One utterance: its streamed text, its pieces, its cancel scope.

Text chunks are only queued as they arrive (`feed` costs nothing that grows with the text on
the reader's path); the utterance runner segments them (`duplexd._downlink.segment.Segmenter`)
as it asks for the next piece, at most `SEGMENT_STEP_CHARS` characters per step with a
checkpoint between steps, so even a 32 KB chunk never holds the event loop for long. A
barge-in cancels the utterance's `scope` (trio side) and sets `cancel` (the worker thread's
view of the same fact).
"""

from __future__ import annotations

import collections
import threading
from typing import Final

import trio

from .producer import PieceMap
from .segment import Piece, Segmenter

SEGMENT_STEP_CHARS: Final = 2048  # segmented per step of the runner (about 2 ms of work)
CHUNK_COST_CHARS: Final = 16  # what a chunk costs beyond its characters, in that budget


class Utterance:
    __slots__ = (
        "_finished",
        "_lot",
        "_pieces",
        "_segmenter",
        "_text",
        "cancel",
        "ended",
        "piece_map",
        "scope",
        "total_chars",
        "uid",
    )

    def __init__(self, uid: int) -> None:
        self.uid = uid
        self.scope = trio.CancelScope()
        self.cancel = threading.Event()
        self.ended = False  # all text received
        self.total_chars = 0
        self.piece_map = PieceMap()  # filled in by its producer as pieces are synthesized
        self._segmenter = Segmenter()
        self._text: collections.deque[str] = collections.deque()  # received, not segmented
        self._finished = False  # the segmenter has seen the end
        self._pieces: collections.deque[Piece] = collections.deque()
        self._lot = trio.lowlevel.ParkingLot()

    def feed(self, text: str, *, end: bool) -> None:
        """Add a chunk of text (and maybe the end marker). Synchronous, O(1); trio thread."""
        self.total_chars += len(text)
        if text:
            self._text.append(text)
        if end:
            self.ended = True
        self._lot.unpark_all()

    def abort(self) -> None:
        """Barge-in: stop the producer thread and cancel the scope."""
        self.cancel.set()
        self.scope.cancel()

    def chars_spoken(self, samples_sent: int) -> int:
        """Characters fully spoken within the first `samples_sent` samples of its audio."""
        return self.piece_map.chars_spoken(samples_sent)

    async def next_piece(self) -> Piece | None:
        """The next piece to synthesize, or None once the text has ended and all were taken.

        Segments the text received so far in bounded steps (a checkpoint between them) and
        waits for more text. Cancellation leaves the pieces and the text where they were.
        """
        while not self._pieces:
            if self._text:
                self._segment_step()
                if not self._pieces and self._text:
                    await trio.lowlevel.checkpoint()
            elif self.ended and not self._finished:
                self._finished = True
                self._pieces.extend(self._segmenter.finish())
            elif self._finished:
                return None
            else:
                await self._lot.park()
        return self._pieces.popleft()

    def _segment_step(self) -> None:
        """Segment at most about `SEGMENT_STEP_CHARS` characters of the queued text."""
        budget = SEGMENT_STEP_CHARS
        text, segmenter, pieces = self._text, self._segmenter, self._pieces
        while text and budget > 0:
            chunk = text.popleft()
            if len(chunk) > budget:
                text.appendleft(chunk[budget:])
                chunk = chunk[:budget]
            budget -= len(chunk) + CHUNK_COST_CHARS
            pieces.extend(segmenter.feed(chunk))
