"""The presence check's verdicts (presence.py): when one is due, and what its scores decide."""

from __future__ import annotations

import pytest

from duplexd._uplink.presence import (
    CONFIRM_S,
    ECHO_SCORE,
    NO_ECHO_RUNS,
    PRESENCE_EVERY_S,
    PRESENCE_MIN_S,
    SETTLED_EVERY,
    Presence,
)

pytestmark = pytest.mark.unit

RATE = 16_000
EVERY = round(PRESENCE_EVERY_S * RATE)  # 1,600 samples: 100 ms


def test_a_verdict_every_100_ms_on_the_last_second_then_every_300_once_known() -> None:
    p = Presence(RATE)
    # none before a quarter second of uplink is heard
    assert [p.window(EVERY) for _ in range(2)] == [None, None]
    assert PRESENCE_MIN_S * RATE <= 3 * EVERY
    assert p.window(EVERY) == 3 * EVERY  # the whole of what was heard, up to the second
    assert [p.window(EVERY) for _ in range(9)][-1] == RATE  # (never more than the second)
    p.verdict(ECHO_SCORE)  # known now: a third as often
    assert [p.window(EVERY) for _ in range(SETTLED_EVERY)] == [None, None, RATE]


def test_the_first_verdict_says_no_echo_sooner_than_the_later_ones() -> None:
    p = Presence(RATE)
    assert p.verdict(5.5) is False and p.found is None  # (over the first verdict's 5)
    assert p.verdict(4.9) is False and p.found is False
    p = Presence(RATE)
    assert p.verdict(ECHO_SCORE) is True and p.found is True
    for _ in range(NO_ECHO_RUNS - 1):
        assert p.verdict(5.9) is False and p.found is True
    assert p.verdict(7.0) is False and p.found is True  # (one over 6 starts the count again)
    for _ in range(NO_ECHO_RUNS):
        p.verdict(5.9)
    assert p.found is False


def test_an_echo_after_none_counts_only_once_found_over_half_a_second_in_a_row() -> None:
    p = Presence(RATE)
    p.window(RATE)
    p.verdict(1.0)  # headphones: no echo
    assert p.found is False
    confirm = round(CONFIRM_S * RATE)
    p.window(EVERY)
    assert p.verdict(12.0) is None and p.found is False  # suspected: the next in 100 ms
    assert p.window(EVERY) == RATE
    assert p.verdict(9.0) is False  # not in a row: suspected afresh from the next one
    heard = 0
    p.window(EVERY)
    assert p.verdict(12.0) is None
    while heard < confirm - EVERY:
        assert p.window(EVERY) is not None  # (100 ms apart meanwhile)
        heard += EVERY
        assert p.verdict(12.0) is None
    p.window(EVERY)
    assert p.verdict(12.0) is True and p.found is True


def test_a_moved_path_and_a_window_too_quiet_to_judge_forget_a_suspected_echo() -> None:
    p = Presence(RATE)
    p.window(RATE)
    p.verdict(1.0)
    for forget in (p.unsure, p.restart):
        p.window(EVERY)
        assert p.verdict(12.0) is None
        forget()
        p.window(3 * EVERY)
        for _ in range(round(CONFIRM_S * RATE) // EVERY):
            p.window(EVERY)
            assert p.verdict(12.0) is None  # suspected afresh: half a second again
        p.window(EVERY)
        p.verdict(1.0)
        assert p.found is False
    assert p.heard < RATE  # (restart: what was heard before is on the old path)
