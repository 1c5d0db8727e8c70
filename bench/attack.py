"""`python -m bench --attack` (= `python -m bench.attack`): good sessions under attack.

    python -m bench --attack --sessions 50 --duration 20 --json out.json

Runs the good load of `python -m bench` (`bench.load`: LLM-like token streams, barge-ins; the
tone engine by default) twice, each time against a fresh daemon started with a token and its
HTTP side port, with the same seed: first alone, then while hostile clients (`bench.hostile`)
repeat the attacks of the issue "Safe on a network" from their own processes (`--attacks`,
`--attackers` of each, `--rate`, `--connections`). The attackers start `--warmup` seconds
before the good sessions connect and stop once they have hung up.

Reports both runs side by side (Markdown; JSON with `--json`; `bench.attack_report`): the
good sessions' client jitter, the server's pacing error, underruns, sessions killed (and by
what), FAL, the daemon's CPU and peak RSS, how long the daemon's /healthz took (probed every
`--healthz-interval` from a process of its own), and per attack how many were sent, how the
daemon answered them (Error codes and close codes, or nothing) and the attackers' own CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import multiprocessing as mp
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

from tqdm import tqdm

from . import cpus
from .daemon import Server, ServerFailed, duplexd_argv, free_port, start_server
from .hostile import ATTACKS, AttackConfig, attacker_process
from .load import LoadConfig, credentials
from .runner import run_level

TOKEN_VARIABLE = "DUPLEXD_SERVER__TOKEN"  # the daemon's `[server] token`
HEALTHZ_TIMEOUT_S = 5.0  # a /healthz probe that takes longer is counted as a timeout
ATTACKER_REPORT_S = 20.0  # after the stop: how long an attacker gets to send its tally


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench --attack", description=__doc__.splitlines()[0]
    )
    p.add_argument("--engine", default="tone", help="tone (default) or vits")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--sessions", type=int, default=50, help="good sessions (one level)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of good load per run")
    p.add_argument("--tokens-per-s", type=float, default=30.0)
    p.add_argument("--interrupt-fraction", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=0, help="good client processes (0: auto)")
    a = p.add_argument_group("attackers (see bench.hostile)")
    a.add_argument(
        "--attacks",
        default="all",
        help=f"comma-separated, or all: {', '.join(ATTACKS)}",
    )
    a.add_argument("--attackers", type=int, default=1, help="processes per attack")
    a.add_argument(
        "--rate",
        type=float,
        default=0.0,
        metavar="PER_S",
        help="floods: at most this many attacks a second per attacker (0: each as soon as the "
        "last was answered)",
    )
    a.add_argument(
        "--connections",
        type=int,
        default=100,
        help="hello-idle, silent, slowloris: connections each attacker keeps open",
    )
    a.add_argument(
        "--answer-timeout", type=float, default=30.0, metavar="S", help="floods: no answer in S"
    )
    a.add_argument(
        "--attacker-nice",
        type=int,
        default=0,
        metavar="N",
        help="run the attackers at this niceness (0: as the daemon; 19: only on idle CPU, as "
        "if they were on other machines)",
    )
    a.add_argument(
        "--warmup", type=float, default=2.0, metavar="S", help="attack this long before the load"
    )
    a.add_argument(
        "--attackers-from",
        choices=["own", "shared"],
        default="own",
        help="own (default): each attacker process connects from a loopback address of its own "
        "(127.0.1.N), as if from another machine, so per-address limits tell it from the good "
        "sessions (127.0.0.1); shared: from 127.0.0.1 like them",
    )
    p.add_argument("--token", default="", help="the daemon's token (default: a random one)")
    p.add_argument("--healthz-interval", type=float, default=0.1, metavar="S")
    p.add_argument("--json", default="", metavar="PATH")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--list-attacks", action="store_true", help="print the attacks and exit")
    cpus.add_arguments(p)
    return p


# ------------------------------------------------------------------------------ /healthz


def _healthz_once(port: int) -> str:
    """One GET /healthz on a new connection: "ok", or why not."""
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=HEALTHZ_TIMEOUT_S) as s:
            s.sendall(request)
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return type(exc).__name__
    status = data.split(b" ", 2)[1:2]
    return "ok" if status == [b"200"] else f"HTTP {status[0].decode() if status else '?'}"


def _healthz_process(conn: Connection, port: int, interval_s: float, stop: MpEvent) -> None:
    elapsed: list[float] = []
    failures: dict[str, int] = {}
    while not stop.is_set():
        t0 = time.monotonic()
        result = _healthz_once(port)
        elapsed.append(time.monotonic() - t0)
        if result != "ok":
            failures[result] = failures.get(result, 0) + 1
        stop.wait(max(0.0, t0 + interval_s - time.monotonic()))
    conn.send({"elapsed_s": elapsed, "failures": failures})
    conn.close()


# ------------------------------------------------------------------------------ processes


@dataclass
class _Child:
    name: str
    proc: Any  # multiprocessing.Process (of the fork context)
    conn: Connection


class _Children:
    """Forked helper processes that run until `stop` and then send one result each."""

    def __init__(self) -> None:
        self._ctx = mp.get_context("fork")
        self.stop = self._ctx.Event()
        self.children: list[_Child] = []

    def start(self, name: str, target: Callable[..., None], *args: Any) -> None:
        parent, child = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(target=target, args=(child, *args, self.stop), daemon=True)
        proc.start()
        child.close()
        self.children.append(_Child(name, proc, parent))

    def finish(self, timeout_s: float) -> list[tuple[str, dict[str, Any]]]:
        """Stop them all; (name, result) each; a child that sends nothing in time is killed."""
        self.stop.set()
        deadline = time.monotonic() + timeout_s
        out = []
        for c in self.children:
            result: dict[str, Any] = {"fatal": "sent no result in time"}
            if c.conn.poll(max(0.0, deadline - time.monotonic())):
                try:
                    result = c.conn.recv()
                except EOFError:
                    result = {"fatal": "died without a result"}
            c.proc.join(max(0.1, deadline - time.monotonic()))
            if c.proc.is_alive():
                c.proc.kill()
                c.proc.join()
            out.append((c.name, result))
        return out


def attacker_address(n: int) -> str:
    """The loopback address attacker process `n` connects from: 127.0.1.1, 127.0.1.2, ...,
    127.0.1.250, 127.0.2.1, ... (the daemon listens on 127.0.0.1; Linux routes all of 127/8 to
    the loopback)."""
    return f"127.0.{1 + n // 250}.{1 + n % 250}"


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    """`name=value` in this process's environment (what a started daemon inherits) meanwhile."""
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def _vm_kb(pid: int, key: str) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return math.nan


# ------------------------------------------------------------------------------ one run


def run_phase(
    args: argparse.Namespace,
    cfg: LoadConfig,
    acfg: AttackConfig,
    attacks: list[str],
    tick: Callable[[float], None] | None,
) -> dict[str, Any]:
    """One run against a fresh daemon: the good load, with `attacks` (none: alone). The raw
    measurements; `bench.attack_report.summarize_phase` reads them."""
    http_port = free_port()
    argv = [*duplexd_argv(args.engine, args.device), "--http-port", str(http_port)]
    with _environ(TOKEN_VARIABLE, cfg.token):  # not a flag: the rebuilt daemon refuses it
        server = start_server("duplexd", argv, cpus=args.daemon_cpus)
    warnings: list[str] = []
    try:
        helpers = _Children()
        helpers.start("healthz", _healthz_process, http_port, args.healthz_interval)
        n = 0
        for name in attacks:
            for _ in range(args.attackers):
                source = attacker_address(n) if args.attackers_from == "own" else None
                own = dataclasses.replace(acfg, source_address=source)
                helpers.start(name, attacker_process, name, server.url, own)
                n += 1
        if attacks:
            time.sleep(args.warmup)
        level = run_level(
            "duplexd",
            server.url,
            server.pid,
            args.sessions,
            cfg,
            workers=args.workers,
            tick=tick,
            daemon_cpus=args.daemon_cpus,
        )
        results = helpers.finish(ATTACKER_REPORT_S)
        exit_code = server.proc.poll()
        rss_peak_mb = _vm_kb(server.pid, "VmHWM") / 1024
        log = _read_log(server)
    finally:
        if not server.stop():
            warnings.append("the daemon did not exit within 5 s of SIGTERM and was killed")
    if exit_code is not None:
        warnings.append(f"the daemon exited during the run (status {exit_code})")
    health = next(r for name, r in results if name == "healthz")
    return {
        "level": level,
        "healthz": health,
        "attackers": [(name, r) for name, r in results if name != "healthz"],
        "daemon": {"exit_code": exit_code, "rss_peak_mb": rss_peak_mb, "log": log},
        "warnings": warnings,
    }


def _read_log(server: Server) -> dict[str, Any]:
    """The daemon's JSON log of the run, counted: records per level, sessions that ended
    with an error per code, and the warnings and errors per event."""
    levels: dict[str, int] = {}
    codes: dict[str, int] = {}
    bad: dict[str, int] = {}
    try:
        with open(server.log_path, errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(rec, dict):
                    continue
                level = str(rec.get("level", "?"))
                levels[level] = levels.get(level, 0) + 1
                event = str(rec.get("event", "?"))
                if event == "session error":
                    code = str(rec.get("code", "?"))
                    codes[code] = codes.get(code, 0) + 1
                if level in ("warning", "error", "critical"):
                    bad[event] = bad.get(event, 0) + 1
    except OSError:
        pass
    return {"levels": levels, "session_errors": codes, "warnings_and_errors": bad}


# ------------------------------------------------------------------------------ main


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: the daemon it started is stopped, not orphaned


def main(argv: list[str] | None = None) -> int:
    from .__main__ import git_rev
    from .attack_report import build_document, markdown, to_json

    args = _parser().parse_args(argv)
    if args.list_attacks:
        for a in ATTACKS.values():
            print(f"{a.name:12} item {a.item}: {a.what}")
        return 0
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    attacks = list(ATTACKS) if args.attacks == "all" else args.attacks.split(",")
    attacks = [a.strip() for a in attacks if a.strip()]
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown or not attacks:
        print(f"bench: unknown attack(s) {', '.join(unknown)}; see --list-attacks", file=sys.stderr)
        return 2
    if args.sessions < 1 or args.attackers < 1 or args.connections < 0:
        print("bench: --sessions and --attackers >= 1, --connections >= 0", file=sys.stderr)
        return 2
    token = args.token or secrets.token_hex(16)
    cfg = LoadConfig(
        duration_s=args.duration,
        tokens_per_s=args.tokens_per_s,
        interrupt_fraction=args.interrupt_fraction,
        seed=args.seed,
        token=token,
    )
    acfg = AttackConfig(
        token=token,
        rate_per_s=args.rate,
        connections=args.connections,
        answer_timeout_s=args.answer_timeout,
        nice=args.attacker_nice,
    )
    bar = tqdm(
        total=round(2 * args.duration, 1),
        unit="s",
        file=sys.stderr,
        disable=args.no_progress,
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]",
    )
    phases: dict[str, dict[str, Any]] = {}
    cpus.pin(0, args.client_cpus)  # the clients, attackers and prober are forked from here
    try:
        with bar:
            for phase, kinds in (("without", []), ("with", attacks)):
                bar.set_description(f"{args.sessions} sessions {phase} attackers")
                phases[phase] = run_phase(args, cfg, acfg, kinds, lambda dt: bar.update(dt))
    except ServerFailed as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    _, headers = credentials(token)
    meta: dict[str, Any] = {
        "bench": "attack",
        "engine": args.engine,
        "device": phases["without"]["level"]["engine_device"] or args.device,
        "sessions": args.sessions,
        "duration_s": args.duration,
        "git_rev": git_rev(),
        "tokens_per_s": args.tokens_per_s,
        "interrupt_fraction": args.interrupt_fraction,
        "seed": args.seed,
        "cpu_count": os.cpu_count(),
        **cpus.describe(args.daemon_cpus, args.client_cpus),
        "attack": {
            "attacks": attacks,
            "attackers_per_attack": args.attackers,
            "rate_per_s": args.rate,
            "connections": args.connections,
            "answer_timeout_s": args.answer_timeout,
            "attacker_nice": args.attacker_nice,
            "warmup_s": args.warmup,
            "token_in": "Hello.token and Authorization: Bearer" if headers else "Hello.token",
            "attackers_from": args.attackers_from,
            "healthz_interval_s": args.healthz_interval,
        },
    }
    doc = build_document(meta, phases)
    print(markdown(doc))
    if args.json:
        with open(args.json, "w") as f:
            f.write(to_json(doc) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
