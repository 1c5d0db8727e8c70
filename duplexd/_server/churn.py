"""Connection churn at a bounded rate, so that a burst of connections cannot hold the pacer back.

Every connection costs the event loop about half a millisecond before anything of a session
exists (the accept, trio-websocket's reader task and HTTP parse, the admission checks, the
upgrade or its refusal), and about as much again when the daemon ends it with an Error (the
frame, the close handshake, the tasks' exits, the log line). Measured with the attack bench's
`silent` attacker, on the project's 2-core VM: ~0.5 ms per connection refused HTTP 429.

A client decides how many of these happen at once: connections opened in the same
millisecond, or opened together and so timing out together (no Hello within
`hello_timeout_s`). Trio runs every task that is ready in one scheduler round, so 100 of them
put ~50 ms of that work between two ticks of the pacer, and every playing session's frames
wait behind it (the attack bench measured gaps of 30-50 ms in all 50 good sessions at each
such burst, with the loop otherwise 40 % busy).

So both take turns from one `ChurnRate`: the listeners take a connection from the kernel's
queue only in its turn (the rest wait in the listen queue, where they cost the loop nothing),
and a connection the daemon ends with an Error sends it in its turn. At the daemon's default
(`server.churn_per_s` = 400 a second, `server.churn_burst` = 8 at once) this work can take at
most ~20 % of the loop, and 8 connections' worth at a time. A flood beyond the rate delays
everybody's next connection (the listen queue is first come, first served); telling one
client's connections from another's before they are accepted is the kernel's and the front's
job (HAProxy's stick table: deploy/haproxy.cfg), not this loop's.
"""

from __future__ import annotations

import math

import trio

from .listen import Listener, socket_of

MIN_RATE_PER_S = 1.0  # (slower, and a turn comes more than a second after the last)
_ROUNDING_S = 1e-9  # a turn due this little after now is due now (sums of intervals round)


class ChurnRate:
    """Turns at `rate_per_s` a second, `burst` at once (rate 0: no limit): a token bucket,
    kept as the time of the next free turn (GCRA), so that waiters are served in order and
    each sleeps once. One per daemon, shared by its listeners and its connections. Trio
    thread only."""

    def __init__(self, rate_per_s: float = 0.0, burst: int = 8) -> None:
        if not (rate_per_s == 0 or MIN_RATE_PER_S <= rate_per_s < math.inf):
            raise ValueError(f"rate_per_s must be 0 (no limit) or >= 1, got {rate_per_s}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._next_turn_s = -math.inf  # (trio clock) the next turn, were the bucket empty
        self.waited = 0  # turns that had to wait
        self.waited_s = 0.0  # how long they waited, in all

    async def wait(self) -> None:
        """Wait for the next turn and take it. Cancelled, it takes nothing (its turn is given
        back unless a later one was taken meanwhile; then it goes unused)."""
        if not self.rate_per_s:
            await trio.lowlevel.checkpoint()
            return
        interval_s = 1.0 / self.rate_per_s
        now = trio.current_time()
        due = max(self._next_turn_s, now)
        at = due - (self.burst - 1) * interval_s  # this turn's time
        self._next_turn_s = due + interval_s
        try:
            if at > now + _ROUNDING_S:
                await trio.sleep_until(at)
                self.waited += 1
                self.waited_s += at - now
            else:
                await trio.lowlevel.checkpoint()
        except BaseException:
            if self._next_turn_s == due + interval_s:
                self._next_turn_s = due
            raise


class PacedListener(trio.abc.Listener[trio.abc.Stream]):
    """`inner`, accepting only in `churn`'s turn, and only once a connection is waiting (so an
    idle listener holds no turn, and a burst gets `burst` at once, not one more)."""

    def __init__(self, inner: Listener, churn: ChurnRate) -> None:
        self.inner = inner
        self.churn = churn

    async def accept(self) -> trio.abc.Stream:
        """The next connection, in its turn. Cancelled while waiting for a connection or for
        the turn, nothing is accepted or taken; while accepting, as `inner.accept`."""
        await self.wait_for_connection()
        await self.churn.wait()
        return await self.inner.accept()

    async def wait_for_connection(self) -> None:
        """Until the listening socket has a connection to accept (or is closed). Cancelled,
        nothing is left behind (the connection, if any, stays queued)."""
        await trio.lowlevel.wait_readable(socket_of(self.inner))

    async def aclose(self) -> None:
        """Close the listening socket (cancelled, it is closed all the same)."""
        await self.inner.aclose()


def paced(listeners: list[Listener], churn: ChurnRate) -> list[PacedListener]:
    """Each of `listeners`, accepting in `churn`'s turns."""
    return [PacedListener(listener, churn) for listener in listeners]
