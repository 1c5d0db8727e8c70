"""What `duplexd chat`'s replies said, and how much of each the user heard.

A reply's text is kept as it streams (`started` gives the list its chunks go to) until a
barge-in says how much of it was heard (`heard_up_to`: HEARD's `chars_heard` with a sound
card, whose reports HEARD answers; else INTERRUPTED's `chars_spoken`, what left the daemon).
Then the responder's conversation keeps that much of it (`Responder.heard`), once the reply's
text has stopped coming (`ended`: the responder adds a reply to its conversation as it ends).
At most `KEPT` replies are kept: a reply never cut is forgotten with the oldest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

KEPT: Final = 32


class SaidReplies:
    """The texts of the last `KEPT` replies, by utterance id; `cut(said, heard)` is called
    once for a reply the user heard only part of."""

    def __init__(self, cut: Callable[[str, str], None]) -> None:
        self._cut = cut
        self._said: dict[int, list[str]] = {}
        self._streaming: set[int] = set()  # replies whose text is still coming ...
        self._cut_at: dict[int, int] = {}  # ... and the characters heard of them, if known

    def __len__(self) -> int:
        return len(self._said)

    def started(self, uid: int) -> list[str]:
        """A reply begins: the list its text's chunks go to, as they are sent."""
        chunks: list[str] = []
        self._said[uid] = chunks
        self._streaming.add(uid)
        while len(self._said) > KEPT:
            del self._said[next(iter(self._said))]
        return chunks

    def ended(self, uid: int) -> None:
        """Reply `uid`'s text stopped coming (whole, or cancelled by a barge-in)."""
        self._streaming.discard(uid)
        if (chars := self._cut_at.pop(uid, None)) is not None:
            self.heard_up_to(uid, chars)

    def text(self, uid: int) -> str | None:
        """Reply `uid`'s text as sent so far (None: not one of the last replies)."""
        chunks = self._said.get(uid)
        return None if chunks is None else "".join(chunks)

    def heard_up_to(self, uid: int, chars: int) -> None:
        """The user heard the first `chars` characters of reply `uid` (and no more)."""
        chunks = self._said.get(uid)
        if chunks is None:
            return
        if uid in self._streaming:
            self._cut_at[uid] = chars
            return
        del self._said[uid]
        text = "".join(chunks)
        if chars < len(text.rstrip()):
            self._cut(text, text[:chars].rstrip())
