"""One utterance: its streamed text, its pieces, its cancel scope.

Text chunks are only queued as they arrive (`feed` costs nothing that grows with the text on
the reader's path); the utterance runner segments them (`duplexd._downlink.segment.Segmenter`)
as it asks for the next piece, at most `SEGMENT_STEP_CHARS` characters per step with a
checkpoint between steps, so even a 32 KB chunk never holds the event loop for long. A
barge-in cancels the utterance's `scope` (trio side) and sets `cancel` (the worker thread's
view of the same fact).

When to cut a sentence early. The segmenter cuts by the text alone: a piece is a whole sentence
(the first one, a first clause), so a text that is all there is, however long its sentences,
is never cut in the middle of a clause but by the segmenter's character caps. While an LLM is
still writing a sentence, waiting for its end can leave the listener with nothing to hear;
then, and only then, the runner cuts it where it is (`Segmenter.cut_early`: at the best phrase
boundary already decided). The pending piece is cut at the later of

* `FIRST_CUT_BUDGET_S` after its text began to count: the first text of the utterance for the
  first piece, the previous piece's hand-out for the others (so first audio comes no later
  than with the old six-word first piece: six LLM tokens at 30 a second take 0.2 s), and
* `REFILL_MARGIN_S` before the audio already synthesized would have played out (assuming it
  plays in real time from its first frame: the session says when that was sent, and the
  engine how much audio it made); the margin covers the time the engine takes to bring the
  next piece's first audio (a streaming voice: its first window, 0.12-0.26 s for the joe voice
  on two busy CPU cores).

If nothing can be cut yet (no boundary decided: one long word so far), the runner waits for more
text and cuts then.
"""

from __future__ import annotations

import collections
import math
import threading
from collections.abc import Callable
from typing import Final

import trio

from .producer import PieceMap
from .segment import Piece, Segmenter

SEGMENT_STEP_CHARS: Final = 2048  # segmented per step of the runner (about 2 ms of work)
CHUNK_COST_CHARS: Final = 16  # what a chunk costs beyond its characters, in that budget
FIRST_CUT_BUDGET_S: Final = 0.2  # a piece waits this long for its end at least (docstring)
REFILL_MARGIN_S: Final = 0.3  # ... and until this much of the audio before it is left


def _no_audio() -> float:
    return 0.0


class Utterance:
    __slots__ = (
        "_anchor",
        "_finished",
        "_lot",
        "_pieces",
        "_segmenter",
        "_text",
        "audio_started_at",
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
        self._anchor = math.inf  # when the pending piece's wait began (module docstring)
        self.audio_started_at: float | None = None  # when its first frame was sent

    def feed(self, text: str, *, end: bool) -> None:
        """Add a chunk of text (and maybe the end marker). Synchronous, O(1); trio thread."""
        self.total_chars += len(text)
        if text:
            self._text.append(text)
            if self._anchor == math.inf:  # the first text: the first piece's wait begins
                self._anchor = trio.current_time()
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

    def audio_started(self) -> None:
        """Its first audio frame is being sent (the writer says so): the listener's clock."""
        if self.audio_started_at is None:
            self.audio_started_at = trio.current_time()

    def cut_deadline(self, synthesized_s: float) -> float:
        """When the pending piece is to be cut early if its end has not come (the module
        docstring); `synthesized_s`: seconds of audio synthesized so far for the utterance."""
        now = trio.current_time()
        started = self.audio_started_at
        left_s = synthesized_s - (0.0 if started is None else now - started)
        return max(self._anchor + FIRST_CUT_BUDGET_S, now + left_s - REFILL_MARGIN_S)

    async def next_piece(self, synthesized_s: Callable[[], float] = _no_audio) -> Piece | None:
        """The next piece to synthesize, or None once the text has ended and all were taken.

        Segments the text received so far in bounded steps (a checkpoint between them) and
        waits for more text, or cuts the pending piece early when the listener would wait
        (`cut_deadline`; `synthesized_s()` is the audio synthesized so far for it, in
        seconds). Cancellation leaves the pieces and the text where they were.
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
                deadline = self.cut_deadline(synthesized_s())
                if trio.current_time() >= deadline:
                    if (piece := self._segmenter.cut_early()) is not None:
                        self._pieces.append(piece)
                        continue
                    deadline = math.inf  # no boundary yet: cut once the next one is decided
                with trio.move_on_at(deadline):
                    await self._lot.park()
        self._anchor = trio.current_time()
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
