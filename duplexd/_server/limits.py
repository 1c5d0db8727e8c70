"""What one client may cost: a budget on its frames (admission lives in `server.py`).

Two `TokenBucket`s per session bound what a client's input costs the event loop, however its
messages are built:

- frames: `max_frames_per_s` on average, `frame_burst` at once (`[limits]`, announced in
  Welcome's info); the reader takes one per frame (a message counts as at least one) and fails
  the session with LIMIT_EXCEEDED when the bucket is empty;
- loop time: `input_share` of the loop on average (seconds of work per second), `input_burst_s`
  at once; the reader spends what each batch of frames cost, and when the bucket is in debt
  it waits before reading on (the client is slowed down, nobody else is).
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
        "input_share": limits.input_share,
        "input_burst_s": limits.input_burst_s,
        "max_pending_answers": MAX_CONTROL_FRAMES,
        "slow_consumer_s": SLOW_SEND_S,
        "hello_timeout_s": limits.hello_timeout_s,
        "idle_timeout_s": limits.idle_timeout_s,
        "max_session_s": limits.max_session_s,
        "resume_window_s": limits.resume_window_s,
        "resume_buffer_s": limits.resume_buffer_s,
    }


class TokenBucket:
    """A token bucket: `rate_per_s` tokens a second on average, `burst` at once. `refill(now)`,
    then `take()` one (False when empty, nothing taken) or `spend(n)` (it may go into debt)."""

    __slots__ = ("_at", "_burst", "_rate", "_tokens")

    def __init__(self, rate_per_s: float, burst: float, now: float) -> None:
        if rate_per_s <= 0 or burst <= 0:
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

    def spend(self, amount: float) -> None:
        self._tokens -= amount

    def debt_s(self) -> float:
        """How long until the bucket is out of debt (0 when it is not in debt)."""
        return -self._tokens / self._rate if self._tokens < 0 else 0.0

    @property
    def tokens(self) -> float:
        return self._tokens
