"""Cheap latency histograms for the hot path (pacing error, latencies).

`record` is one multiply, one `min` and one list increment: fine for every frame of every
session. Percentiles are read from fixed-width buckets (25 µs up to 100 ms by default; accurate
to a bucket), with an overflow bucket; the exact maximum is kept aside.
"""

from __future__ import annotations

from typing import Any

BUCKET_S = 25e-6
BUCKETS = 4000  # 100 ms / 25 us


class Histogram:
    """Non-negative durations in seconds; negative values are recorded as 0."""

    __slots__ = ("_counts", "_inv_bucket", "bucket_s", "buckets", "count", "max_s", "sum_s")

    def __init__(self, bucket_s: float = BUCKET_S, buckets: int = BUCKETS) -> None:
        if bucket_s <= 0 or buckets < 1:
            raise ValueError("bucket_s and buckets must be positive")
        self.bucket_s = bucket_s
        self.buckets = buckets
        self._inv_bucket = 1 / bucket_s
        self._counts = [0] * (buckets + 1)
        self.count = 0
        self.sum_s = 0.0
        self.max_s = 0.0

    def record(self, value_s: float) -> None:
        if value_s < 0.0:
            value_s = 0.0
        self._counts[min(int(value_s * self._inv_bucket), self.buckets)] += 1
        self.count += 1
        self.sum_s += value_s
        if value_s > self.max_s:
            self.max_s = value_s

    def merge(self, other: Histogram) -> None:
        if (other.bucket_s, other.buckets) != (self.bucket_s, self.buckets):
            raise ValueError("can only merge histograms with the same buckets")
        for i, c in enumerate(other._counts):
            if c:
                self._counts[i] += c
        self.count += other.count
        self.sum_s += other.sum_s
        self.max_s = max(self.max_s, other.max_s)

    def counts_below(self, edges_s: list[float]) -> list[int]:
        """For each edge (ascending, in seconds): how many values fell in buckets wholly
        below it, i.e. a cumulative count accurate to a bucket (Prometheus `le` buckets).
        Edges past the last bucket count everything but the overflow bucket."""
        if not self.count:
            return [0] * len(edges_s)
        # buckets above the maximum's are empty: the walk costs O(max), not O(buckets)
        top = min(int(self.max_s * self._inv_bucket), self.buckets - 1) + 1
        counts = self._counts
        out: list[int] = []
        seen = start = 0
        for edge in edges_s:
            stop = max(start, min(int(edge * self._inv_bucket + 1e-9), top))
            seen += sum(counts[start:stop])  # C speed: no per-bucket Python loop
            start = stop
            out.append(seen)
        return out

    def percentile(self, q: float) -> float:
        """Upper edge of the bucket holding the q-th percentile (0 < q <= 100), in seconds."""
        if not 0 < q <= 100:
            raise ValueError("q must be in (0, 100]")
        if self.count == 0:
            return 0.0
        rank = q / 100 * self.count
        seen = 0
        for i, c in enumerate(self._counts):
            seen += c
            if seen >= rank:
                return self.max_s if i == self.buckets else min((i + 1) * self.bucket_s, self.max_s)
        return self.max_s

    def summary_ms(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "p50": round(self.percentile(50) * 1e3, 4),
            "p95": round(self.percentile(95) * 1e3, 4),
            "p99": round(self.percentile(99) * 1e3, 4),
            "max": round(self.max_s * 1e3, 4),
            "mean": round(self.sum_s / self.count * 1e3, 4) if self.count else 0.0,
        }


def pacing_histogram() -> Histogram:
    """10 µs buckets up to 20 ms: the resolution pacing errors need."""
    return Histogram(bucket_s=10e-6, buckets=2000)
