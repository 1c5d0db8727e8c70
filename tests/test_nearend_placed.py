"""The near-end check's `GUARD_MS` where the client reports playback (nearend.py, placed.py).

Nothing is judged for `GUARD_MS` after the agent's voice comes back: a run the player began
sooner than its sends say puts its echo before its reference, and that echo over a reference
just begun reads as the user. A run whose first frame a PLAYED report placed has its reference
where its echo is: it is judged from its first frame, so a user who starts talking just as
the agent resumes is heard over the echo at once, not after the guard. AEC3 on real echo in
the rt60-300 room, as in tests/test_echo.py."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from test_echo import FRAME, QUIET, RATE, agent_voice, room_echo, run, user_voice
from test_nearend import _onset

from bench.rooms import db, noise
from duplexd._uplink import nearend
from duplexd._uplink.echo import EchoCanceller
from duplexd._uplink.nearend import GUARD_MS, HOLD_MS
from duplexd._uplink.placed import SENT_FRAMES, PlacedAudio

pytestmark = pytest.mark.integration

GAP_S = 0.5  # the reply's second sentence sent this much later: the reference comes back
REPORT_LATE_S = 0.010  # a report reaches the server this long after the sample played


def _resumed(
    *, shift_s: float, reports: bool, user_after_s: float | None, base_s: float = 0.043
) -> tuple[EchoCanceller, int, list[int]]:
    """The agent's two sentences, the second sent `GAP_S` after the first (a new run),
    played `base_s` after sending, the second run `shift_s` later still (negative: sooner); the
    user ("Wait, stop, ...") 10 dB over the echo from `user_after_s` after the second run's
    echo begins (None: nobody). `reports`: the player reports PLAYED on each run's first frame
    and every 10th, `REPORT_LATE_S` after it played. (The canceller, the first sample of the
    second run's echo in the uplink, `near_end.until` before each uplink frame.)"""
    ref = agent_voice()
    n = len(ref) // FRAME
    at = next(i for i in range(50, n) if db(ref[i * FRAME : (i + 1) * FRAME]) < -60.0)
    at = next(i for i in range(at, n) if db(ref[i * FRAME : (i + 1) * FRAME]) > -40.0)
    sent = [i * 0.020 + (GAP_S if i >= at else 0.0) for i in range(n)]
    plays = [sent[i] + base_s + (shift_s if i >= at else 0.0) for i in range(n)]
    total = len(ref) + round((GAP_S + 1.0) * RATE)
    echo = room_echo(ref, plays, total)
    back = round(plays[at] * RATE)  # (the room's direct path is on top of this)
    back += _onset(echo[back : back + RATE // 2])
    talk = np.zeros(total, dtype=np.float32)
    if user_after_s is not None:
        user = user_voice()
        user = user[_onset(user) :]
        begin = back + round(user_after_s * RATE)
        span = slice(begin, begin + len(user))
        level = db(echo[span]) + 10 - db(user)
        talk[span] = user[: len(talk[span])] * 10 ** (level / 20)
    frames = itertools.count()
    unplayed = [0]  # the first frame not played yet
    found: list[int] = []

    def each_frame(ec: EchoCanceller) -> None:
        found.append(ec.near_end.until)
        now = next(frames) * 0.020
        while reports and (j := unplayed[0]) < n and plays[j] + REPORT_LATE_S <= now:
            if j % 10 == 0 or j in (0, at):
                ec.note_played(now, (1, j), 0, round(plays[j] * 1e6))
            unplayed[0] += 1

    ec, _ = run(ref, echo + talk + noise(total, QUIET), sent=sent, each_frame=each_frame)
    return ec, back, found


@pytest.mark.parametrize("after_s", [0.02, 0.06, 0.10])
def test_a_user_who_starts_as_the_agent_resumes_is_heard_at_once_where_runs_are_reported(
    after_s: float,
) -> None:
    """The user starts 20-100 ms after the agent's voice comes back (its echo): with the run
    reported, the check finds them within 40 ms of their onset; without reports, not before
    the guard ends (what the barge-in waited for, live: 66-111 ms)."""
    hold = round(HOLD_MS * RATE / 1000)
    start = {}
    for reports in (True, False):
        _, back, found = _resumed(shift_s=0.0, reports=reports, user_after_s=after_s)
        onset = back + round(after_s * RATE)
        start[reports] = next(u for u in found if u > onset) - hold
    assert start[True] - onset <= round(0.040 * RATE), start[True] - onset
    assert start[False] - back >= round((GUARD_MS - 30) / 1000 * RATE), start[False] - back


@pytest.mark.parametrize("shift_ms", [-80.0, -60.0, -30.0, -2.0, 0.0, 2.0, 10.0, 30.0])
def test_a_reported_run_played_off_its_sends_is_never_the_user(shift_ms: float) -> None:
    """The run before played 123 ms after it was sent (the player's queue had grown), the run
    after the gap up to 80 ms sooner than that (43 ms after sending: the player's buffer and
    the network) or 30 ms later, reported: the report places it before its echo comes back,
    and no frame of the echo alone is found louder than it explains."""
    ec, _, _ = _resumed(shift_s=shift_ms / 1000, reports=True, user_after_s=None, base_s=0.123)
    assert ec.frames > 0 and ec.near_end.judging and ec.playout_moves == (shift_ms != 0.0)
    assert ec.near_end.frames == 0


def test_what_the_guard_is_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same run played 60 ms sooner (its echo 20 ms before the reference, which leads the
    echo by `ALIGN_LEAD_MS`) with no reports: the guard keeps its echo from being taken for
    the user (6 frames without it). (At 70-80 ms sooner it lets 13-18 frames through, where
    the reports above let none.)"""
    ec, _, _ = _resumed(shift_s=-0.060, reports=False, user_after_s=None, base_s=0.123)
    assert ec.near_end.frames == 0
    monkeypatch.setattr(nearend, "GUARD_MS", 0.0)
    ec, _, _ = _resumed(shift_s=-0.060, reports=False, user_after_s=None, base_s=0.123)
    assert ec.near_end.frames > 0


@pytest.mark.unit
def test_only_runs_a_report_placed_are_confirmed() -> None:
    """`PlacedAudio.confirmed`: samples of a run whose first frame a report placed, yes; of a
    run not reported, or spanning into one, no; a report on a frame within a run confirms
    nothing (it does not say where the run began)."""
    placed = PlacedAudio(RATE, 1 << 15, 40.0)
    voice = np.full(FRAME, 0.1, dtype=np.float32)
    for seq in range(5):  # run A: frames 0-4 at 0..1600
        placed.place(seq * FRAME, voice, (1, seq))
    for seq in range(5, 10):  # run B, after a gap: frames 5-9 at 4000..5600
        placed.place(4_000 + (seq - 5) * FRAME, voice, (1, seq))
    assert not placed.confirmed(0, FRAME)
    placed.confirm((1, 2))  # (not a run's first)
    assert not placed.confirmed(0, FRAME)
    placed.confirm((1, 0))
    assert placed.confirmed(0, FRAME) and placed.confirmed(3_000, 3_900)
    assert not placed.confirmed(3_900, 4_100) and not placed.confirmed(4_000, 4_100)
    placed.confirm((1, 5))
    assert placed.confirmed(3_900, 4_100) and placed.confirmed(5_000, 5_100)
    assert not placed.confirmed(-FRAME, 0)  # (before anything sent)


@pytest.mark.unit
def test_a_long_run_stays_confirmed_after_its_first_frame_is_forgotten() -> None:
    """A reply longer than the frames remembered (`SENT_FRAMES`, 8 s): its first frame is
    forgotten, and its run stays as that frame was reported."""
    for reported in (True, False):
        placed = PlacedAudio(RATE, 1 << 18, 40.0)
        voice = np.full(FRAME, 0.1, dtype=np.float32)
        placed.place(0, voice, (1, 0))
        if reported:
            placed.confirm((1, 0))
        for seq in range(1, SENT_FRAMES + 50):
            placed.place(seq * FRAME, voice, (1, seq))
        assert not placed.began_run((1, 0))  # (forgotten)
        late = (SENT_FRAMES + 10) * FRAME
        assert placed.confirmed(late, late + FRAME) is reported
        assert not placed.confirmed(0, FRAME)  # (before the frames remembered)
