"""What one client may cost: budgets on its frames, loop time and synthesis (admission lives
in `server.py`).

Three `TokenBucket`s per session (`Budgets`) bound what a client's input costs the event
loop, however its messages are built:

- frames: `max_frames_per_s` on average, `frame_burst` at once (`[limits]`, announced in
  Welcome's info); the reader takes one per frame (a message counts as at least one) and fails
  the session with LIMIT_EXCEEDED when the bucket is empty;
- loop time: `input_share` of the loop on average (seconds of work per second), `input_burst_s`
  at once; the reader spends what each batch of frames cost, and when the bucket is in debt
  it waits before reading on (the client is slowed down, nobody else is);
- synthesis: `synthesis_speed` seconds of audio a second on average, `synthesis_burst_s` at
  once; the utterance runner spends what each piece rendered and, in debt, waits before it
  renders the next. Audio that is played costs 1 s a second, so only a client that starts
  and interrupts utterances over and over (synthesis thrown away) ever waits.

Opening a session costs the loop `SESSION_OPEN_S`, charged to the loop share: a client
that opens sessions over and over is bounded like one that sends frames over and over.
A session's budgets outlive it (`CarriedBudgets`): a client (its address and token subject)
that reconnects starts where its last session left off, so closing and reopening sessions
never buys a fresh burst.
"""

from __future__ import annotations

import collections
from typing import Any, Final

import attrs

from .._downlink.contract import SLOW_SEND_S
from .._downlink.writer import MAX_CONTROL_FRAMES
from .._ops.settings import SessionLimits

MAX_MESSAGE_BYTES: Final = 1 << 20  # one WebSocket message (it may hold several frames)
# What the WebSocket layer (trio-websocket) buffers of one message before it closes with 1009
# on its own, without an Error frame (it gives us no say): twice our limit, so that a message
# over `MAX_MESSAGE_BYTES` but under this reaches the reader, which answers it with an Error
# frame first (SPEC.md §2). A connection's memory stays bounded by this.
TRANSPORT_MESSAGE_BYTES: Final = 2 * MAX_MESSAGE_BYTES
# Loop time a session costs to open and close (upgrade, Hello, Welcome, close), charged to
# the client's loop share when it opens: measured 2.0 ms of daemon CPU per session on the
# 2-core box (300 sessions opened and closed back to back)
SESSION_OPEN_S: Final = 0.002
# Loop time the WebSocket layer spends on each byte received (reads, parse, unmask,
# reassemble), charged with the frames: measured 4.4-9.2 ms per MiB through trio-websocket in
# the daemon's 16 KiB reads (`python -m bench.receive_cost`, one core; wsproto alone had been
# measured at 1.6-2.5 ms, which left a flooding client most of that work uncharged)
RECEIVE_S_PER_BYTE: Final = 6e-3 / (1 << 20)


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
        "synthesis_speed": limits.synthesis_speed,
        "synthesis_burst_s": limits.synthesis_burst_s,
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

    def copy(self) -> TokenBucket:
        twin = TokenBucket(self._rate, self._burst, self._at)
        twin._tokens = self._tokens
        return twin

    @property
    def is_full(self) -> bool:
        return self._tokens >= self._burst

    def debt_s(self) -> float:
        """How long until the bucket is out of debt (0 when it is not in debt)."""
        return -self._tokens / self._rate if self._tokens < 0 else 0.0

    @property
    def tokens(self) -> float:
        return self._tokens

    @property
    def rate_per_s(self) -> float:
        return self._rate


@attrs.define
class Budgets:
    """One session's buckets (see the module docstring)."""

    frames: TokenBucket
    loop_share: TokenBucket
    synthesis: TokenBucket

    @classmethod
    def full(cls, limits: SessionLimits, now: float) -> Budgets:
        return cls(
            frames=TokenBucket(limits.max_frames_per_s, limits.frame_burst, now),
            loop_share=TokenBucket(limits.input_share, limits.input_burst_s, now),
            synthesis=TokenBucket(limits.synthesis_speed, limits.synthesis_burst_s, now),
        )

    def copy(self) -> Budgets:
        return Budgets(self.frames.copy(), self.loop_share.copy(), self.synthesis.copy())

    def refill(self, now: float) -> None:
        for bucket in (self.frames, self.loop_share, self.synthesis):
            bucket.refill(now)

    @property
    def is_full(self) -> bool:
        return self.frames.is_full and self.loop_share.is_full and self.synthesis.is_full

    def least(self, other: Budgets) -> Budgets:
        """Bucket by bucket, the emptier one (both refilled to the same time)."""
        return Budgets(
            min(self.frames, other.frames, key=_tokens),
            min(self.loop_share, other.loop_share, key=_tokens),
            min(self.synthesis, other.synthesis, key=_tokens),
        )


def _tokens(bucket: TokenBucket) -> float:
    return bucket.tokens


CARRIED_CLIENTS: Final = 4096


class CarriedBudgets:
    """What the closed sessions of each client left in their budgets, so that its next session
    starts from there (refilled for the time in between) instead of full. A client is its
    address and token subject. At most `max_clients` are kept (the least recently seen go
    first); a client whose buckets have refilled is forgotten."""

    def __init__(self, limits: SessionLimits, max_clients: int = CARRIED_CLIENTS) -> None:
        self._limits = limits
        self._max_clients = max_clients
        self._left: collections.OrderedDict[tuple[str, str], Budgets] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._left)

    def start(self, client: tuple[str, str], now: float) -> Budgets:
        """The budgets of a new session of `client`."""
        left = self._left.get(client)
        if left is None:
            return Budgets.full(self._limits, now)
        budgets = left.copy()
        budgets.refill(now)
        return budgets

    def wait_s(self, client: tuple[str, str], now: float) -> float:
        """How long until `client` may send a frame again and is within its loop share (0:
        now); its new connections are refused until then."""
        left = self._left.get(client)
        if left is None:
            return 0.0
        left.refill(now)
        frames = left.frames
        frames_s = (1.0 - frames.tokens) / frames.rate_per_s if frames.tokens < 1.0 else 0.0
        return max(frames_s, left.loop_share.debt_s())

    def charge(self, client: tuple[str, str], spent_s: float, now: float) -> None:
        """`client` cost the loop `spent_s` outside any session (a failed handshake)."""
        budgets = self.start(client, now)
        budgets.loop_share.spend(spent_s)
        self.leave(client, budgets, now)

    def leave(self, client: tuple[str, str], budgets: Budgets, now: float) -> None:
        """A session of `client` ended with `budgets`: keep the emptier of them and what an
        earlier session left (sessions of one client may overlap)."""
        budgets = budgets.copy()
        budgets.refill(now)
        if (earlier := self._left.pop(client, None)) is not None:
            earlier.refill(now)
            budgets = budgets.least(earlier)
        if budgets.is_full:
            return
        self._left[client] = budgets
        while len(self._left) > self._max_clients:
            self._left.popitem(last=False)
        self._forget_refilled(now)

    def _forget_refilled(self, now: float) -> None:
        """Drop the least recently seen clients whose buckets are full again."""
        while self._left:
            client, oldest = next(iter(self._left.items()))
            oldest.refill(now)
            if not oldest.is_full:
                return
            del self._left[client]
