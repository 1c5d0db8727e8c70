"""Pinning the daemon and the load generator to different cores (Linux `sched_setaffinity`).

On a 2-core box the bench's clients and the daemon otherwise share both cores, and what the
daemon's pacing shows is partly the scheduler's doing. `--daemon-cpus 0 --client-cpus 1`
measures one core of daemon honestly: the daemon (every thread it starts later inherits the
mask) on core 0, the bench process and everything it forks (client workers, attackers, the
health prober) on core 1.
"""

from __future__ import annotations

import argparse
import os
import resource


def parse_cpus(text: str) -> frozenset[int]:
    """ "0", "1,3", "0-3,6" -> the set of CPU numbers; argparse's type for `--*-cpus`."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            lo = int(first)
            hi = int(last) if last else lo
            if lo < 0 or hi < lo:
                raise ValueError(part)
            cpus.update(range(lo, hi + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a CPU list: write e.g. 0, 1,3 or 0-3"
        ) from None
    allowed = os.sched_getaffinity(0)
    if not cpus <= allowed:
        raise argparse.ArgumentTypeError(
            f"CPU(s) {sorted(cpus - allowed)} not available here: this process may use"
            f" {sorted(allowed)}"
        )
    return frozenset(cpus)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--daemon-cpus",
        type=parse_cpus,
        default=None,
        metavar="LIST",
        help="pin the daemon to these CPUs, e.g. 0 (default: not pinned)",
    )
    p.add_argument(
        "--client-cpus",
        type=parse_cpus,
        default=None,
        metavar="LIST",
        help="pin the bench's clients (and attackers) to these CPUs, e.g. 1 (default: not pinned)",
    )


def pin(pid: int, cpus: frozenset[int] | None) -> None:
    """Pin process `pid` (0: this one, and what it forks from now on); None: leave it."""
    if cpus is not None:
        os.sched_setaffinity(pid, cpus)


def describe(daemon: frozenset[int] | None, clients: frozenset[int] | None) -> dict[str, object]:
    """For a run's metadata: who ran where (None: anywhere the scheduler chose)."""
    return {
        "daemon_cpus": sorted(daemon) if daemon is not None else None,
        "client_cpus": sorted(clients) if clients is not None else None,
    }


def sentence(doc: dict[str, object]) -> str:
    """ "2 CPUs" or "2 CPUs (daemon pinned to CPU 0, clients to CPU 1)", for a report."""
    where: list[str] = []
    for who, key in (("daemon", "daemon_cpus"), ("clients", "client_cpus")):
        cpus = doc.get(key)
        if isinstance(cpus, list):
            where.append(f"{who} {'pinned ' if not where else ''}to CPU {','.join(map(str, cpus))}")
    return f"{doc['cpu_count']} CPUs" + (f" ({', '.join(where)})" if where else "")


def process_cpu_s() -> float:
    """This process's CPU time so far, user + system, all its threads (`getrusage`)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
