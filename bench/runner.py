"""Run one load level against one server: client worker processes + /proc sampling.

The sessions run in `workers` forked processes (each a trio loop with its share of the
sessions), never in the server's process, so the client's own work cannot delay the server's
timers; the parent only samples /proc and waits. Everybody starts on a common
`time.monotonic()` instant, after the sessions have connected.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import multiprocessing as mp
import time
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection, wait
from typing import Any

import trio

from .daemon import ProcSampler
from .load import LoadConfig, Opener, run_sessions
from .metrics import merge_workers
from .steal import StealWitness


def _opener(kind: str, cfg: LoadConfig) -> Opener:
    if kind == "duplexd":
        from .load import open_duplexd

        if cfg.uplink:
            from .uplink import hello_options

            return functools.partial(
                open_duplexd, uplink_options=hello_options(cfg), token=cfg.token, codec=cfg.codec
            )
        return functools.partial(open_duplexd, token=cfg.token, codec=cfg.codec)
    from .baselines.client import open_baseline

    return open_baseline


def _worker(
    conn: Connection, kind: str, url: str, indices: list[int], cfg: LoadConfig, start: float
) -> None:
    try:
        result = trio.run(run_sessions, _opener(kind, cfg), url, indices, cfg, start)
    except BaseException as exc:  # report, then exit: the parent must not wait forever
        conn.send({"fatal": f"{type(exc).__name__}: {exc}"})
        raise
    conn.send(result)
    conn.close()


def auto_workers(sessions: int) -> int:
    """One client process per 64 sessions (at most 4): enough headroom on 2 cores."""
    return max(1, min(4, math.ceil(sessions / 64)))


def connect_budget_s(sessions: int) -> float:
    return 0.5 + 0.01 * sessions


def run_level(
    kind: str,
    url: str,
    pid: int | tuple[int, ...] | None,
    sessions: int,
    cfg: LoadConfig,
    *,
    workers: int = 0,
    tick: Callable[[float], None] | None = None,
    daemon_cpus: Iterable[int] | None = None,
) -> dict[str, Any]:
    """Drive `sessions` sessions at `url` for `cfg.duration_s`; merged results. `pid`: the
    server process to sample, or its workers' (summed; None: CPU and RSS are not measured);
    `daemon_cpus`: where it runs, for what the hypervisor stole from it (`bench.steal`)."""
    if kind != "duplexd":
        cfg = dataclasses.replace(cfg, uplink=False)  # the baseline has no uplink
    n = min(workers or auto_workers(sessions), sessions)
    ctx = mp.get_context("fork")
    start = time.monotonic() + connect_budget_s(sessions)
    end = start + cfg.duration_s
    conns: list[Connection] = []
    procs = []
    for w in range(n):
        parent, child = ctx.Pipe(duplex=False)
        indices = list(range(w, sessions, n))
        p = ctx.Process(target=_worker, args=(child, kind, url, indices, cfg, start))
        p.start()
        child.close()
        conns.append(parent)
        procs.append(p)
    sampler = ProcSampler(pid if pid is not None else -1)
    witness = StealWitness()
    time.sleep(max(0.0, start - time.monotonic()))
    sampler.start()
    witness.start()
    cpu = math.nan
    usage: dict[str, float] = {}
    last = start
    results: list[dict[str, Any]] = []
    pending = list(conns)
    deadline = end + 30.0
    try:
        while pending and time.monotonic() < deadline:
            left = end - time.monotonic()
            for c in wait(pending, timeout=min(0.25, left) if left > 0.001 else 0.25):
                try:
                    results.append(c.recv())
                except EOFError:
                    results.append({"fatal": "worker died without a result"})
                pending.remove(c)
            now = time.monotonic()
            if now < end:
                sampler.sample()
            elif math.isnan(cpu):
                usage = sampler.usage()
                cpu = usage["cpu_percent"]
                witness.stop()
            if tick is not None:
                tick(max(0.0, min(now, end) - last))
                last = max(last, min(now, end))
    finally:
        witness.stop()
    if math.isnan(cpu):
        usage = sampler.usage()
        cpu = usage["cpu_percent"]
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
    fatal = [r["fatal"] for r in results if "fatal" in r]
    fatal += ["worker timed out"] * len(pending)
    merged = merge_workers([r for r in results if "fatal" not in r])
    merged["errors"] = fatal + merged["errors"]
    rss = sampler.rss_max_mb if pid is not None else math.nan
    cpu = cpu if pid is not None else math.nan
    merged.update(kind=kind, sessions=sessions, workers=n, cpu_percent=cpu, rss_mb=rss)
    for key in ("cpu_s", "cpu_kernel_percent", "loop_wakeups_per_s"):
        merged[key] = usage.get(key, math.nan) if pid is not None else math.nan
    merged["uplink"] = cfg.uplink and kind == "duplexd"
    merged["machine"] = witness.summary(merged["underrun_at"], sessions, daemon_cpus)
    return merged
