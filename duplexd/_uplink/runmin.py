"""The smallest of the last values added: the clock offsets' least delayed sample (the echo
canceller's pairing of the uplink and of PLAYED reports with the server clock)."""

from __future__ import annotations

import collections


class RunningMin:
    """The smallest of the last `count` values added (a monotonic queue: O(1) amortized)."""

    def __init__(self, count: int) -> None:
        self._count = count
        self._seen = 0
        self._queue: collections.deque[tuple[int, float]] = collections.deque()
        self.value: float | None = None  # None until a value was added

    def add(self, value: float) -> float:
        q = self._queue
        self._seen += 1
        while q and q[-1][1] >= value:
            q.pop()
        q.append((self._seen, value))
        while q[0][0] <= self._seen - self._count:
            q.popleft()
        self.value = q[0][1]
        return self.value
