"""What handing a synthesis chunk to a worker thread costs the process, one call per chunk
against an engine's batched turns (`duplexd._server.synthesis.EngineTurns`).

    taskset -c 0 python -m bench.handoff [--chunks 20] [--rounds 200] [--json PATH]

Each round, `--chunks` sessions ask for a chunk at the same instant (a burst of whole replies),
the chunk doing nothing (so only the hand-off is measured): once each by
`trio.to_thread.run_sync` behind a one-slot `trio.CapacityLimiter` (the daemon's turns before
the batches), once through `EngineTurns` with one thread. The figure is the process's CPU
(user + system) per chunk and the wall time until the round's last chunk came back: the
serial wait the last session of a burst sees before its first frame can go. Pin it to one CPU,
as the daemon is in the bench, or the thread runs on the other CPU and costs less wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from duplexd._server.synthesis import EngineTurns

from .cpus import process_cpu_s

Offload = Callable[..., Awaitable[Any]]


def _nothing() -> None:
    return None


def one_call_each() -> Offload:
    limiter = trio.CapacityLimiter(1)

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        async with limiter:
            return await trio.to_thread.run_sync(fn, *args)

    return run


def measure(make: Callable[[], Offload], chunks: int, rounds: int) -> dict[str, float]:
    """CPU per chunk (us) and wall time per round (us), `chunks` asked at once per round."""

    async def main() -> dict[str, float]:
        offload = make()
        cpu0, wall_s = process_cpu_s(), 0.0
        for _ in range(rounds):
            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(chunks):
                    nursery.start_soon(offload, _nothing)
            wall_s += time.perf_counter() - t0
        cpu_s = process_cpu_s() - cpu0
        return {
            "cpu_us_per_chunk": 1e6 * cpu_s / (chunks * rounds),
            "round_us": 1e6 * wall_s / rounds,
        }

    return trio.run(main)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.handoff", description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=20, help="chunks asked at once (default 20)")
    p.add_argument("--rounds", type=int, default=200, help="rounds measured (default 200)")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    if args.chunks < 1 or args.rounds < 1:
        print(
            f"bench: --chunks and --rounds must be >= 1, got {args.chunks} and {args.rounds}",
            file=sys.stderr,
        )
        return 2
    rows = {
        "one_call_each": measure(one_call_each, args.chunks, args.rounds),
        "batched": measure(
            lambda: EngineTurns(trio.to_thread.run_sync, 1), args.chunks, args.rounds
        ),
    }
    print(f"| {args.chunks} chunks at once | CPU per chunk (us) | until the last is back (us) |")
    print("|---|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['cpu_us_per_chunk']:.1f} | {row['round_us']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"chunks": args.chunks, "rounds": args.rounds, **rows}, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
