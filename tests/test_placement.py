"""The other placement of a late frame (duplexd/_uplink/placement.py): its reference, and
when it is kept. AEC3 on real echo: tests/test_echo.py."""

from __future__ import annotations

import numpy as np

from duplexd._uplink.placement import SOONER_MS, Placement, RunRule
from duplexd._uplink.ring import SampleRing

RATE = 16_000


def ramp(start: int, length: int) -> np.ndarray:
    """A reference whose sample i is i, but for a gap (silence as sent) at [70, 100)."""
    x = np.arange(start, start + length, dtype=np.float32)
    x[(x >= 70) & (x < 100)] = 0.0
    return x


def steady(start: int, length: int) -> np.ndarray:
    """A reference whose sample i is i."""
    return np.arange(start, start + length, dtype=np.float32)


def test_a_frame_the_player_played_on_is_moved_back_onto_the_run() -> None:
    # placed after a 30-sample gap, at 100 (sent late); the player played it on, from 70
    fork = Placement(RATE, boundary=70, shift=-30)
    assert list(fork.segment(ramp, 60, 20)) == [*range(60, 70), *range(100, 110)]
    assert list(fork.segment(ramp, 0, 50)) == list(ramp(0, 50))  # (before it: as placed)


def test_a_frame_the_player_played_after_a_gap_is_moved_later() -> None:
    # placed on at 100; the player ran dry and played it from 130
    fork = Placement(RATE, boundary=100, shift=30)
    assert list(fork.segment(steady, 90, 50)) == [*range(90, 100), *[0.0] * 30, *range(100, 110)]
    assert list(fork.segment(steady, 140, 5)) == list(range(110, 115))


def test_the_other_placement_is_kept_only_if_it_leaves_half_the_echo_or_less() -> None:
    frame = RATE // 100
    fork = Placement(RATE, boundary=0, shift=-320)
    assert fork.verdict(0) is None  # nothing heard yet
    assert fork.verdict(1 << 40) is False  # ... and nothing to go by
    fork.energy[:] = [1.0, 0.5]
    assert fork.verdict(1 << 40) is True
    fork.energy[:] = [1.0, 0.6]
    assert fork.verdict(1 << 40) is False
    quiet = np.zeros(frame, dtype=np.float32)
    loud = np.full(frame, 0.1, dtype=np.float32)
    out = np.full(frame, 0.01, dtype=np.float32)
    fork = Placement(RATE, boundary=0, shift=-320)
    for _ in range(30):  # 300 ms of reference with sound: decided
        got = fork.process(quiet, 0, loud, loud, out)
        assert got.shape == out.shape and float(got @ got) <= float(out @ out)  # the quieter
    assert fork.verdict(0) is not None


def test_the_reference_ring_moves_a_run_either_way() -> None:
    ring = SampleRing(64)
    ring.write(0, np.arange(1, 41, dtype=np.float32))  # samples 1..40 at [0, 40)
    # the run from 30 on moved 5 later: silence where it began
    assert ring.move(30, 40, 5) == 45
    assert list(ring.read(25, 20, 45)) == [*range(26, 31), *[0.0] * 5, *range(31, 41)]
    # ... and 5 earlier again: silence where it ended
    assert ring.move(35, 45, -5) == 40
    assert list(ring.read(25, 20, 45)) == [*range(26, 41), *[0.0] * 5]
    assert list(ring.read(-30, 4, 40)) == [0.0] * 4  # (before what the ring holds: silence)
    # moved far past what it holds: the samples there, silence before them, nothing more
    assert ring.move(30, 40, 10**12) == 40 + 10**12
    assert list(ring.read(10**12 + 26, 14, 40 + 10**12)) == [0.0] * 4 + [*range(31, 41)]


def test_a_new_run_of_a_client_without_reports_is_also_tried_sooner() -> None:
    """Where else the player may have played a frame (boundary from the run's end, shift): a
    frame 60 ms late, which the rule puts after a gap: played on (tried whether or not the
    client reports); a new run 210 ms after the last one's end: `SOONER_MS` sooner, only for a
    client that does not report PLAYED (one that does says where each run played); a new run
    20 ms after the last one's end (a 10 ms buffer): 20 ms sooner, never before that end; a
    frame on time: nowhere else."""
    ms = RATE // 1000
    sooner = round(SOONER_MS * ms)
    rule = RunRule(RATE, 40.0)
    assert rule.other(60 * ms, reported=True) == (0, -60 * ms)  # (on, where the rule put a gap)
    assert rule.other(210 * ms, reported=True) is None
    assert rule.other(210 * ms, reported=False) == (210 * ms - sooner, -sooner)
    assert rule.other(0, reported=False) is None
    rule = RunRule(RATE, 10.0)  # (a player whose buffer is 10 ms: 20 ms late is a new run)
    assert rule.other(20 * ms, reported=False) == (0, -20 * ms)


def test_a_frame_at_the_buffers_edge_continues_its_run_as_the_one_before_did() -> None:
    """Live (seed 196 of bench/results/aec-edge/): a frame sent 39.9 ms late (639 samples: on,
    at the edge of a 40 ms buffer) and the next one 0.5 ms later still (647: a new run after a
    gap, before), which the player played on. At the edge the rule leans to "on": up to a tick
    past the buffer, for a frame no more than a tick later than the run's last one; a frame
    past the edge after one on time, or more than a tick later than the last, or past a tick
    beyond the buffer, still starts a new run."""
    tick = RATE // 100
    rule = RunRule(RATE, 40.0)
    assert rule.place(0) and rule.place(639)
    assert rule.place(647)  # (as late as the one before: on)
    assert rule.other(647, reported=False) is None  # (on: no new run to try sooner)
    assert rule.place(640 + tick)  # (still within a tick of the last and of the buffer)
    assert not rule.place(640 + tick + 1)  # (past a tick beyond the buffer)
    rule = RunRule(RATE, 40.0)
    assert rule.place(0) and not rule.place(647)  # (past the edge after a frame on time)
    rule = RunRule(RATE, 40.0)
    assert rule.place(500) and not rule.place(500 + tick + 1)  # (a tick later than the last)
