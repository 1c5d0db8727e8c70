"""`bench.steal`: the stalls every session saw at once, and what the hypervisor stole then."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from bench.steal import (
    STALL_SPAN_S,
    StealWitness,
    attach_pauses,
    daemon_pauses,
    read_steal_ticks,
    stalls,
)


@pytest.mark.unit
def test_a_stall_is_a_quarter_of_the_sessions_running_dry_together() -> None:
    # 20 sessions: 5 of them dry within 60 ms make a stall; 4 do not; scattered ones never
    together = [(10.0 + 0.01 * i, i) for i in range(5)]
    four = [(20.0 + 0.01 * i, i) for i in range(4)]
    scattered = [(30.0 + 0.5 * i, i) for i in range(20)]
    assert stalls(together + four + scattered, sessions=20) == [(10.0, 5)]
    # a group is counted from its first underrun, and one stall's underruns are counted once
    # (20 sessions 7 ms apart: 9 within 60 ms of the first, 9 of the 10th, 2 left over)
    long = [(40.0 + 0.007 * i, i) for i in range(20)]
    assert STALL_SPAN_S == 0.060
    found = stalls(long, sessions=20)
    assert [n for _, n in found] == [9, 9]
    assert [at for at, _ in found] == pytest.approx([40.0, 40.063])
    # two sessions: both together is a stall (at least 2, however few the sessions) ...
    assert stalls([(5.0, "a"), (5.02, "b")], sessions=2) == [(5.0, 2)]
    assert stalls([(5.0, "a")], sessions=1) == []
    # ... but one session that ran dry twice in a row is one session
    assert stalls([(5.0, "a"), (5.035, "a")], sessions=2) == []
    assert stalls([(5.0, "a"), (5.01, "a"), (5.02, "b")], sessions=8) == [(5.0, 2)]


@pytest.mark.unit
def test_a_stall_with_theft_from_the_daemons_cpu_just_before_is_told_apart() -> None:
    w = StealWitness()
    # what the thread would have read: 30 ms stolen from CPU 0 just before the first stall,
    # 20 ms from CPU 1 (the clients') before the second, and 10 ms from CPU 0 long before
    w.changes = [(1.00, 0, 10.0), (9.90, 0, 20.0), (9.95, 0, 10.0), (19.95, 1, 20.0)]
    w.late = [(5.0, 30.0), (19.98, 18.0)]  # the witness itself: held up at the second stall
    w._first, w._last = {0: 0, 1: 0}, {0: 4, 1: 2}
    runs_dry = [(10.0 + 0.005 * i, i) for i in range(10)] + [
        (20.0 + 0.005 * i, i) for i in range(10)
    ]
    s = w.summary(runs_dry, sessions=10, daemon_cpus={0})
    assert s["stalls"] == 2 and s["stall_sizes"] == [10, 10]
    assert s["stall_stolen_ms"] == [30.0, 0.0]  # (CPU 1's theft is not the daemon's)
    assert s["stalls_with_theft"] == 1
    assert s["stall_witness_late_ms"] == [0.0, 18.0] and s["stalls_clients_cpu_held"] == 1
    assert s["stolen_ms"] == {0: 40.0, 1: 20.0} and s["daemon_cpus_stolen_ms"] == 40.0
    assert s["daemon_cpus_worst_100ms_stolen_ms"] == 30.0
    # not pinned: every CPU may be the daemon's
    s = w.summary(runs_dry, sessions=10, daemon_cpus=None)
    assert s["stall_stolen_ms"] == [30.0, 20.0] and s["daemon_cpus_stolen_ms"] == 60.0


@pytest.mark.integration
def test_the_witness_reads_this_machines_counters() -> None:
    ticks = read_steal_ticks()
    assert ticks and all(n >= 0 for n in ticks.values())  # one counter per vCPU (Linux)
    w = StealWitness(every_s=0.005)
    w.start()
    time.sleep(0.05)
    w.stop()
    assert set(w.stolen_ms()) == set(ticks)
    assert all(ms >= 0 for ms in w.stolen_ms().values())
    assert all(ms > 0 for _, _, ms in w.changes)
    assert all(ms >= 5.0 for _, ms in w.late)


@pytest.mark.unit
def test_the_daemons_garbage_collections_are_read_from_its_log_and_set_beside_the_stalls(
    tmp_path: Path,
) -> None:
    now_wall, now_mono = time.time(), time.monotonic()
    lines = [
        {"ts": 1.0, "event": "listening", "url": "ws://x"},
        {"ts": 2.0, "event": "full garbage collection", "at": now_wall - 0.10, "pause_ms": 18.5},
        {"ts": 3.0, "event": "full garbage collection", "at": now_wall - 5.0, "pause_ms": 2.0},
        {"ts": 4.0, "event": "full garbage collection", "at": now_wall + 99, "pause_ms": 40.0},
        {"ts": now_wall - 4.0, "event": "garbage swept", "collected": 3, "pause_ms": 7.5},
    ]
    log = tmp_path / "daemon.log"
    log.write_text(
        "\n".join(json.dumps(x) for x in lines) + "\nnot json: full garbage collection\n"
    )
    pauses = daemon_pauses(str(log))
    assert [ms for _, ms in pauses] == [18.5, 2.0, 40.0, 7.5]  # (a sweep is logged as it ends)
    assert pauses[0][0] == pytest.approx(now_mono - 0.10, abs=0.01)  # on the monotonic clock
    # a run from 10 s ago to now, with a stall just after the 18.5 ms collection (the last
    # one logged is after the run: not its)
    machine = {"window": [now_mono - 10, now_mono], "stall_at": [now_mono - 0.05, now_mono - 3]}
    attach_pauses(machine, pauses)
    assert machine["daemon_gc_pauses_ms"] == [18.5, 2.0, 7.5]
    assert machine["daemon_gc_longest_ms"] == 18.5
    assert machine["stall_gc_pause_ms"] == [18.5, 0.0] and machine["stalls_with_gc"] == 1
    # a log that cannot be read says nothing: n/a, not "no collection"
    assert daemon_pauses(str(tmp_path / "gone.log")) is None
    unknown = {"window": [0.0, 1.0], "stall_at": [0.5]}
    attach_pauses(unknown, None)
    assert math.isnan(unknown["daemon_gc_longest_ms"]) and math.isnan(unknown["stalls_with_gc"])
