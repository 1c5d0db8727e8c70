"""What one client may cost: a budget on its frames (admission lives in `server.py`).

`FrameRate` is a token bucket over the frames a client sends: `max_frames_per_s` on average,
`frame_burst` at once (`[limits]` settings, announced in Welcome's info). The session's reader
takes one token per frame (a message counts as at least one) and fails the session with
LIMIT_EXCEEDED when the bucket is empty; with it, what one message can make the event loop do
is bounded however it is built.
"""

from __future__ import annotations

from typing import Any, Final

from .._downlink.writer import MAX_CONTROL_FRAMES, SLOW_SEND_S
from .._ops.settings import SessionLimits

MAX_MESSAGE_BYTES: Final = 1 << 20  # one WebSocket message (it may hold several frames)


def announced_limits(limits: SessionLimits) -> dict[str, Any]:
    """Every limit a client can hit, as Welcome's `info.limits` announces it (SPEC.md §10)."""
    return {
        "max_message_bytes": MAX_MESSAGE_BYTES,
        "max_frame_bytes": limits.max_frame_bytes,
        "max_text_bytes": limits.max_text_bytes,
        "max_queued_utterances": limits.max_queued_utterances,
        "max_frames_per_s": limits.max_frames_per_s,
        "frame_burst": limits.frame_burst,
        "max_pending_answers": MAX_CONTROL_FRAMES,
        "slow_consumer_s": SLOW_SEND_S,
        "hello_timeout_s": limits.hello_timeout_s,
        "idle_timeout_s": limits.idle_timeout_s,
        "max_session_s": limits.max_session_s,
        "resume_window_s": limits.resume_window_s,
        "resume_buffer_s": limits.resume_buffer_s,
    }


class FrameRate:
    """A token bucket. `refill(now)` once per message, then `take()` once per frame."""

    __slots__ = ("_at", "_burst", "_rate", "_tokens")

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s and burst must be positive")
        self._rate = rate_per_s
        self._burst = float(burst)
        self._tokens = float(burst)
        self._at = now

    def refill(self, now: float) -> None:
        """Add what `rate_per_s` earned since the last refill (up to the burst)."""
        tokens = self._tokens + (now - self._at) * self._rate
        self._tokens = tokens if tokens < self._burst else self._burst
        self._at = now

    def take(self) -> bool:
        """Spend one token; False (and nothing spent) when the bucket is empty."""
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    @property
    def tokens(self) -> float:
        return self._tokens
