"""What a session's writer (`duplexd._downlink.writer.Downlink`) needs from its session: the
events it tells and asks (`DownlinkEvents`), and the sends it sends with (`SendFn`, and the
pacer's tick's `SendNowFn` and `FlushFn`), with their stand-ins once the session has ended.

The events and `send_now` may be called from the pacer's tick, which runs between any two task
steps (`duplexd._downlink.pacer.TicksBetweenSteps`): they must not block, and what they raise
ends the session's writer (its task raises it), not the pacer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from ..protocol import frames as fr

SendFn = Callable[[bytes], Awaitable[None]]
# sends a message at once or not at all, from synchronous code (the pacer's tick): NOT_SENT,
# SENT, or PARTLY_SENT (the rest waits for a `FlushFn`): `duplexd._server.direct.DirectSend`
SendNowFn = Callable[[bytes], int]
FlushFn = Callable[[], Awaitable[None]]
NOT_SENT: Final = 0
SENT: Final = 1
PARTLY_SENT: Final = 2
SLOW_SEND_S: Final = 1.0  # one send blocked this long (the client reads nothing): slow consumer


class DownlinkEvents(Protocol):
    """What the writer asks about the session's utterances and tells the session (which
    implements it). Called on the trio thread, once per utterance or interrupt, never per
    frame."""

    def chars_spoken(self, utterance_id: int, samples: int) -> int:
        """Characters of the utterance's text whose audio lies within its first `samples`."""
        ...

    def totals(self, utterance_id: int) -> tuple[int, int]:
        """(real samples, characters) of a fully synthesized utterance, for UtteranceDone."""
        ...

    def word_marks(self, utterance_id: int) -> list[tuple[int, int, int, int]] | None:
        """The utterance's word marks as its producer adds them, (start_char, end_char,
        start_sample, end_sample) each, or None when no WORDS frames are to be sent: the
        writer sends each word's mark right before the frame its audio starts in."""
        ...

    def audio_started(self, utterance_id: int) -> None:
        """The utterance's first audio frame is being sent."""
        ...

    def sending(self, frame: fr.UtteranceDone | fr.Interrupted) -> None:
        """`frame` is about to be sent: the utterance it names is over."""
        ...

    def slow_consumer(self) -> bool:
        """The client reads too slowly: a send has been blocked for `SLOW_SEND_S` (its socket's
        buffer stayed full), with audio coming due or not (`Downlink.audio_due` says which).
        Returns True when the session goes on (it gave that connection up and waits for
        another: resume), False when it ends (the writer then stops)."""
        ...

    def answered(self, spent_s: float) -> None:
        """Building a batch of answers (a STATS frame is built as it is sent) took `spent_s`
        of the loop: the client asked for it, so it counts against its share."""
        ...


class Ended:
    """The events of a session that has ended (`Downlink.forget_session`): nothing to tell,
    nothing to ask."""

    def chars_spoken(self, utterance_id: int, samples: int) -> int:
        return 0

    def totals(self, utterance_id: int) -> tuple[int, int]:
        return (0, 0)

    def word_marks(self, utterance_id: int) -> list[tuple[int, int, int, int]] | None:
        return None

    def audio_started(self, utterance_id: int) -> None:
        pass

    def sending(self, frame: fr.UtteranceDone | fr.Interrupted) -> None:
        pass

    def slow_consumer(self) -> bool:
        return False

    def answered(self, spent_s: float) -> None:
        pass


ENDED: Final = Ended()


async def send_nothing(data: bytes) -> None:
    """The send of a session that has ended (`Downlink.forget_session`): its writer has
    stopped, nothing is sent any more."""
