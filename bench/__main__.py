"""`python -m bench`: load-test duplexd against an asyncio baseline, in one run.

    python -m bench --engine tone --sessions 1,50 --duration 10 --json out.json --plots plots/

For every level of `--sessions` it drives that many concurrent sessions (LLM-like token
streams, mixed utterance lengths, random barge-ins; see `bench.load`) first against duplexd,
then against the asyncio baseline (`bench.baselines.asyncio_server`), with the clients in
separate worker processes. Prints a Markdown table (goal vs measured, PASS/MISS, and
duplexd/baseline ratios), and writes JSON and PNG plots on request.

    python -m bench --engine tone --uplink --sessions 1,10 --no-baseline [--uplink-echo-db -10]

`--uplink` (duplexd only; the baseline's uplink rows are n/a): every session also streams a
real-time 16 kHz microphone (noise, optionally its own echo) and the interrupters barge in by
voice instead of Interrupt; adds VAD barge-in latency, false triggers and misses (`bench.uplink`).
`--uplink-echo-room rt60-300` (a room of `bench.rooms`): the echo comes back reverberant.

    python -m bench --attack --sessions 50 --duration 20 [--attacks spaces,auth] [--attackers 2]

`--attack` runs `bench.attack` instead (its own flags: `python -m bench --attack --help`): the
good load of one level, alone and then while hostile clients repeat the attacks of the issue
"Safe on a network", side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
from typing import Any

from tqdm import tqdm

from . import cpus
from .daemon import (
    Server,
    ServerFailed,
    baseline_argv,
    duplexd_argv,
    listening_socket,
    model_argv,
    start_server,
    start_worker,
)
from .load import LoadConfig
from .report import build_document, markdown, summarize, to_json
from .rooms import ROOMS
from .runner import run_level
from .steal import attach_pauses, daemon_pauses


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--engine", default="tone", help="tone (default) or vits")
    p.add_argument(
        "--codec",
        default="pcm",
        choices=["pcm", "opus"],
        help="the audio codec, both ways with --uplink (duplexd only: the baseline speaks PCM)",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--sessions", default="1,10,50,100", help="comma-separated levels")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load per level")
    p.add_argument("--tokens-per-s", type=float, default=30.0)
    p.add_argument(
        "--interrupt-fraction",
        type=float,
        default=0.3,
        help="fraction of sessions that barge in (at random moments)",
    )
    p.add_argument(
        "--burst",
        type=int,
        default=0,
        metavar="CHARS",
        help="instead of streaming tokens, every session sends one whole reply of CHARS "
        "characters at the same instant, again every --burst-every s (0: stream; default)",
    )
    p.add_argument("--burst-every", type=float, default=12.0, metavar="S", help="(12 s)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=0, help="client processes (0: auto)")
    p.add_argument(
        "--daemon-workers",
        type=int,
        default=1,
        metavar="N",
        help="duplexd as N workers on one port, as deploy/duplexd-workers.socket runs them"
        " (each pinned to one of --daemon-cpus, in turn); CPU and RSS are their sum",
    )
    p.add_argument(
        "--model-process",
        action="store_true",
        help="the engine runs in a model process (duplexd serve-model) that the daemon or its"
        " workers use (--model-socket); it runs on --model-cpus; CPU and RSS add it in",
    )
    p.add_argument(
        "--model-cpus",
        type=cpus.parse_cpus,
        default=None,
        metavar="LIST",
        help="CPUs of the model process (default: --daemon-cpus)",
    )
    p.add_argument("--url", default="", help="bench a running duplexd instead of starting one")
    p.add_argument("--pid", type=int, default=0, help="with --url: its PID, for CPU and RSS")
    p.add_argument("--no-baseline", action="store_true", help="skip the asyncio baseline")
    p.add_argument("--json", default="", metavar="PATH")
    p.add_argument("--plots", default="", metavar="DIR")
    p.add_argument("--no-progress", action="store_true")
    cpus.add_arguments(p)
    p.add_argument(
        "--attack",
        action="store_true",
        help="good sessions under attack: runs bench.attack (see --attack --help)",
    )
    up = p.add_argument_group("uplink (duplexd only; see bench.uplink)")
    up.add_argument(
        "--uplink",
        action="store_true",
        help="every session streams a real-time microphone; interrupters barge in by voice",
    )
    up.add_argument(
        "--uplink-echo-db",
        type=float,
        default=None,
        metavar="DB",
        help="mix the session's received audio into its uplink at this gain (implies --uplink)",
    )
    up.add_argument("--uplink-echo-delay-ms", type=float, default=50.0, metavar="MS")
    up.add_argument(
        "--uplink-echo-room",
        choices=[r.name for r in ROOMS],
        default=None,
        help="the echo comes back through this room of bench/rooms.py (its delay, reverberation,"
        " loudspeaker and level: -10 dB; --uplink-echo-db adds to that level, the delay option"
        " is ignored; implies --uplink)",
    )
    up.add_argument(
        "--uplink-echo-playout-ms",
        type=float,
        default=40.0,
        metavar="MS",
        help="the echoing player's playout buffer (0: each run plays on arrival)",
    )
    up.add_argument(
        "--uplink-echo-played",
        action="store_true",
        help="the echoing player reports PLAYED as the browser client does (each run's first"
        " sample and every 200 ms): the daemon places its echo reference by the reports",
    )
    up.add_argument(
        "--uplink-jitter-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="each uplink frame reaches the daemon this much later on average (exponentially"
        " distributed, in order: a busy network)",
    )
    up.add_argument(
        "--uplink-drift-ppm",
        type=float,
        default=0.0,
        metavar="PPM",
        help="the client's audio clock runs this far off the server's (the uplink's frames"
        " and the echo captured on it; --uplink-drift-ppm=-300)",
    )
    up.add_argument(
        "--uplink-drift-speaker",
        choices=("server", "client"),
        default="server",
        help="with --uplink-drift-ppm, the clock the speaker plays on: the server's (another"
        " device, keeping to the stream) or the client's (the microphone's sound card)",
    )
    up.add_argument("--uplink-noise-dbfs", type=float, default=-55.0, metavar="DBFS")
    up.add_argument("--uplink-asr", action="store_true", help="leave the server's transcription on")
    up.add_argument(
        "--uplink-barge-in-mode",
        choices=("immediate", "soft"),
        default="immediate",
        help="vad.barge_in_mode; soft: the barge-in's latency is the onset -> HELD (the audio"
        " paused), a HELD outside the user's speech a false barge-in (with --uplink-asr a hold"
        " is decided by its words; without, it commits as UNHEARD once the sound ends)",
    )
    return p


def git_rev() -> str:
    """The checkout's revision (`-dirty` with changes to tracked files); `BENCH_REV`
    instead where the copy's own .git does not say it (a copy sent to another machine)."""
    if given := os.environ.get("BENCH_REV"):
        return given
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (rev + ("-dirty" if dirty else "")) if rev else "unknown"


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: the daemons it started are stopped, not orphaned


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if __name__ == "__main__":
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if "--attack" in argv:
        from .attack import main as attack_main

        return attack_main([a for a in argv if a != "--attack"])
    args = _parser().parse_args(argv)
    try:
        levels = [int(x) for x in args.sessions.split(",") if x.strip()]
    except ValueError:
        print("bench: --sessions must be integers, e.g. 1,10,50", file=sys.stderr)
        return 2
    if not levels or min(levels) < 1:
        print("bench: --sessions needs levels >= 1", file=sys.stderr)
        return 2
    if args.daemon_workers < 1 or (args.daemon_workers > 1 and args.url):
        print("bench: --daemon-workers needs 1 or more, and no --url", file=sys.stderr)
        return 2
    if args.model_process and args.url:
        print("bench: --model-process starts the daemon: leave out --url", file=sys.stderr)
        return 2
    if args.uplink_jitter_ms < 0 or not abs(args.uplink_drift_ppm) < 10_000:
        print(
            "bench: --uplink-jitter-ms takes 0 or more, --uplink-drift-ppm -10000..10000",
            file=sys.stderr,
        )
        return 2
    uplink = (
        args.uplink
        or args.uplink_echo_db is not None
        or args.uplink_echo_room is not None
        or bool(args.uplink_jitter_ms or args.uplink_drift_ppm)
    )
    if args.uplink_echo_room is not None and args.uplink_echo_db is None:
        args.uplink_echo_db = 0.0  # the room's own level
    cfg = LoadConfig(
        duration_s=args.duration,
        tokens_per_s=args.tokens_per_s,
        interrupt_fraction=args.interrupt_fraction,
        burst_chars=args.burst,
        burst_every_s=args.burst_every,
        seed=args.seed,
        uplink=uplink,
        uplink_noise_dbfs=args.uplink_noise_dbfs,
        uplink_echo_db=args.uplink_echo_db,
        uplink_echo_delay_ms=args.uplink_echo_delay_ms,
        uplink_echo_room=args.uplink_echo_room,
        uplink_echo_playout_ms=args.uplink_echo_playout_ms,
        uplink_echo_played=args.uplink_echo_played,
        uplink_jitter_ms=args.uplink_jitter_ms,
        uplink_drift_ppm=args.uplink_drift_ppm,
        uplink_drift_speaker=args.uplink_drift_speaker,
        uplink_asr=args.uplink_asr,
        uplink_barge_in_mode=args.uplink_barge_in_mode,
        codec=args.codec,
    )
    servers: dict[str, Server] = {}
    extra: list[Server] = []  # --daemon-workers: the workers after the first; the model process
    model: list[Server] = []  # --model-process
    warnings: list[str] = []
    tmp = tempfile.TemporaryDirectory(prefix="bench-uplink-")
    try:
        if uplink and args.interrupt_fraction > 0:
            from .uplink import make_clip

            if not args.no_progress:
                print("bench: synthesizing the user's speech clip (VITS)...", file=sys.stderr)
            try:
                cfg = dataclasses.replace(cfg, uplink_clip=make_clip(tmp.name))
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"bench: {exc}", file=sys.stderr)
                return 1
        if args.model_process:  # first: the daemons connect to it as they start
            args.model_socket = os.path.join(tmp.name, "model.sock")
            model_cpus = args.model_cpus if args.model_cpus is not None else args.daemon_cpus
            argv = model_argv(args.engine, args.device, args.model_socket)
            model = [start_server("duplexd model", argv, cpus=model_cpus)]
        if not args.url and args.daemon_workers > 1:
            workers = start_workers(args)
            servers["duplexd"], extra = workers[0], workers[1:]
        elif not args.url:
            servers["duplexd"] = start_server("duplexd", serve_argv(args), cpus=args.daemon_cpus)
        extra += model
        if not args.no_baseline:
            servers["baseline"] = start_server("baseline", baseline_argv(), cpus=args.daemon_cpus)
        cpus.pin(0, args.client_cpus)  # the client workers are forked from here
        runs = _run_all(args, cfg, levels, servers, extra)
    except ServerFailed as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        workers = [("duplexd worker", w) for w in extra if w not in model]
        last = [("duplexd model", m) for m in model]  # after the daemons, as systemd stops them
        for name, server in [*servers.items(), *workers, *last]:
            if not server.stop():
                warnings.append(f"{name} did not exit within 5 s of SIGTERM and was killed")
        tmp.cleanup()
    first = runs[0]["duplexd"]
    meta: dict[str, Any] = {
        "engine": args.engine,
        "codec": args.codec,
        "device": first["engine_device"] or args.device,
        "duration_s": args.duration,
        "git_rev": git_rev(),
        "tokens_per_s": args.tokens_per_s,
        "interrupt_fraction": args.interrupt_fraction,
        "burst": {"chars": args.burst, "every_s": args.burst_every} if args.burst else None,
        "seed": args.seed,
        "cpu_count": os.cpu_count(),
        **cpus.describe(args.daemon_cpus, args.client_cpus),
        "daemon_workers": args.daemon_workers,
        "model_process": model_meta(args),
        "url": args.url or None,
        "warnings": warnings,
        "uplink": None,
    }
    if uplink:
        from .uplink import USER_TEXT

        meta["uplink"] = {
            "rate_hz": 16_000,
            "noise_dbfs": args.uplink_noise_dbfs,
            "echo_db": args.uplink_echo_db,
            "echo_delay_ms": args.uplink_echo_delay_ms,
            "echo_room": args.uplink_echo_room,
            "echo_playout_ms": args.uplink_echo_playout_ms,
            "echo_played": args.uplink_echo_played,
            "jitter_ms": args.uplink_jitter_ms,
            "drift_ppm": args.uplink_drift_ppm,
            "drift_speaker": args.uplink_drift_speaker,
            "asr": args.uplink_asr,
            "barge_in_mode": args.uplink_barge_in_mode,
            "clip": f"VITS other speaker: {USER_TEXT!r}" if cfg.uplink_clip else "none",
        }
    pairs = [
        (summarize(r["duplexd"]), summarize(r["baseline"]) if r["baseline"] else None) for r in runs
    ]
    meta["server_merge"] = pairs[0][0]["server_jitter_ms"].get("method", "")
    doc = build_document(meta, pairs)
    print(markdown(doc))
    for w in warnings:
        print(f"\n**WARNING: {w}**")
    if args.json:
        with open(args.json, "w") as f:
            f.write(to_json(doc) + "\n")
    if args.plots:
        from .plots import write_plots

        write_plots(args.plots, doc, runs)
    return 0


def model_meta(args: argparse.Namespace) -> dict[str, Any] | None:
    """With --model-process: where the model process ran."""
    if not args.model_process:
        return None
    return {"cpus": sorted(args.model_cpus or args.daemon_cpus or [])}


def serve_argv(args: argparse.Namespace) -> list[str]:
    """The `duplexd serve` under test (using the model process with --model-process)."""
    return duplexd_argv(args.engine, args.device, model_socket=getattr(args, "model_socket", ""))


def start_workers(args: argparse.Namespace) -> list[Server]:
    """`--daemon-workers N` duplexd workers sharing one listening socket (bench.daemon)."""
    cores = sorted(args.daemon_cpus) if args.daemon_cpus else []
    with listening_socket() as sock:
        return [
            start_worker(
                f"duplexd-{i}",
                sock,
                serve_argv(args),
                cpus=frozenset({cores[i % len(cores)]}) if cores else None,
            )
            for i in range(args.daemon_workers)
        ]


def _run_all(
    args: argparse.Namespace,
    cfg: LoadConfig,
    levels: list[int],
    servers: dict[str, Server],
    extra: list[Server],
) -> list[dict[str, Any]]:
    kinds = ["duplexd"] + (["baseline"] if "baseline" in servers else [])
    total = cfg.duration_s * len(levels) * len(kinds)
    bar = tqdm(
        total=round(total, 1),
        unit="s",
        file=sys.stderr,
        disable=args.no_progress,
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]",
    )
    runs = []
    with bar:
        for n in levels:
            level: dict[str, Any] = {"sessions": n, "baseline": None}
            for kind in kinds:
                bar.set_description(f"{kind} x{n}")
                server = servers.get(kind)
                url = server.url if server else args.url
                pid: int | tuple[int, ...] | None = server.pid if server else (args.pid or None)
                if kind == "duplexd" and server and extra:
                    pid = (server.pid, *(w.pid for w in extra))
                level[kind] = run_level(
                    kind,
                    url,
                    pid,
                    n,
                    cfg,
                    workers=args.workers,
                    tick=lambda dt: bar.update(dt),
                    daemon_cpus=args.daemon_cpus,
                )
                if server and server.proc.poll() is not None:
                    raise ServerFailed(f"{kind} exited during the run:\n{server.log_tail()}")
                if server and kind == "duplexd":  # its garbage collections, beside the stalls
                    logs = [daemon_pauses(w.log_path) for w in (server, *extra)]
                    pauses = None if None in logs else [p for log in logs for p in log or ()]
                    attach_pauses(level[kind]["machine"], pauses)
            runs.append(level)
    return runs


if __name__ == "__main__":
    sys.exit(main())
