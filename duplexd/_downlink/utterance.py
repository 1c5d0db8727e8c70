"""One utterance: its streamed text, its pieces, its cancel scope.

Text chunks are segmented as they arrive (`duplexd._downlink.segment.Segmenter`); the utterance
runner takes the pieces one by one. A barge-in cancels the utterance's `scope` (trio side) and sets
`cancel` (the worker thread's view of the same fact).
"""

from __future__ import annotations

import collections
import threading

import trio

from .producer import PieceMap
from .segment import Piece, Segmenter


class Utterance:
    __slots__ = (
        "_lot",
        "_pieces",
        "_segmenter",
        "cancel",
        "ended",
        "piece_map",
        "scope",
        "text_bytes",
        "total_chars",
        "uid",
    )

    def __init__(self, uid: int) -> None:
        self.uid = uid
        self.scope = trio.CancelScope()
        self.cancel = threading.Event()
        self.ended = False  # all text received
        self.total_chars = 0
        self.text_bytes = 0
        self.piece_map = PieceMap()  # filled in by its producer as pieces are synthesized
        self._segmenter = Segmenter()
        self._pieces: collections.deque[Piece] = collections.deque()
        self._lot = trio.lowlevel.ParkingLot()

    def feed(self, text: str, *, end: bool) -> None:
        """Add a chunk of text (and maybe the end marker). Synchronous; trio thread."""
        self.total_chars += len(text)
        self.text_bytes += len(text.encode())
        self._pieces.extend(self._segmenter.feed(text))
        if end:
            self._pieces.extend(self._segmenter.finish())
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

        Waits for more text. Cancellation leaves the pieces where they were.
        """
        while not self._pieces:
            if self.ended:
                return None
            await self._lot.park()
        return self._pieces.popleft()
