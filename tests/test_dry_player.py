"""A player that ran dry within a run, reported (echo.py, `EchoCanceller.note_played`): the frame
it played after a gap moves in the reference, and so does the next run it played on from it. And
the mirror: a late frame the reference has after a gap, played on, is settled by the report.
AEC3 on real echo, as in tests/test_echo.py."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from test_echo import FRAME, QUIET, RATE, agent_voice, erle, played_by, room_echo, run

from bench.rooms import db, noise
from duplexd._uplink.echo import PLAYER_BUFFER_MS, EchoCanceller
from duplexd._uplink.placement import Placement

REPORT_EVERY = 10  # frames: the bench's player reports every 200 ms of a run, and its firsts


def edge_frame(at: int) -> tuple[EchoCanceller, np.ndarray, np.ndarray, int]:
    """The agent's voice in the rt60-300 room, played by a 40 ms player; frame `at` is sent
    39.8 ms late (within the buffer: the reference plays it on), but reaches the client half a
    ms later than that, after the player's queue ran dry: it plays after a gap, 40 ms after it
    came, and the frames after it, sent 41 ms late (a new run in the reference, as sent), play
    on from it, 0.7 ms sooner than the reference has them. The player reports PLAYED on each
    run's first frame and every 10th. (The canceller, the echo, what it left of it, where frame
    `at + 1` played.)"""
    ref = agent_voice()
    n = len(ref) // FRAME
    sent = [i * 0.020 + (0.0398 if i == at else 0.041 if i > at else 0.0) for i in range(n)]
    plays = played_by([t + (0.0005 if i == at else 0.0) for i, t in enumerate(sent)], 0.040)
    assert PLAYER_BUFFER_MS == 40.0 and firsts_of(plays) == {at}  # (the rest played on)
    ec, echo, out = reported(ref, sent, plays)
    return ec, echo, out, round(plays[at + 1] * RATE)


def firsts_of(plays: np.ndarray) -> set[int]:
    """The frames the player played after a gap (each run's first but the first)."""
    return {i for i in range(1, len(plays)) if plays[i] - plays[i - 1] > 0.020 + 1e-9}


def reported(
    ref: np.ndarray, sent: list[float], plays: np.ndarray
) -> tuple[EchoCanceller, np.ndarray, np.ndarray]:
    """`ref`'s frame i sent at `sent[i]` and played at `plays[i]` in the rt60-300 room, the
    player reporting PLAYED on each run's first frame and every 10th, 5 ms after it played:
    (the canceller, the echo, what it left of it)."""
    n, firsts = len(plays), firsts_of(plays)
    total = len(ref) + 2 * RATE
    echo = room_echo(ref, plays, total)
    frames = itertools.count()
    unplayed = [0]  # the first frame not played yet

    def report(ec: EchoCanceller) -> None:
        now = next(frames) * 0.020
        while (j := unplayed[0]) < n and plays[j] + 0.005 <= now:
            if j % REPORT_EVERY == 0 or j in firsts:
                ec.note_played(now, (1, j), 0, round(plays[j] * 1e6))
            unplayed[0] += 1

    ec, out = run(ref, echo + noise(total, QUIET), sent=sent, each_frame=report)
    return ec, echo, out


@pytest.mark.parametrize("at", [90, 210, 225])
def test_a_frame_played_after_the_player_ran_dry_moves_with_the_run_played_on_from_it(
    at: int,
) -> None:
    """Live, a frame sent 39.8 ms late that the bench's player played after a gap, the reference
    on (seed 38 of `bench/results/aec-runs/`): the report on it moved the whole reference 42
    ms later, the next report, on the next run (which the reference had as sent, and the
    player had played on from that frame) 42 ms back; its onset leaked, a false barge-in
    (four of the eight left in 144 replayed sessions). Only the frame's run moves now, and the
    next run with it: the player played it on, 0.7 ms sooner than sent, where AEC3's filter
    (aligned to a sample) would leak its onset. Over the 600 ms from the next run's start:
    4.3-19.5 dB taken out before at these frames (the loudest 50 ms left at -43..-29 dBFS, the
    echo at -27), 35.2-38.6 now (-68.5 at most)."""
    ec, echo, out, start = edge_frame(at)
    assert ec.playout_moves == 1
    assert erle(echo, out, slice(start, start + 6 * RATE // 10)) >= 24.0
    assert max(db(out[k : k + 800]) for k in range(start, start + 6 * RATE // 10, 800)) < -55.0


def sends(late_after_s: float, *, frames: int = 20) -> EchoCanceller:
    """Frames 0-9 sent on time, frame 10 39.8 ms late (the reference plays it on), the rest
    `late_after_s` late (a new run after a gap); frame 0 reported played 40 ms after sending."""
    ec = EchoCanceller(t0=0.0)
    for i in range(frames):
        late = 0.0398 if i == 10 else late_after_s if i > 10 else 0.0
        ec.add_reference(i * 0.020 + late, np.full(FRAME, 0.1, dtype=np.float32), (1, i))
    ec.note_played(0.1, (1, 0), 0, 40_000)
    return ec


@pytest.mark.unit
@pytest.mark.parametrize(
    ("late_after_s", "next_before", "next_after"), [(0.041, 3520, 4165), (0.100, 5120, 5120)]
)
def test_the_next_run_moves_only_if_the_player_played_on_into_it(
    late_after_s: float, next_before: int, next_after: int
) -> None:
    """Frame 10 played 40.3 ms later than the reference had it (645 samples): it moves, and the
    frames after it move with it when the player played on into them. Sent 41 ms late, within a
    tick of the buffer's edge and as late as frame 10, they continue its run (placement.py's
    `RunRule`) and move with it, to 11 samples sooner than where they were sent (as before the
    rule leaned to "on", when they were a run of their own that moved to where frame 10 then
    ended); sent 100 ms late, the player started them after a gap: they stay."""
    ec = sends(late_after_s)
    placed = {(1, i): ec.placed.at((1, i)) for i in range(20)}
    assert placed[(1, 10)] == 3200 and placed[(1, 11)] == next_before
    assert next_after == round((0.220 + late_after_s) * RATE) - (11 if late_after_s < 0.1 else 0)
    ec.note_played(0.3, (1, 10), 0, round((0.200 + 0.040 + 0.0403) * 1e6))
    assert ec.placed.at((1, 10)) == 3200 + 645
    assert ec.placed.at((1, 11)) == next_after
    assert ec.placed.at((1, 19)) == placed[(1, 19)] + next_after - next_before
    assert ec.placed.at((1, 9)) == placed[(1, 9)] and ec.playout_ms == 0.0
    # (the next report on that run agrees with where it is now: nothing moves again)
    ec.note_played(0.4, (1, 15), 0, round((ec.placed.at((1, 15)) / RATE + 0.040) * 1e6))
    assert ec.playout_moves == 1


@pytest.mark.unit
def test_the_last_run_moved_ends_later_and_the_next_frame_plays_on() -> None:
    ec = sends(0.0, frames=11)
    ec.note_played(0.3, (1, 10), 0, round((0.200 + 0.040 + 0.0403) * 1e6))
    assert ec.placed.at((1, 10)) == 3200 + 645
    ec.add_reference(0.220 + 0.0398, np.full(FRAME, 0.1, dtype=np.float32), (1, 11))
    assert ec.placed.at((1, 11)) == 3200 + 645 + FRAME  # (it was sent before the moved end)


@pytest.mark.unit
def test_a_report_from_a_clock_far_off_moves_the_reference_only_as_far_as_it_can() -> None:
    """PLAYED's clock is the client's: a report 10^9 s later than the one before (a broken or
    hostile client) is not a player that ran dry; the reference is not rewritten that far on
    (nor silence written, or allocated, for all of it): it moves as far as the reports may
    move it (`_move`: up to half the ring), as before."""
    ec = sends(0.041)
    before = ec.placed.at((1, 12))
    ec.note_played(0.3, (1, 12), 0, 10**15)
    assert ec.playout_ms == 1000 * (ec.placed.cap // 2) / RATE
    assert ec.placed.at((1, 12)) == before


def played_on(dry: bool) -> tuple[EchoCanceller, np.ndarray, np.ndarray, int]:
    """The mirror of `edge_frame`: the agent's voice in the rt60-300 room, frame 90 on sent 42
    ms late, past the reference's buffer (`PLAYER_BUFFER_MS`: a new run after a gap), but
    played on by a 50 ms player (the browser client's); so frame 90 is tried both ways
    (placement.py). Reported PLAYED as in `edge_frame`: frame 100's report says it played 42
    ms sooner than the reference has it. `dry`: frame 101 reaches the client 45 ms late, after
    the player ran dry (live, seed 127: that report came next), and the frames after it play
    on from it. (The canceller, the echo, what it left of it, where frame 100 played.)"""
    ref = agent_voice()
    n, at = len(ref) // FRAME, 90
    sent = [i * 0.020 + (0.042 if i >= at else 0.0) for i in range(n)]
    plays = played_by(
        [t + (0.045 if dry and i == at + 11 else 0.0) for i, t in enumerate(sent)], 0.050
    )
    assert firsts_of(plays) == ({at + 11} if dry else set())
    ec, echo, out = reported(ref, sent, plays)
    return ec, echo, out, round(plays[at + 10] * RATE)


@pytest.mark.parametrize("dry", [False, True])
def test_a_report_past_a_frame_tried_both_ways_says_which_way_it_played(dry: bool) -> None:
    """Live (seed 127 of `bench/results/aec-runs/dry/`): a frame 42 ms late, which the reference
    put after a gap and the player played on, was being tried both ways when a report on a
    later frame of its run said 42.25 ms sooner. That moved the whole reference (`_move`,
    dropping the try), the next report (the player ran dry there) moved it back, and the onset
    after leaked: a false barge-in (-32 dBFS left where AEC3 leaves -60, replayed). The report
    settles the try now: the placement tried is kept, with its AEC3, as its verdict keeps it.
    Here, over the 600 ms from frame 100: 27.1-27.6 dB taken out, the
    loudest 50 ms at -51 dBFS (at the main tree before: not kept, 37.7-38.8 dB; the session's
    AEC3 had learned longer than the one tried, and here nothing leaked)."""
    ec, echo, out, start = played_on(dry)
    assert (ec.placements_tried, ec.placements_moved) == (1, 1)
    assert ec.placed.at((1, 90)) == ec.placed.at((1, 89)) + FRAME  # (played on)
    span = range(start, start + 6 * RATE // 10, 800)
    assert erle(echo, out, slice(span.start, span.stop)) >= 24.0
    assert max(db(out[k : k + 800]) for k in span) < -45.0


def forked(shift_ms: float) -> EchoCanceller:
    """`sends(0.041)` with frame 11 on tried placed `shift_ms` off (as `EchoCanceller._try`)."""
    ec = sends(0.041)
    boundary = ec.placed.at((1, 11))
    assert boundary is not None
    ec._fork = Placement(RATE, boundary, round(shift_ms * RATE / 1000))
    return ec


@pytest.mark.unit
@pytest.mark.parametrize(("reported_ms", "moves"), [(-41.0, -656), (-2.0, 0), (20.0, 320)])
def test_a_frame_played_on_or_after_the_gap_settles_the_try(reported_ms: float, moves: int) -> None:
    """Frame 11 sent 41 ms late (a new run in the reference) and tried played on, 41 ms
    sooner: a report on frame 15 that says 41 ms sooner keeps that placement at once (frame 15
    moves 656 samples sooner); one that says where the reference has it (within
    `PLAYOUT_NEW_PATH_MS`) drops the try, and nothing moves; one that says 20 ms later (the
    player ran dry) moves that run, as before, and drops it too."""
    ec = forked(-41.0)
    placed = {(1, i): ec.placed.at((1, i)) for i in range(20)}
    at = placed[(1, 15)]
    assert at is not None
    ec.note_played(0.4, (1, 15), 0, round((at / RATE + 0.040 + reported_ms / 1000) * 1e6))
    assert ec.placed.at((1, 15)) == at + moves and ec.placed.at((1, 10)) == placed[(1, 10)]
    assert ec._fork is None and ec.placements_moved == int(moves < 0)
