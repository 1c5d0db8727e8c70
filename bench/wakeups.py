"""What one wake-up of an idle process costs in CPU, bare and under trio (the pacer's timer).

    taskset -c 0 python -m bench.wakeups [--periods-ms 0.5,2] [--n 4000] [--json PATH]

A process that sleeps and is woken pays for the wake-up itself (the kernel's, and on a VM the
hypervisor's: the idle CPU's exit, the timer's interrupt) before it does any work; a trio loop
adds its own round around it (the scheduler, the timerfd re-armed, epoll registrations). This
sleeps `--n` times to absolute deadlines `--period-ms` apart and divides the CPU time the
process used (user + system, `getrusage`) by the wake-ups: once with `time.sleep` (the floor),
once with trio and `duplexd._downlink.timer.PreciseTimer` (what the daemon's pacer does). The
pacer's slots (`duplexd._downlink.pacer.SLOT_S`) trade first audio for fewer of these.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import trio

from duplexd._downlink.timer import PreciseTimer

from .cpus import process_cpu_s


def bare_us(period_s: float, n: int) -> float:
    """CPU per wake-up of `time.sleep` to absolute deadlines, in us."""
    cpu0, deadline = process_cpu_s(), time.monotonic()
    for _ in range(n):
        deadline += period_s
        time.sleep(max(0.0, deadline - time.monotonic()))
    return (process_cpu_s() - cpu0) / n * 1e6


def trio_us(period_s: float, n: int) -> float:
    """CPU per wake-up of a trio loop sleeping on `PreciseTimer`, in us."""

    async def main() -> float:
        with PreciseTimer() as timer:
            cpu0, deadline = process_cpu_s(), trio.current_time()
            for _ in range(n):
                deadline += period_s
                await timer.sleep_until(deadline)
            return (process_cpu_s() - cpu0) / n * 1e6

    return trio.run(main)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.wakeups", description=__doc__.splitlines()[0])
    p.add_argument("--periods-ms", default="0.5,2", help="comma-separated (default 0.5,2)")
    p.add_argument("--n", type=int, default=4000, help="wake-ups per measurement")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    try:
        periods = [float(x) for x in args.periods_ms.split(",") if x.strip()]
    except ValueError:
        print(
            f"bench: --periods-ms takes numbers, e.g. 0.5,2; got {args.periods_ms!r}",
            file=sys.stderr,
        )
        return 2
    if not periods or min(periods) <= 0 or args.n < 1:
        print("bench: --periods-ms must be positive and --n >= 1", file=sys.stderr)
        return 2
    rows = []
    print("| period (ms) | time.sleep: CPU per wake-up (us) | trio + PreciseTimer (us) |")
    print("|---|---:|---:|")
    for ms in periods:
        row = {"period_ms": ms, "bare_us": bare_us(ms / 1e3, args.n)}
        row["trio_us"] = trio_us(ms / 1e3, args.n)
        rows.append(row)
        print(f"| {ms:g} | {row['bare_us']:.1f} | {row['trio_us']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": args.n, "rows": rows}, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
