"""The move from which a run's first PLAYED report moves the echo canceller's reference
(follow.py): learned from how much the client's reports scatter within a run."""

from __future__ import annotations

import numpy as np
import pytest

from duplexd._uplink.follow import (
    FOLLOW_LEAST_MS,
    FOLLOW_MOST_MS,
    SCATTER_LEAST,
    SCATTER_REPORTS,
    SCATTER_TIMES,
    FollowRule,
)

pytestmark = pytest.mark.unit
RATE = 16_000
LEAST = FOLLOW_LEAST_MS * RATE / 1000
MOST = FOLLOW_MOST_MS * RATE / 1000


def test_exact_reports_are_followed_from_the_least_once_enough_are_known() -> None:
    rule = FollowRule(RATE)
    rule.add(700.0, run_first=True)
    for k in range(SCATTER_LEAST):
        assert rule.threshold == MOST  # (not known yet: as before)
        rule.add(700.0 + 0.01 * (k % 2), run_first=False)
    assert rule.threshold == LEAST


def test_a_real_move_within_a_run_and_a_run_first_report_do_not_count_as_scatter() -> None:
    rule = FollowRule(RATE)
    for _ in range(SCATTER_REPORTS):
        rule.add(700.0, run_first=False)
    rule.add(1372.0, run_first=False)  # (the player ran dry and refilled: 42 ms)
    rule.add(1380.0, run_first=True)  # (a new run, 0.5 ms on)
    assert rule.threshold == LEAST


@pytest.mark.parametrize("scatter_ms", [0.05, 0.2, 1.0])
def test_reports_that_scatter_are_followed_from_a_few_times_their_steps(
    scatter_ms: float,
) -> None:
    """Within a run, reports off by up to `scatter_ms` (uniform): a run's first report is
    followed from `SCATTER_TIMES` the median step between two of them (about the 99th
    percentile of such a step: noise alone moves the reference about once in a hundred runs),
    never from less than the least nor more than the most (as before: a millisecond's scatter
    crosses it a fifth of the time)."""
    rng = np.random.default_rng(7)
    rule = FollowRule(RATE)
    noise = rng.uniform(-scatter_ms, scatter_ms, SCATTER_REPORTS + 1) * RATE / 1000
    for x in noise:
        rule.add(700.0 + x, run_first=False)
    steps = np.sort(np.abs(np.diff(noise)))
    expected = min(max(SCATTER_TIMES * float(steps[len(steps) // 2]), LEAST), MOST)
    assert rule.threshold == pytest.approx(expected)
    assert (rule.threshold == LEAST) == (scatter_ms == 0.05)
    assert (rule.threshold == MOST) == (scatter_ms == 1.0)
    if rule.threshold < MOST:  # (noise alone: the share of steps that would be followed)
        assert float(np.mean(steps >= rule.threshold)) <= 0.05
