"""`python -m fuzz.network --seconds 120 --seed S`: fuzz a real daemon over the network.

A tone-engine daemon process (`fuzz.daemon`) with small limits, a 1 s hello timeout, a short
resume window and budgets generous enough that no rate limit masks a protocol answer (every
connection comes from 127.0.0.1, and a client's budgets outlive its sessions: `DAEMON_CONFIG`);
many concurrent raw WebSocket connections (`fuzz.wsclient`), each playing one random case of
`fuzz.cases` (its families are listed there).

Every outcome is classified. Expected: `error:<CODE>`, an Error frame with a documented code
(not INTERNAL) as the last frame and the close code of SPEC §8, and the code `fuzz.oracle`
predicts from the bytes sent (frame by frame, as the daemon acts on them); `clean_close` (no
error predicted: the session answered a Ping and echoed our close 1000); `vanished` (we dropped
the socket); `transport:1009` (a message over twice max_message_bytes: trio-websocket closes 1009
without an Error, as SPEC §2 allows); `http_closed` (garbage instead of an
upgrade: the daemon hung up); `http:<STATUS>` (the `upgrade` family: the refusal due);
`uncertain:<CODE or none>` where the prediction depends on timing (a queue-limit
LIMIT_EXCEEDED: utterances may have finished meanwhile; text after uplink audio that is not
silence: a VAD barge-in) and the daemon
answered otherwise, with a documented code and its close code, or by answering a Ping and our
close.
Refusals (`refused:429`, `refused:503`: the upgrade refused for the daemon's load or a
client's budget, SPEC §2) are counted apart (`refusals`): neither expected nor unexpected,
they are what this configuration should make rare.
UNEXPECTED: INTERNAL, another error than predicted, an Error where none was due or none where
one was, a close without an Error, a wrong close code, frames after the Error, a Pong for a
Ping the daemon must not have acted upon (sent after the frame that failed the session),
malformed server output, no answer within the timeout (a hang), a failed connect or another
refused upgrade, a Welcome announcing other limits than configured, a traceback or an `exc`,
error or critical record in the daemon's log, the daemon dying, a failed session of the good
client that runs one whole session every second throughout, a fixed bug of
`fuzz/known_bugs.py` answered otherwise than documented, a reference cycle holding any of
duplexd's objects left in the daemon once every session has ended (`garbage_left`: what a
forced collection in `fuzz.counted_daemon` found, by type and function; the daemon freezes
what lives long, so such garbage waits for a sweep that may never come: fuzz/soak.py). A
cycle of a library's own objects is reported there, not counted: h11 keeps each HTTP
request that is not one (`http_garbage`) in a cycle of its error and its frame, with
trio-websocket's connection, ~60 objects.

Prints a summary JSON (inputs tried, outcomes by class, unexpected and examples of them, each
with the case seed: `--replay SEED` runs that case alone and prints what was sent and got).
Exit status 0 if nothing was unexpected.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from duplexd.client.session import open_session
from duplexd.protocol import frames as fr

from . import known_bugs
from .cases import LIMITS, TONE, Case, encode, make_case
from .daemon import Config, DaemonProcess, start_daemon
from .oracle import Oracle
from .soak import settle
from .wsclient import HandshakeFailed, RawClient

DESCRIPTION = "fuzz a real duplexd daemon over the network"
HELLO_TIMEOUT_S = 1.0
# Sessions of clients that vanish stay resumable this long (the default 30 s would keep a few
# hundred of them playing at once here); resuming is covered by `python -m fuzz.soak`
RESUME_WINDOW_S = 5.0
DAEMON_CONFIG: Config = {
    # unlimited: vanished clients' sessions hold their slots for the resume window
    "server": {"max_sessions": 0},
    "limits": {
        "max_frame_bytes": LIMITS.max_frame_bytes,
        "max_text_bytes": LIMITS.max_text_bytes,
        "max_queued_utterances": LIMITS.max_queued_utterances,
        "hello_timeout_s": HELLO_TIMEOUT_S,
        "frame_burst": LIMITS.frame_burst,
        "max_frames_per_s": LIMITS.max_frames_per_s,
        # a client is its address: every connection here is one client, 127.0.0.1, whose
        # budgets carry over from session to session; these never slow one down for long,
        # nor leave it in debt (HTTP 429 at the next upgrade)
        "input_share": 1.0,
        "input_burst_s": 10.0,
        "synthesis_speed": 1000.0,
        "synthesis_burst_s": 3600.0,
        "resume_window_s": RESUME_WINDOW_S,
    },
}
ANSWER_TIMEOUT_S = 10.0  # the daemon must answer (Error, Pong, close) within this
UNCERTAIN_WAIT_S = 2.0  # a timing-dependent error: how long to wait for it before a Ping
GOOD_CLIENT_EVERY_S = 1.0
FLOOD_PAUSE_S = 0.05  # after a flood's session ended: its client's frame bucket refills
REFUSALS = (429, 503)  # an upgrade refused for the load or a budget: counted apart

# ---------------------------------------------------------------------------- playing a case


@dataclass
class Played:
    outcome: str  # error:CODE, clean_close, vanished, transport:1009, http_closed, unexpected:...
    detail: str = ""
    messages: int = 0  # WebSocket messages sent (partial ones included)
    frames: int = 0
    sent: list[str] = field(default_factory=list)  # hex of each message, for the report


def _oracle() -> Oracle:
    return Oracle(LIMITS, engines=TONE, default_engine="tone")


async def play(case: Case, host: str, port: int) -> Played:
    with trio.move_on_after(ANSWER_TIMEOUT_S * 3 + HELLO_TIMEOUT_S) as scope:
        if case.http:
            return await _play_http(case, host, port)
        if case.upgrade:
            return await _play_upgrade(case, host, port)
        return await _play_ws(case, host, port)
    assert scope.cancelled_caught
    return Played("unexpected:hang", "the case did not finish in time")


async def _play_upgrade(case: Case, host: str, port: int) -> Played:
    assert case.upgrade is not None
    path, subprotocols, due = case.upgrade
    try:
        client = await RawClient.connect(host, port, subprotocols=subprotocols, path=path)
    except HandshakeFailed as exc:
        if exc.status == due:
            return Played(f"http:{due}", messages=1)
        if exc.status in REFUSALS:
            return Played(f"refused:{exc.status}", str(exc), messages=1)
        return Played("unexpected:upgrade", f"{exc}; due HTTP {due}", messages=1)
    except OSError as exc:
        return Played("unexpected:connect_failed", repr(exc))
    await client.aclose()
    return Played("unexpected:upgrade", f"accepted {path} {subprotocols}; due HTTP {due}")


async def _play_http(case: Case, host: str, port: int) -> Played:
    stream = await trio.open_tcp_stream(host, port)
    try:
        await stream.send_all(case.http)
        with trio.move_on_after(15.0):  # the daemon's upgrade timeout is 10 s
            while await stream.receive_some(65536):
                pass
            return Played("http_closed", messages=1)
        return Played("unexpected:hang", "garbage instead of an upgrade: not closed in 15 s")
    except (trio.BrokenResourceError, OSError):
        return Played("http_closed", messages=1)
    finally:
        await stream.aclose()


async def _play_ws(case: Case, host: str, port: int) -> Played:
    oracle = _oracle()
    played = Played("")
    try:
        client = await RawClient.connect(host, port)
    except HandshakeFailed as exc:
        if exc.status in REFUSALS:
            return Played(f"refused:{exc.status}", str(exc))
        return Played("unexpected:connect_failed", repr(exc))
    except OSError as exc:
        return Played("unexpected:connect_failed", repr(exc))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run_reader)
        try:
            vanished = await _send_steps(case, client, oracle, played)
            if vanished:
                played.outcome = "vanished"
            else:
                await _end(case, client, oracle, played)
        finally:
            nursery.cancel_scope.cancel()
            await client.aclose()
    return played


async def _send_steps(case: Case, client: RawClient, oracle: Oracle, played: Played) -> bool:
    """Send the case's messages; True if it ended by vanishing mid-frame."""
    for step in case.steps:
        if client.done.is_set():
            break  # the server closed: what was not sent was never tried
        played.sent.append(step.data.hex() if isinstance(step.data, bytes) else repr(step.data))
        played.messages += 1
        played.frames += step.frames
        if step.kind == "partial":
            wire = client.wire(step.data)
            cut = min(max(1, int(len(wire) * step.cut)), len(wire) - 1)
            await client.send_raw(wire[:cut])
            await client.vanish(reset=case.reset)
            return True
        if isinstance(step.data, str):
            oracle.text_message()
        else:
            oracle.binary_message(step.data)
        if not await client.send_message(step.data, fragments=step.fragments):
            break
        if case.welcome_first and step is case.steps[0]:
            with trio.move_on_after(ANSWER_TIMEOUT_S):
                while not client.frames and not client.done.is_set():
                    await client.received.wait()
        await trio.lowlevel.checkpoint()
    if case.end == "vanish" and oracle.error is None:
        await client.vanish(reset=case.reset)
        return True
    return False


async def _wait_done(client: RawClient, timeout_s: float) -> bool:
    with trio.move_on_after(timeout_s):
        await client.done.wait()
        return True
    return False


async def _end(case: Case, client: RawClient, oracle: Oracle, played: Played) -> None:
    if not oracle.welcomed:
        oracle.hello_timeout()  # nothing more will come: the daemon's hello timer runs out
    if oracle.error is not None:
        if oracle.certain:
            answered = await _wait_done(client, ANSWER_TIMEOUT_S + HELLO_TIMEOUT_S)
            played.outcome, played.detail = classify(case, oracle, client, answered, closed=False)
            return
        if await _wait_done(client, UNCERTAIN_WAIT_S):  # it may fail the session, or not
            played.outcome, played.detail = classify(case, oracle, client, True, closed=False)
            return
    # no error due (or one that did not come): the session must be alive; it answers a Ping,
    # then echoes our close
    nonce = _end_nonce(case)
    answered = True
    if await client.send_message(encode(fr.Ping(nonce))):
        played.messages += 1
        with trio.move_on_after(ANSWER_TIMEOUT_S) as scope:
            while not any(isinstance(f, fr.Pong) and f.nonce == nonce for f in client.frames):
                if client.done.is_set():
                    break
                await client.received.wait()
        answered = not scope.cancelled_caught
    if answered and not client.done.is_set():
        await client.close(1000)
        answered = await _wait_done(client, ANSWER_TIMEOUT_S)
    played.outcome, played.detail = classify(case, oracle, client, answered, closed=True)


def _end_nonce(case: Case) -> int:
    return random.Random(case.seed).getrandbits(64)


def _welcome_limits(w: fr.Welcome) -> str | None:
    """What the Welcome announces against `DAEMON_CONFIG` (None: the same)."""
    fields = (w.max_frame_bytes, w.max_text_bytes, w.max_queued_utterances)
    if fields != LIMITS.welcome_fields:
        return f"limits {fields}, configured {LIMITS.welcome_fields}"
    try:
        announced = json.loads(w.info)["limits"]
    except (ValueError, KeyError, TypeError):
        return f"no info.limits in {w.info[:200]!r}"
    configured = DAEMON_CONFIG["limits"]
    wrong = {k: announced.get(k) for k, v in configured.items() if announced.get(k) != v}
    return f"info.limits {wrong}, configured otherwise" if wrong else None


def classify(
    case: Case, oracle: Oracle, client: RawClient, answered: bool, *, closed: bool
) -> tuple[str, str]:
    """The outcome class and a detail for an unexpected one."""
    predicted = oracle.error.name if oracle.error is not None else "none"
    errors = [f for f in client.frames if isinstance(f, fr.Error)]
    welcomed = any(isinstance(f, fr.Welcome) for f in client.frames)
    if client.problem:
        return "unexpected:bad_server_output", client.problem
    if not answered:
        return "unexpected:hang", f"no answer in time; predicted {predicted}"
    if welcomed:
        w = next(f for f in client.frames if isinstance(f, fr.Welcome))
        if (why := _welcome_limits(w)) is not None:
            return "unexpected:welcome", why
    if oracle.certain:  # a Pong for a Ping after the frame that failed the session
        due = oracle.acted_pings | {_end_nonce(case)}
        stray = [f.nonce for f in client.frames if isinstance(f, fr.Pong) and f.nonce not in due]
        if stray:
            return "unexpected:answer_not_due", f"Pong {stray[:3]}; predicted {predicted}"
    if errors:
        e = errors[0]
        if len(errors) > 1 or client.frames[-1] is not e:
            return "unexpected:frames_after_error", f"{client.frames[-3:]}"
        if e.code is fr.ErrorCode.INTERNAL:
            return "unexpected:internal", e.message
        if client.close_code != e.code.close_code:
            return "unexpected:wrong_close_code", f"{e.code.name} closed {client.close_code}"
        if e.code.name != predicted:
            if not oracle.certain:
                return f"uncertain:{e.code.name}", f"predicted {predicted} (timing-dependent)"
            why = f"got {e.code.name}: {e.message}; predicted {predicted} ({oracle.why})"
            return "unexpected:mismatch", why
        if welcomed != oracle.welcomed:
            return "unexpected:welcome", f"Welcome sent: {welcomed}, due: {oracle.welcomed}"
        return f"error:{e.code.name}", ""
    if case.family == "oversize" and client.close_code == 1009:
        return "transport:1009", ""
    if oracle.error is not None:
        if not oracle.certain:
            return "uncertain:none", f"predicted {predicted} (timing-dependent)"
        return "unexpected:close_without_error", f"close {client.close_code}; due {predicted}"
    if closed and client.close_code == 1000:
        return "clean_close", ""
    return "unexpected:close_without_error", f"close {client.close_code} {client.close_reason!r}"


# ---------------------------------------------------------------------------- the run


@dataclass
class Tally:
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    families: collections.Counter[str] = field(default_factory=collections.Counter)
    messages: int = 0
    frames: int = 0
    connections: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)
    good_ok: int = 0
    good_failed: list[str] = field(default_factory=list)
    refusals: collections.Counter[str] = field(default_factory=collections.Counter)
    refusal_examples: list[str] = field(default_factory=list)

    def add(self, case: Case, p: Played) -> None:
        self.connections += 1
        self.messages += p.messages
        self.frames += p.frames
        self.outcomes[p.outcome] += 1
        if p.outcome.startswith("refused:"):
            self.refusals[p.outcome.removeprefix("refused:")] += 1
            if len(self.refusal_examples) < 5:
                self.refusal_examples.append(f"{case.family}: {p.detail[:200]}")
        self.families[case.family] += 1
        if p.outcome.startswith("unexpected") and len(self.examples) < 20:
            self.examples.append(
                {
                    "outcome": p.outcome,
                    "detail": p.detail[:300],
                    "family": case.family,
                    "case_seed": case.seed,
                    "sent_hex": [s[:400] for s in p.sent[:8]],
                }
            )


async def good_client(url: str, tally: Tally, stop: trio.Event) -> None:
    """One whole session every `GOOD_CLIENT_EVERY_S`: it must always work."""
    while not stop.is_set():
        await good_session(url, tally)
        with trio.move_on_after(GOOD_CLIENT_EVERY_S):
            await stop.wait()


async def good_session(url: str, tally: Tally) -> None:
    try:
        with trio.fail_after(ANSWER_TIMEOUT_S * 2):
            async with open_session(url) as session:
                uid = await session.say("ok")
                spoken = await session.receive_utterance(uid)
                assert spoken.pcm, "no audio"
                await session.ping()
        tally.good_ok += 1
    except Exception as exc:  # every failure is counted and reported
        tally.good_failed.append(repr(exc)[:200])


async def worker(
    i: int, seed: int, host: str, port: int, tally: Tally, deadline: float, alone: trio.Lock
) -> None:
    rng = random.Random(f"{seed}:{i}")
    while trio.current_time() < deadline:
        case = make_case(rng.getrandbits(63))
        if not case.alone:
            tally.add(case, await play(case, host, port))
            continue
        async with alone:  # one at a time, and the frame bucket refilled after it
            tally.add(case, await play(case, host, port))
            await trio.sleep(FLOOD_PAUSE_S)


async def probe_bugs(d: DaemonProcess) -> tuple[dict[str, Any], dict[str, Any], int]:
    """Each bug's reproduction of `fuzz/known_bugs.py` (a Hello), once, alone: what the daemon
    answered and how many log records with a traceback it left (outside the run's log check).
    Returns the open ones' answers, the fixed ones' and how many of those regressed (not
    Error BAD_OPTIONS, close 1002, no traceback)."""
    open_bugs: dict[str, Any] = {}
    fixed: dict[str, Any] = {}
    regressed = 0
    active = known_bugs.active()
    bugs = [(n, b, open_bugs) for n, b in sorted(known_bugs.KNOWN_BUGS.items()) if n in active]
    bugs += [(n, b, fixed) for n, b in sorted(known_bugs.FIXED_BUGS.items())]
    for name, (_, options, _), out in bugs:
        mark = d.log_size()
        client = await RawClient.connect(d.host, d.port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.run_reader)
            await client.send_message(encode(fr.Hello(options=options)))
            with trio.move_on_after(3.0):
                while not client.frames and not client.done.is_set():
                    await client.received.wait()
            await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
        await client.aclose()
        records, _ = d.log(mark)
        answer = [type(f).__name__ for f in client.frames]
        errors = [f for f in client.frames if isinstance(f, fr.Error)]
        tracebacks = sum("exc" in r for r in records)
        out[name] = {
            "answer": answer + ([f"{errors[0].code.name}: {errors[0].message}"] if errors else []),
            "close_code": client.close_code,
            "log_tracebacks": tracebacks,
        }
        if out is fixed:
            documented = [e.code for e in errors] == [fr.ErrorCode.BAD_OPTIONS]
            ok = documented and client.close_code == 1002 and not tracebacks
            out[name]["as_documented"] = ok
            regressed += not ok
    return open_bugs, fixed, regressed


def log_findings(d: DaemonProcess, start: int) -> dict[str, Any]:
    records, other = d.log(start)
    bad = [r for r in records if "exc" in r or r.get("level") in ("error", "critical")]
    errors = collections.Counter(
        str(r.get("code")) for r in records if r.get("event") == "session error"
    )
    return {
        "records": len(records),
        "tracebacks_or_errors": len(bad),
        "examples": [{k: str(v)[:600] for k, v in r.items()} for r in bad[:5]],
        "other_lines": len(other),
        "other_examples": other[:10],
        "session_errors_logged": dict(sorted(errors.items())),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    # (counted: its forced collection at the end names the reference cycles left, if any)
    d = await trio.to_thread.run_sync(lambda: start_daemon(config=DAEMON_CONFIG, count_tasks=True))
    tally = Tally()
    started = time.monotonic()
    try:
        known, fixed, regressed = await probe_bugs(d)
        mark = d.log_size()
        deadline = trio.current_time() + args.seconds
        stop = trio.Event()
        died = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(good_client, d.url, tally, stop)
            async with trio.open_nursery() as workers:
                alone = trio.Lock()
                for i in range(args.connections):
                    workers.start_soon(worker, i, args.seed, d.host, d.port, tally, deadline, alone)
                while trio.current_time() < deadline:
                    if not d.alive():
                        died = True
                        workers.cancel_scope.cancel()
                        break
                    await trio.sleep(0.5)
            stop.set()
        garbage: dict[str, Any] = {}
        sessions_left: float | None = None
        if not died:
            await good_session(d.url, tally)  # the daemon still serves, after all of it
            # every session ended (the vanished ones' resume windows too), then a forced
            # collection: a reference cycle left by any of them would, in the daemon, have
            # waited frozen for a sweep that steady traffic does not bring (fuzz/soak.py)
            settled = await settle(d)
            garbage = settled.get("garbage") or {}
            sessions_left = settled.get("sessions_active")
        await trio.sleep(0.5)
        metrics = await trio.to_thread.run_sync(d.metrics)
        log = log_findings(d, mark)
    finally:
        exit_status = await trio.to_thread.run_sync(d.stop)
        d.cleanup()
    unexpected = collections.Counter(
        {k: v for k, v in tally.outcomes.items() if k.startswith("unexpected")}
    )
    if tally.good_failed:
        unexpected["unexpected:good_client_failed"] = len(tally.good_failed)
    if log["tracebacks_or_errors"]:
        unexpected["unexpected:log_traceback_or_error"] = log["tracebacks_or_errors"]
    if log["other_lines"]:
        unexpected["unexpected:log_not_json"] = log["other_lines"]
    if died:
        unexpected["unexpected:daemon_died"] = 1
    if regressed:
        unexpected["unexpected:fixed_bug_regressed"] = regressed
    if not died and sessions_left != 0:  # (a resume window is RESUME_WINDOW_S; settle waits 60 s)
        unexpected["unexpected:sessions_left"] = 1
    if not died and garbage.get("garbage_duplexd") is None:  # no collection
        unexpected["unexpected:reference_cycles_not_measured"] = 1
    elif garbage.get("garbage_duplexd"):
        unexpected["unexpected:reference_cycles"] = garbage["garbage_duplexd"]
    if exit_status != 0:
        unexpected["unexpected:daemon_exit_status"] = 1
    return {
        "seconds": round(time.monotonic() - started, 1),
        "seed": args.seed,
        "concurrency": args.connections,
        "config": DAEMON_CONFIG,
        "inputs": {
            "connections": tally.connections,
            "messages": tally.messages,
            "frames": tally.frames,
        },
        "families": dict(sorted(tally.families.items())),
        "outcomes": dict(sorted(tally.outcomes.items())),
        "refusals": {
            "total": sum(tally.refusals.values()),
            "by_status": dict(sorted(tally.refusals.items())),
            "examples": tally.refusal_examples,
            "daemon_rejected": {  # every upgrade the daemon refused, by reason (/metrics)
                k.split('"')[1]: v
                for k, v in metrics.items()
                if k.startswith("duplexd_sessions_rejected")
            },
        },
        "unexpected": sum(unexpected.values()),
        "unexpected_by_kind": dict(sorted(unexpected.items())),
        "unexpected_examples": tally.examples,
        "good_client": {"sessions_ok": tally.good_ok, "failed": tally.good_failed[:10]},
        "daemon": {
            "died": died,
            "exit_status": exit_status,
            "sessions_accepted": metrics.get("duplexd_sessions_total"),
            "open_session_errors": {  # from /metrics: sessions that got past Welcome
                k.split('"')[1]: v
                for k, v in metrics.items()
                if k.startswith("duplexd_session_errors")
            },
            "log": log,
        },
        "sessions_left": sessions_left,
        "garbage_left": garbage,
        "known_bugs": known,
        "fixed_bugs": fixed,
    }


async def replay(seed: int) -> dict[str, Any]:
    d = await trio.to_thread.run_sync(lambda: start_daemon(config=DAEMON_CONFIG, count_tasks=False))
    try:
        case = make_case(seed)
        mark = d.log_size()
        played = await play(case, d.host, d.port)
        await trio.sleep(0.5)
        records, other = d.log(mark)
    finally:
        await trio.to_thread.run_sync(d.stop)
        d.cleanup()
    return {
        "case_seed": seed,
        "family": case.family,
        "end": case.end,
        "outcome": played.outcome,
        "detail": played.detail,
        "sent_hex": played.sent,
        "daemon_log": records,
        "daemon_other_lines": other,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fuzz.network", description=DESCRIPTION)
    p.add_argument("--seconds", type=float, default=120.0, help="how long to fuzz (120)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: from time)")
    p.add_argument("--connections", type=int, default=12, help="concurrent connections (12)")
    p.add_argument("--replay", type=int, metavar="CASE_SEED", help="run one case, verbosely")
    p.add_argument("--json", default="", help="also write the summary here")
    args = p.parse_args(argv)
    if args.replay is not None:
        print(json.dumps(trio.run(replay, args.replay), indent=2))
        return 0
    if args.seed is None:
        args.seed = int(time.time())
    summary = trio.run(run, args)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0 if summary["unexpected"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
