"""What the machine took from a run: CPU time the hypervisor stole from each vCPU, and whether
the daemon-wide stalls the clients saw came with it.

A guest's kernel counts, per vCPU, the time the hypervisor ran something else while that vCPU
had work (`steal` in /proc/stat, in USER_HZ ticks: 10 ms). On a shared VM a stall of every
session at once (each player runs dry at the same moment) may be the daemon's, or the
machine's: `StealWitness` reads the counters every 10 ms in a thread of the bench's own process
(on the clients' CPUs; ~100 reads a second) and `stalls` says, for each moment a quarter of the
sessions or more ran dry together, how much was stolen from the daemon's CPUs just before, and
whether the witness itself woke late then (the clients' CPU held up too: the whole machine, not
the daemon alone).
A guest without steal accounting reads 0 throughout: "none stolen" is then no proof.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, Final

EVERY_S: Final = 0.010
TICK_MS: Final = 1000.0 / os.sysconf("SC_CLK_TCK")  # /proc/stat counts in USER_HZ ticks (10 ms)
_STEAL: Final = 8  # `cpuN user nice system idle iowait irq softirq steal ...`
MAX_CHANGES: Final = 100_000  # (a run that steals every read keeps its first 1,000 s)
# A stall: this share of the sessions or more ran dry within `STALL_SPAN_S` of each other
STALL_SHARE: Final = 0.25
STALL_SPAN_S: Final = 0.060
# ... and it came with the machine's theft if this much was stolen from a daemon CPU in the
# `STALL_LOOKBACK_S` before the first underrun (an underrun is seen when the late frame comes,
# at the stall's end)
STALL_STOLEN_MS: Final = 10.0
STALL_HELD_MS: Final = 10.0  # ... with the clients' CPU held if the witness woke this late then
LATE_MS: Final = 5.0  # the witness's wake-ups this late are kept; a daemon pause this long counts
STALL_LOOKBACK_S: Final = 0.250


def read_steal_ticks() -> dict[int, int]:
    """{cpu: steal ticks so far} from /proc/stat ({} where there is none)."""
    out: dict[int, int] = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3].isdigit():
                    fields = line.split()
                    out[int(fields[0][3:])] = int(fields[_STEAL])
    except (OSError, IndexError, ValueError):
        return {}
    return out


class StealWitness:
    """Samples every vCPU's steal counter from `start` to `stop` (`time.monotonic` clock)."""

    def __init__(self, every_s: float = EVERY_S) -> None:
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at = self._stopped_at = 0.0
        self._first: dict[int, int] = {}
        self._last: dict[int, int] = {}
        self.changes: list[tuple[float, int, float]] = []  # (when, cpu, ms stolen since read)
        self.late: list[tuple[float, float]] = []  # (when, ms) it woke `LATE_MS` late or more

    def start(self) -> None:
        self._started_at = time.monotonic()
        self._first = self._last = read_steal_ticks()
        self._thread = threading.Thread(target=self._run, name="steal-witness", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic()
        while not self._stop.is_set():
            deadline += self._every_s
            self._stop.wait(max(0.0, deadline - time.monotonic()))
            now, ticks = time.monotonic(), read_steal_ticks()
            if (late_s := now - deadline) >= LATE_MS / 1000:
                if len(self.late) < MAX_CHANGES:
                    self.late.append((now, 1000 * late_s))
                deadline = now  # (no catching up)
            for cpu, n in ticks.items():
                d = n - self._last.get(cpu, n)
                if d > 0 and len(self.changes) < MAX_CHANGES:
                    self.changes.append((now, cpu, d * TICK_MS))
            self._last = ticks or self._last

    def stop(self) -> None:
        if not self._stop.is_set():
            self._stopped_at = time.monotonic()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)

    def stolen_ms(self) -> dict[int, float]:
        """Per vCPU, ms stolen between `start` and `stop`."""
        return {cpu: (self._last.get(cpu, n) - n) * TICK_MS for cpu, n in self._first.items()}

    def stolen_between(self, t0: float, t1: float, cpus: Iterable[int] | None = None) -> float:
        """The most stolen from any one of `cpus` (all: None) between t0 and t1 (ms)."""
        want = None if cpus is None else set(cpus)
        per: dict[int, float] = {}
        for when, cpu, ms in self.changes:
            if t0 <= when <= t1 and (want is None or cpu in want):
                per[cpu] = per.get(cpu, 0.0) + ms
        return max(per.values(), default=0.0)

    def summary(
        self,
        underruns: Sequence[tuple[float, Hashable]],
        sessions: int,
        daemon_cpus: Iterable[int] | None,
    ) -> dict[str, Any]:
        """The run's theft per vCPU and its worst 100 ms on the daemon's CPUs, and its
        daemon-wide stalls (`underruns`: (time, session) of each, see `stalls`): each with its
        size (sessions run dry together) and what was stolen from the daemon's CPUs (all of
        them if not pinned) just before."""
        cpus = None if daemon_cpus is None else sorted(daemon_cpus)
        found = stalls(underruns, sessions)
        stolen = [
            self.stolen_between(at - STALL_LOOKBACK_S, at + STALL_SPAN_S, cpus) for at, _ in found
        ]
        per_cpu = self.stolen_ms()  # ({} where /proc/stat could not be read: n/a, not 0)
        held = [longest_near(self.late, at) for at, _ in found]
        return {
            "stolen_ms": per_cpu,
            "daemon_cpus_stolen_ms": sum(
                ms for cpu, ms in per_cpu.items() if cpus is None or cpu in cpus
            )
            if per_cpu
            else math.nan,
            "daemon_cpus_worst_100ms_stolen_ms": self._worst(0.1, cpus),
            "stalls": len(found),
            "stalls_with_theft": sum(ms >= STALL_STOLEN_MS for ms in stolen),
            "stall_at": [at for at, _ in found],  # (time.monotonic())
            "window": [self._started_at, self._stopped_at],  # (time.monotonic())
            "stall_sizes": [n for _, n in found],
            "stall_stolen_ms": stolen,
            "stalls_clients_cpu_held": sum(ms >= STALL_HELD_MS for ms in held),
            "stall_witness_late_ms": held,
        }

    def _worst(self, span_s: float, cpus: Iterable[int] | None) -> float:
        """The most stolen from any one of `cpus` (all: None) within `span_s` (ms): a window
        sliding over the changes, which come in time order."""
        want = None if cpus is None else set(cpus)
        worst = 0.0
        for cpu in {c for _, c, _ in self.changes if want is None or c in want}:
            mine = [(when, ms) for when, c, ms in self.changes if c == cpu]
            total, lo = 0.0, 0
            for when, ms in mine:
                total += ms
                while mine[lo][0] < when - span_s:
                    total -= mine[lo][1]
                    lo += 1
                worst = max(worst, total)
        return worst


def longest_near(events: Sequence[tuple[float, float]], at: float) -> float:
    """The largest of the (time, ms) `events` around a stall seen at `at`: from
    `STALL_LOOKBACK_S` before it to `STALL_SPAN_S` after (0: none)."""
    return max(
        (ms for when, ms in events if at - STALL_LOOKBACK_S <= when <= at + STALL_SPAN_S),
        default=0.0,
    )


def stalls(underruns: Sequence[tuple[float, Hashable]], sessions: int) -> list[tuple[float, int]]:
    """(first underrun's time, sessions) of each group of underruns (time, session) within
    `STALL_SPAN_S` of the group's first in which `STALL_SHARE` of the sessions or more (and at
    least 2) ran dry: a session that ran dry twice counts once."""
    need = max(2, round(STALL_SHARE * sessions))
    out: list[tuple[float, int]] = []
    ordered = sorted(underruns, key=lambda u: u[0])
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1][0] - ordered[i][0] <= STALL_SPAN_S:
            j += 1
        who = len({s for _, s in ordered[i : j + 1]})
        if who >= need:
            out.append((ordered[i][0], who))
            i = j + 1
        else:
            i += 1
    return out


# duplexd/_ops/collector.py logs each full collection (`at`: when it ended) and each sweep of the
# frozen set (logged as it ends: `ts`), both with `pause_ms`
GC_EVENTS: Final = ("full garbage collection", "garbage swept")


def daemon_pauses(log_path: str) -> list[tuple[float, float]] | None:
    """(time.monotonic(), ms) of each full garbage collection or sweep a daemon logged in its
    JSON log (its wall clock: the same machine's, mapped onto this process's monotonic one);
    None if the log cannot be read (not: "none happened")."""
    offset = time.time() - time.monotonic()
    out: list[tuple[float, float]] = []
    try:
        with open(log_path, errors="replace") as f:
            for line in f:
                if not any(event in line for event in GC_EVENTS):
                    continue
                try:
                    record = json.loads(line)
                    if record.get("event") in GC_EVENTS:
                        at = float(record.get("at", record["ts"]))
                        out.append((at - offset, float(record["pause_ms"])))
                except (ValueError, KeyError, TypeError):
                    continue
    except OSError:
        return None
    return out


def attach_pauses(machine: dict[str, Any], pauses: Sequence[tuple[float, float]] | None) -> None:
    """Add to a run's `machine` (`StealWitness.summary`) the daemon's full garbage
    collections during it (`pauses`: `daemon_pauses`; None: unknown, the figures n/a) and the
    longest one at each stall."""
    if pauses is None:
        machine.update(daemon_gc_pauses_ms=None, daemon_gc_longest_ms=math.nan)
        machine.update(stall_gc_pause_ms=None, stalls_with_gc=math.nan)
        return
    t0, t1 = machine["window"]
    run = [(when, ms) for when, ms in pauses if t0 <= when <= t1]
    machine["daemon_gc_pauses_ms"] = [ms for _, ms in run]
    machine["daemon_gc_longest_ms"] = max((ms for _, ms in run), default=0.0)
    at_stalls = [longest_near(run, at) for at in machine["stall_at"]]
    machine["stall_gc_pause_ms"] = at_stalls
    machine["stalls_with_gc"] = sum(ms >= LATE_MS for ms in at_stalls)
