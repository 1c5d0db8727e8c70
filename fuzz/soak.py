"""`python -m fuzz.soak --cycles 10000`: open/stream/interrupt/close cycles against a daemon
process; its fds, threads, trio tasks and RSS must stay flat.

The daemon: `duplexd serve --engine tone` run through `fuzz.counted_daemon` (the same
`Service`, plus a task that writes the trio task count to a file; `--plain-daemon` runs
`python -m duplexd serve` itself and leaves tasks unmeasured), configured by `DAEMON_CONFIG`:
hello timeout 0.5 s so that the silent clients are reaped quickly, resumable sessions as
shipped (a session whose client vanishes holds its slot for `resume_window_s`, 30 s), no
session limit (those sessions would fill it), budgets that never slow the soak down (every
client here is 127.0.0.1: one client, whose budgets carry over from session to session).
`--concurrency` clients run cycles until `--cycles` are done; each cycle is one connection of
one kind, two for `resume` (`--mix` sets the shares):

    speak       Hello, a short text, its audio to UtteranceDone, close 1000 or 1001 (echoed)
    uplink      as speak, with an uplink at 16 kHz (VAD, echo reference, transcripts and end of
                turn all made) and half a second of a quiet room's noise sent up, close 1000
    interrupt   Hello, a text, Interrupt at its first audio frame, Interrupted, close 1000
    vanish      Hello, maybe a text, then half of a WebSocket frame and the TCP socket closes
                (FIN or RST): no WebSocket close; the session stays resumable for the window
    silent      the upgrade, then nothing, not even an answer to the daemon's close: the
                hello timeout must end it (Error UNEXPECTED_FRAME, then the daemon hangs up)
    half_hello  half of the WebSocket frame carrying the Hello, then silence: the same
    resume      Hello, a text; at one of its first audio frames the client drops (mid-frame,
                or just the socket), connects again and resumes (SPEC §6.4: Hello options
                `resume` = Welcome.session_id, info.resume.token, the messages received after
                Welcome; sometimes a wrong token or count first: RESUME_FAILED, close 4003);
                the Welcome must say `resumed` with nothing lost, the utterance's audio go on
                with no frame missing or repeated to its UtteranceDone; then a second text is
                spoken and the session closed 1000 (were the bug `resume-clean-close-leak`
                open again: dropped again instead, it ends with the window)

Measured from /proc/PID: open fds, threads, VmRSS; tasks from the counted daemon's file;
sessions from /metrics (`duplexd_sessions_active`, which counts the sessions waiting to be
resumed). "before": the fresh daemon; "baseline": after `--baseline-after` cycles (the
warm-up: imports, caches, the allocator's arenas); "during": every `--sample-every` cycles,
under load (vanished clients' sessions included); "after": all cycles done, the sessions gone.
Before the baseline and the after sample the soak waits for no session to be open (the resume
window of the last vanished client must pass) and then `SETTLE_S` (longer than trio's 10 s idle
timeout of worker threads), then has the counted daemon run a full garbage collection (what
it finds, `garbage`, is reference cycles that waited for it; the figures before it are kept
under `uncollected`), so that both are taken in the same state. Flat: no session left, fds,
threads and tasks after <= baseline (+ a slack of 2 fds, 1 thread, 0 tasks), RSS after <=
baseline + max(8 MiB, 5 %), or no higher than the first half's samples under load + 8 MiB
("plateau": the heap the allocator grew to at the most concurrent sessions; see `verdict`),
and no garbage made under load (below). Prints a summary
JSON; exit status 0 if flat and every cycle went as expected.

Reference cycles: the daemon freezes what lives long (`duplexd/_ops/collector.py`), so a
reference cycle that a session leaves when it ends waits, frozen, for a sweep that steady
traffic may never bring: RSS grew ~7 KB a cycle (+68 MB over 10,000), while fds, threads,
tasks and the objects the collector tracks stayed flat and glibc's own count of the bytes in
use (`malloc_kb`, `mallinfo2`) did not grow: the garbage was freed only by the soak's forced
collection, into a heap that stayed as large. A barge-in's synthesis stop was such a cycle
(its exception, raised in a worker thread, held the session through trio's frame), and so
was every session with an uplink (the uplink and the session called each other back: 1,300
`uplink` cycles took RSS from 394 MB to 1.4-1.7 GB). The after sample's `garbage` (what that
collection found, by type and function) is part of the verdict: none is allowed.

RSS and glibc: each session's ring is 0.5 MB; as a malloc chunk, once glibc had freed an
mmapped chunk that size it raised its mmap threshold and served the next rings from the heap,
where they fragmented it. The ring's slots are now mmapped on their own (5bbf9ac); should RSS
creep again, compare `malloc_kb` in the samples: `in_use` grows with a leak of C memory,
`free` with a heap that fragments.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from duplexd.protocol import frames as fr
from duplexd.protocol.codec import encode

from . import known_bugs
from .daemon import Config, DaemonProcess, start_daemon
from .wsclient import HandshakeFailed, RawClient

HELLO_TIMEOUT_S = 0.5
RESUME_WINDOW_S = 30.0  # as shipped
DAEMON_CONFIG: Config = {
    "server": {"max_sessions": 0},  # vanished clients' sessions hold slots for the window
    "limits": {
        "hello_timeout_s": HELLO_TIMEOUT_S,
        "resume_window_s": RESUME_WINDOW_S,
        "max_frames_per_s": 1_000_000.0,
        "input_share": 1.0,
        "input_burst_s": 10.0,
        "synthesis_speed": 1000.0,
        "synthesis_burst_s": 3600.0,
    },
}
CYCLE_TIMEOUT_S = 30.0
SETTLE_S = 12.0  # trio's worker threads exit after 10 s idle
SLACK = {"fds": 2, "threads": 1, "tasks": 0}
# objects in reference cycles made under load (the after sample's collection), a library's
# included: the soak's clients are all well-formed (unlike `fuzz.network`'s, where h11 leaves
# a cycle of its own for a request that is not HTTP), so any cycle here is a finding
GARBAGE_SLACK = 0
RSS_SLACK_KB = 8 * 1024
RSS_SLACK_SHARE = 0.05
DESCRIPTION = "soak a duplexd daemon with open/stream/interrupt/close cycles"
DEFAULT_MIX: dict[str, float] = {
    "speak": 40,
    "uplink": 10,
    "interrupt": 20,
    "vanish": 10,
    "silent": 5,
    "half_hello": 5,
    "resume": 10,
}
RESUME_TEXT = "hello there, how are you today?"  # a few seconds of tone audio


class CycleFailed(Exception):
    """A cycle did not go as it must."""


# ---------------------------------------------------------------------------- the cycles


async def _connect(d: DaemonProcess, *, answer_close: bool = True) -> RawClient:
    try:
        client = await RawClient.connect(d.host, d.port)
    except (OSError, HandshakeFailed) as exc:
        raise CycleFailed(f"connect: {exc!r}") from None
    client.answer_close = answer_close
    return client


async def _until(client: RawClient, what: str, test: Callable[[fr.Frame], bool]) -> fr.Frame:
    """The first frame passing `test` (waiting for it); CycleFailed if the server closes or
    sends an Error first."""
    seen = 0
    while True:
        for f in client.frames[seen:]:
            if isinstance(f, fr.Error):
                raise CycleFailed(f"{what}: Error {f.code.name}: {f.message}")
            if test(f):
                return f
        seen = len(client.frames)
        if client.done.is_set():
            raise CycleFailed(f"{what}: closed ({client.close_code}) {client.problem}")
        await client.received.wait()


@dataclass
class Ctx:
    """What a cycle may use besides its connection: the daemon (to connect again) and
    counters of what it saw (`notes` in the summary)."""

    d: DaemonProcess
    notes: collections.Counter[str] = field(default_factory=collections.Counter)


async def _open(client: RawClient, hello: fr.Hello | None = None) -> fr.Welcome:
    await client.send_message(encode(hello or fr.Hello()))
    welcome = await _until(client, "welcome", lambda f: isinstance(f, fr.Welcome))
    assert isinstance(welcome, fr.Welcome)
    return welcome


async def _close(client: RawClient, code: int = 1000) -> None:
    await client.close(code)
    await client.done.wait()
    if client.close_code != code:
        raise CycleFailed(f"close {code}: answered {client.close_code} {client.close_reason!r}")


async def cycle_speak(client: RawClient, rng: random.Random, ctx: Ctx) -> None:
    await _open(client)
    await client.send_message(encode(fr.Text(1, rng.choice(("hi", "ok", "yes")), end=True)))
    await _until(client, "done", lambda f: isinstance(f, fr.UtteranceDone))
    going_away = "close-1001-keeps-session" not in known_bugs.active() and rng.random() < 0.2
    await _close(client, 1001 if going_away else 1000)  # both end the session (SPEC §6.4)


UPLINK_FRAMES = 25  # half a second of microphone
UPLINK_RATE_HZ = 16_000


async def cycle_uplink(client: RawClient, rng: random.Random, ctx: Ctx) -> None:
    await _open(client, fr.Hello(uplink_rate_hz=UPLINK_RATE_HZ))
    await client.send_message(encode(fr.Text(1, rng.choice(("hi", "ok", "yes")), end=True)))
    samples = fr.frame_samples(UPLINK_RATE_HZ)
    for seq in range(UPLINK_FRAMES):  # a quiet room's noise, as fast as it goes
        noise = rng.randbytes(2 * samples)
        pcm = bytes(b & 0x0F if i % 2 == 0 else 0 for i, b in enumerate(noise))
        await client.send_message(encode(fr.AudioUp(seq, pcm)))
    await _until(client, "done", lambda f: isinstance(f, fr.UtteranceDone))
    await _close(client)


async def cycle_interrupt(client: RawClient, rng: random.Random, ctx: Ctx) -> None:
    await _open(client)
    await client.send_message(encode(fr.Text(1, "hello there", end=True)))
    await _until(client, "audio", lambda f: isinstance(f, fr.Audio))
    await client.send_message(encode(fr.Interrupt()))
    await _until(client, "interrupted", lambda f: isinstance(f, fr.Interrupted))
    await _close(client)


async def _vanish_mid_frame(client: RawClient, rng: random.Random, uid: int) -> None:
    wire = client.wire(encode(fr.Text(uid, "never finished", end=True)))
    await client.send_raw(wire[: rng.randint(1, len(wire) - 1)])
    await client.vanish(reset=rng.random() < 0.5)


async def cycle_vanish(client: RawClient, rng: random.Random, ctx: Ctx) -> None:
    await _open(client)
    if rng.random() < 0.5:
        await client.send_message(encode(fr.Text(1, "hello there", end=True)))
        if rng.random() < 0.5:
            await _until(client, "audio", lambda f: isinstance(f, fr.Audio))
    await _vanish_mid_frame(client, rng, 2)


async def _reaped(client: RawClient) -> None:
    """The daemon must end a connection that sends nothing (its hello timeout)."""
    await client.done.wait()
    if not client.eof:
        with trio.fail_after(10):
            while not client.eof:  # the reader runs to EOF: the daemon hung up
                await client.received.wait()
    errors = [f for f in client.frames if isinstance(f, fr.Error)]
    if [e.code for e in errors] != [fr.ErrorCode.UNEXPECTED_FRAME]:
        raise CycleFailed(f"silent: expected Error UNEXPECTED_FRAME, got {client.frames}")


async def cycle_silent(client: RawClient, rng: random.Random, ctx: Ctx) -> None:
    await _reaped(client)


async def cycle_half_hello(client: RawClient, rng: random.Random, ctx: Ctx) -> None:
    wire = client.wire(encode(fr.Hello()))
    await client.send_raw(wire[: rng.randint(1, len(wire) - 1)])
    await _reaped(client)


def resume_hello(session_id: bytes, token: str, received: int) -> fr.Hello:
    """A Hello that resumes a session (SPEC §6.4)."""
    resume = {"session_id": session_id.hex(), "token": token, "received": received}
    return fr.Hello(options=json.dumps({"resume": resume}))


def _audio(frames: list[fr.Frame], uid: int) -> list[int]:
    return [f.seq for f in frames if isinstance(f, fr.Audio) and f.utterance_id == uid]


async def _with_reader(ctx: Ctx, then: Callable[[RawClient], Awaitable[None]]) -> RawClient:
    """A new connection to the daemon, read while `then(client)` runs; closed after."""
    client = await _connect(ctx.d)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.run_reader)
            await then(client)
            nursery.cancel_scope.cancel()
    finally:
        await client.aclose()
    return client


async def _refused_resume(ctx: Ctx, hello: fr.Hello) -> None:
    """A resume the daemon must refuse: Error RESUME_FAILED, close 4003."""

    async def attempt(client: RawClient) -> None:
        await client.send_message(encode(hello))
        await client.done.wait()

    client = await _with_reader(ctx, attempt)
    codes = [f.code for f in client.frames if isinstance(f, fr.Error)]
    if codes != [fr.ErrorCode.RESUME_FAILED] or client.close_code != 4003:
        raise CycleFailed(f"resume refused: got {client.frames} close {client.close_code}")
    ctx.notes["resume_refused_as_due"] += 1


async def cycle_resume(client: RawClient, rng: random.Random, ctx: Ctx) -> None:
    """Speak, drop the connection at one of the first audio frames, resume on a new one."""
    welcome = await _open(client)
    try:
        token = str(json.loads(welcome.info)["resume"]["token"])
    except (ValueError, KeyError, TypeError):
        raise CycleFailed(f"resume: Welcome offers no resume: {welcome.info[:300]}") from None
    await client.send_message(encode(fr.Text(1, RESUME_TEXT, end=True)))
    k = rng.randint(1, 5)
    await _until(client, "audio", lambda f: isinstance(f, fr.Audio) and f.seq >= k - 1)
    if rng.random() < 0.5:
        await _vanish_mid_frame(client, rng, 2)
        ctx.notes["resume_dropped_mid_frame"] += 1
    else:
        await client.vanish(reset=rng.random() < 0.5)
    with trio.fail_after(5):
        await client.done.wait()  # the reader has stopped: what it counted was received
    received = client.messages - 1  # server messages after Welcome
    before = _audio(client.frames, 1)
    if rng.random() < 0.1:
        bad = rng.choice(
            (
                resume_hello(welcome.session_id, "0" * len(token), received),  # wrong token
                resume_hello(welcome.session_id, token, received + 10**6),  # count too large
                resume_hello(bytes(16), token, received),  # no such session
            )
        )
        await _refused_resume(ctx, bad)
    hello = resume_hello(welcome.session_id, token, received)

    async def resume(second: RawClient) -> None:
        again = await _open(second, hello)
        report = json.loads(again.info).get("resume", {}) if again.info else {}
        if again.session_id != welcome.session_id or report.get("resumed") is not True:
            raise CycleFailed(f"resume: Welcome {again.session_id.hex()} {report}")
        if report.get("received") != received or report.get("lost") != {"messages": 0}:
            raise CycleFailed(f"resume: received {received}, report {report}")
        ctx.notes["resume_replayed_messages"] += int(report.get("replayed", 0))
        done = await _until(second, "done", lambda f: isinstance(f, fr.UtteranceDone))
        seqs = before + _audio(second.frames, 1)
        if seqs != list(range(len(seqs))) or getattr(done, "utterance_id", None) != 1:
            raise CycleFailed(f"resume: audio seqs {seqs[:8]}... ({len(seqs)}), then {done}")
        await second.send_message(encode(fr.Text(3, "ok", end=True)))  # it goes on
        await _until(
            second, "done 3", lambda f: isinstance(f, fr.UtteranceDone) and f.utterance_id == 3
        )
        if "resume-clean-close-leak" in known_bugs.active():
            await second.vanish()  # not a close: the session ends when the window has passed
            ctx.notes["resumed_then_dropped_again"] += 1
        else:
            await _close(second)

    await _with_reader(ctx, resume)
    ctx.notes["resumed"] += 1


Cycle = Callable[[RawClient, random.Random, Ctx], Awaitable[None]]
CYCLES: dict[str, Cycle] = {
    "speak": cycle_speak,
    "uplink": cycle_uplink,
    "interrupt": cycle_interrupt,
    "vanish": cycle_vanish,
    "silent": cycle_silent,
    "half_hello": cycle_half_hello,
    "resume": cycle_resume,
}


async def run_cycle(ctx: Ctx, kind: str, rng: random.Random) -> str:
    """One cycle; "" if it went as it must, else why not."""
    try:
        with trio.fail_after(CYCLE_TIMEOUT_S):
            client = await _connect(ctx.d, answer_close=kind not in ("silent", "half_hello"))
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(client.run_reader)
                    await CYCLES[kind](client, rng, ctx)
                    nursery.cancel_scope.cancel()
            finally:
                await client.aclose()
    except CycleFailed as exc:
        return str(exc)[:300]
    except trio.TooSlowError:
        return f"{kind}: no end within {CYCLE_TIMEOUT_S:g} s"
    return ""


# ---------------------------------------------------------------------------- the run


@dataclass
class Progress:
    target: int
    started: int = 0
    done: int = 0
    by_kind: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: list[str] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    def finished(self, kind: str, why: str) -> None:
        self.done += 1
        self.by_kind[kind] += 1
        if why:
            self.failures[kind] += 1
            if len(self.examples) < 10:
                self.examples.append(why)
        self.changed.set()
        self.changed = trio.Event()


async def client_loop(
    ctx: Ctx,
    i: int,
    seed: int,
    mix: dict[str, float],
    progress: Progress,
    gate: Callable[[], Awaitable[None]],
) -> None:
    rng = random.Random(f"{seed}:{i}")
    kinds = [k for k, w in mix.items() if w > 0]
    weights = [mix[k] for k in kinds]
    while True:
        await gate()
        if progress.started >= progress.target:
            return
        progress.started += 1
        kind = rng.choices(kinds, weights)[0]
        progress.finished(kind, await run_cycle(ctx, kind, rng))


async def settle(d: DaemonProcess) -> dict[str, Any]:
    """Wait for no open session (those of vanished clients end once the resume window has
    passed), then SETTLE_S; a sample, with `sessions_wait_s`, how long the sessions took to
    end. With the counted daemon, the sample is taken after a full garbage collection in it
    (`uncollected`: the figures just before it; `garbage`: what it found), so that RSS is
    what the daemon keeps, not wherever the collector's sawtooth happens to be (a session
    that left a reference cycle was freed only by it)."""
    t0 = time.monotonic()
    with trio.move_on_after(RESUME_WINDOW_S + 30):
        while (await trio.to_thread.run_sync(d.sample))["sessions_active"]:  # noqa: ASYNC110
            await trio.sleep(0.25)  # another process: nothing to wait on but its /metrics
    waited = time.monotonic() - t0
    await trio.sleep(SETTLE_S)
    sample = await trio.to_thread.run_sync(d.sample)
    if await trio.to_thread.run_sync(d.collect_garbage):
        await trio.sleep(0.5)  # (the object count follows the collection at once)
        before = {k: sample.get(k) for k in ("rss_kb", "objects", "gc_collections")}
        sample = await trio.to_thread.run_sync(d.sample) | {"uncollected": before}
    return sample | {"sessions_wait_s": round(waited, 1)}


def verdict(
    baseline: dict[str, Any], after: dict[str, Any], during: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """ "flat" or "GREW" per figure; RSS may also be "plateau": above the baseline, but no
    higher than the first half's samples under load (+ the slack). That is the allocator
    keeping the heap it grew to while the most sessions were open at once (their replay logs
    and buffers), given back to it but not to the system; a leak grows with the cycles, and
    would be past the first half's high-water mark by the end. "garbage": the objects the
    counted daemon's collection before the after sample found in reference cycles, made
    since the baseline's: in the daemon they would have waited, frozen, for a sweep
    (`duplexd/_ops/collector.py`), so anything above `GARBAGE_SLACK` grows with the cycles."""
    out: dict[str, Any] = {}
    for key, slack in SLACK.items():
        if baseline.get(key) is None or after.get(key) is None:
            out[key] = "not measured"
        else:
            out[key] = "flat" if after[key] <= baseline[key] + slack else "GREW"
    rss0, rss1 = baseline.get("rss_kb"), after.get("rss_kb")
    if rss0 is None or rss1 is None:
        out["rss_kb"] = "not measured"
    else:
        slack = max(RSS_SLACK_KB, rss0 * RSS_SLACK_SHARE)
        early = [d["rss_kb"] for d in (during or [])[: max(1, len(during or []) // 2)]]
        if rss1 <= rss0 + slack:
            out["rss_kb"] = "flat"
        elif early and rss1 <= max(early) + RSS_SLACK_KB:
            out["rss_kb"] = "plateau"
        else:
            out["rss_kb"] = "GREW"
    garbage = after.get("garbage")
    if garbage is None or garbage.get("forced_collected") is None:
        out["garbage"] = "not measured"
    else:
        out["garbage"] = "flat" if garbage["forced_collected"] <= GARBAGE_SLACK else "GREW"
    return out


def uncollected_rss(baseline: dict[str, Any], after: dict[str, Any]) -> dict[str, Any] | None:
    """RSS before the forced collections (what the daemon held, garbage included): a
    diagnostic, outside the verdict."""
    b, a = baseline.get("uncollected"), after.get("uncollected")
    if not b or not a:
        return None
    return {
        "baseline_kb": b["rss_kb"],
        "after_kb": a["rss_kb"],
        "delta_kb": a["rss_kb"] - b["rss_kb"],
        "freed_by_collection_kb": {
            "baseline": b["rss_kb"] - baseline["rss_kb"],
            "after": a["rss_kb"] - after["rss_kb"],
        },
    }


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    d = await trio.to_thread.run_sync(
        lambda: start_daemon(
            config=DAEMON_CONFIG, count_tasks=not args.plain_daemon, count_objects=args.objects
        )
    )
    ctx = Ctx(d)
    progress = Progress(args.cycles)
    samples: list[dict[str, Any]] = []
    marks: dict[str, Any] = {}
    paused = False
    resume = trio.Event()

    async def gate() -> None:
        while paused:
            await resume.wait()

    paused_s = 0.0
    try:
        await trio.sleep(1.0)
        marks["before"] = await trio.to_thread.run_sync(d.sample)
        started = time.monotonic()
        async with trio.open_nursery() as nursery:
            for i in range(args.concurrency):
                nursery.start_soon(client_loop, ctx, i, args.seed, args.mix, progress, gate)
            next_sample = args.sample_every
            while progress.done < progress.target:
                await progress.changed.wait()
                if not d.alive():
                    nursery.cancel_scope.cancel()
                    break
                if "baseline" not in marks and progress.started >= args.baseline_after:
                    paused = True  # let the cycles in flight finish, then measure idle
                    pause_started = time.monotonic()
                    while progress.done < progress.started:
                        await progress.changed.wait()
                    marks["baseline"] = await settle(d) | {"cycles": progress.done}
                    paused_s = time.monotonic() - pause_started
                    paused = False
                    resume.set()
                    resume = trio.Event()
                if progress.done >= next_sample:
                    sample = await trio.to_thread.run_sync(d.sample)
                    samples.append(sample | {"cycles": progress.done})
                    next_sample += args.sample_every
                    if args.verbose:
                        print(json.dumps(samples[-1]), file=sys.stderr)
        elapsed = time.monotonic() - started
        alive = d.alive()
        marks["after"] = await settle(d) if alive else {}
        metrics = await trio.to_thread.run_sync(d.metrics)
        records, other = d.log()
    finally:
        exit_status = await trio.to_thread.run_sync(d.stop)
        d.cleanup()
    tracebacks = [r for r in records if "exc" in r or r.get("level") in ("error", "critical")]
    baseline = marks.get("baseline") or marks["before"]
    flat = verdict(baseline, marks.get("after", {}), samples)
    sessions_left = marks.get("after", {}).get("sessions_active")
    ok = (
        alive
        and exit_status == 0
        and sessions_left == 0
        and not progress.failures
        and not tracebacks
        and not other
        and all(v in ("flat", "plateau", "not measured") for v in flat.values())
    )
    cycle_s = elapsed - paused_s  # without the pause for the baseline
    return {
        "ok": ok,
        "cycles": progress.done,
        "seconds": round(elapsed, 1),
        "paused_for_baseline_s": round(paused_s, 1),
        "cycles_per_s": round(progress.done / max(cycle_s, 1e-9), 1),
        "concurrency": args.concurrency,
        "seed": args.seed,
        "by_kind": dict(sorted(progress.by_kind.items())),
        "notes": dict(sorted(ctx.notes.items())),
        "known_bugs_avoided": sorted(known_bugs.active() & set(known_bugs.KNOWN_SESSION_BUGS)),
        "failed": dict(sorted(progress.failures.items())),
        "failure_examples": progress.examples,
        "before": marks.get("before"),
        "baseline": marks.get("baseline"),
        "after": marks.get("after"),
        "during": samples,
        "peak_during": {
            k: max((s[k] for s in samples if s.get(k) is not None), default=None)
            for k in ("fds", "threads", "tasks", "rss_kb", "sessions_active")
        },
        "flat": flat,
        "rss_before_collection": uncollected_rss(baseline, marks.get("after", {})),
        "garbage": marks.get("after", {}).get("garbage"),
        "sessions_left_after": sessions_left,
        "config": DAEMON_CONFIG,
        "objects": objects_delta(baseline, marks.get("after", {})),
        "tolerance": {"slack": SLACK, "rss_kb": f"max({RSS_SLACK_KB}, {RSS_SLACK_SHARE:.0%})"},
        "tasks_measured_by": "fuzz.counted_daemon (the trio task tree, walked in the daemon)"
        if not args.plain_daemon
        else "not measured (--plain-daemon)",
        "daemon": {
            "alive_at_end": alive,
            "exit_status": exit_status,
            "sessions_accepted": metrics.get("duplexd_sessions_total"),
            "log_tracebacks_or_errors": len(tracebacks),
            "log_examples": [{k: str(v)[:400] for k, v in r.items()} for r in tracebacks[:3]],
            "log_other_lines": other[:10],
        },
    }


def objects_delta(baseline: dict[str, Any], after: dict[str, Any]) -> dict[str, Any] | None:
    """With --objects: gc-tracked objects in the daemon, baseline to after, and the types
    whose count changed (a diagnostic: a leak of Python objects shows here)."""
    if "objects" not in baseline or "objects" not in after:
        return None
    b, a = baseline["top_types"], after["top_types"]
    changed = {t: a.get(t, 0) - b.get(t, 0) for t in sorted(set(a) | set(b))}
    return {
        "baseline": baseline["objects"],
        "after": after["objects"],
        "delta": after["objects"] - baseline["objects"],
        "top_types_delta": {t: d for t, d in changed.items() if d},
    }


def _mix(text: str) -> dict[str, float]:
    mix = dict(DEFAULT_MIX)
    for part in filter(None, text.split(",")):
        name, _, share = part.partition("=")
        if name not in mix:
            raise argparse.ArgumentTypeError(f"unknown cycle kind {name!r}: {', '.join(mix)}")
        mix[name] = float(share)
    return mix


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fuzz.soak", description=DESCRIPTION)
    p.add_argument("--cycles", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=8, help="clients at once (8)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--mix", type=_mix, default=dict(DEFAULT_MIX), help="e.g. vanish=20,silent=0")
    p.add_argument("--baseline-after", type=int, default=500, help="warm-up cycles (500)")
    p.add_argument("--sample-every", type=int, default=1000, help="cycles between samples")
    p.add_argument("--plain-daemon", action="store_true", help="`duplexd serve` itself")
    p.add_argument(
        "--objects", action="store_true", help="also count the daemon's gc-tracked objects"
    )
    p.add_argument("--json", default="", help="also write the summary here")
    p.add_argument("--verbose", action="store_true", help="print each sample as it is taken")
    args = p.parse_args(argv)
    if args.seed is None:
        args.seed = int(time.time())
    args.baseline_after = min(args.baseline_after, args.cycles // 2)
    summary = trio.run(soak, args)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
