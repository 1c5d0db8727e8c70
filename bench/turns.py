"""Turn-taking speed (`python -m bench.turns`): end of speech -> final transcript, one session.

A fresh duplexd daemon (tone engine: the downlink is idle here) is started; one session opens
its 16 kHz uplink and a microphone sends, in real time (one 20 ms frame every 20 ms on absolute
deadlines, quiet room noise in between), a set of spoken turns `GAP_S` apart: complete
sentences, and sentences with a pause in the middle (`PAUSE_S` of silence inserted before one
word, where a speaker stops to think: "I'd like a table for ... four."). The speech is the
bundled VITS voice (deterministic), synthesized whole with its word marks, so the pause sits
inside a sentence's prosody, not after a clipped sentence's falling end.

Measured on the client's clock, from the capture time of the last speech sample of each turn
(end of speech, found on the audio's envelope):

- end of speech -> SpeechStopped, -> the final Transcript and -> the first AUDIO frame of the
  reply (the demo responder of `duplexd chat`, streamed word by word as it does) (p50, p95,
  and the daemon's first turn on its own: what a cold start costs);
- premature end of turn: a SpeechStopped that falls inside a turn (before its last word started)
  splits the turn; the rate over the paused turns is the figure (the complete ones are reported
  too);
- words missed: the turn's words not found in order in the final transcripts of its pieces
  (`missed_words`, normalized as the WER figures are): Whisper's own errors (a few %), and words the
  daemon lost (a piece never transcribed, or its start cut off);
- the end of turn's share, as the daemon reports it (TURN_END, `vad.end_reports`, always asked
  for here): what ended each turn (the words, the turn model, `max_silence_ms`), the silence it
  needed, and how long the daemon then waited for that answer (p50, p95 over the turns);
- what the sessions' ASR did (their STATS at the end, summed: `ASR_STATS`): the decodes' wall
  time and the audio they decoded, the speculative transcripts, the streaming passes; and the
  end of turn's questions: the turn model's runs, and the questions the transcript answered
  alone (ends.py).

`--sentences held-out` speaks another set instead, one nobody tuned a rule on: the 16
sentences of `bench.word_timing`, each whole and each with the pause before its middle word
(`held_out`).

    python -m bench.turns [--rounds 2] [--options '{"vad": {"smart_end": false}}'] [--json F]
                          [--sentences held-out]
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import trio

RATE: Final = 16_000
FRAME: Final = 320
FRAME_S: Final = 0.020
GAP_S: Final = 2.5  # silence after each turn (more than any end-of-turn wait)
LEAD_S: Final = 1.0
PAUSE_S: Final = 0.6
NOISE_DBFS: Final = -60.0

F32 = npt.NDArray[np.float32]

COMPLETE: Final = (
    "Could you tell me what the weather will be like tomorrow?",
    "Please book a table for two at seven thirty.",
    "What time does the last train leave tonight?",
    "I would like to order a large pizza with mushrooms.",
    "Thank you, that is all I needed.",
    "Can you play some quiet music in the kitchen?",
)
# (sentence, index of the word the speaker pauses before)
PAUSED: Final = (
    ("I'd like a table for four.", 5),
    ("Can you remind me to call my mother tomorrow?", 6),
    ("The meeting is on Tuesday afternoon.", 4),
    ("I want to fly to Paris next week.", 5),
    ("Let me think, maybe the blue one.", 4),
    ("Please send the report to Maria and James.", 5),
    ("My flight lands at around nine in the evening.", 5),
    ("Could you turn the lights in the living room off?", 6),
)


# ---------------------------------------------------------------------------- the speech


@dataclass(frozen=True)
class Spoken:
    """One turn: 16 kHz audio; `end`: its last speech sample + 1; `pause`: the inserted
    silence [start, end) (None: a complete sentence spoken straight through)."""

    text: str
    audio: F32
    end: int
    pause: tuple[int, int] | None = None


def speech_onset(audio: F32, level: float = 0.02) -> int:
    """First sample whose 5 ms neighbourhood exceeds `level` (the true speech onset)."""
    env = np.convolve(np.abs(audio), np.ones(80) / 80, mode="same")
    return int(np.argmax(env > level / 4))


def speech_end(audio: F32, level: float = 0.02) -> int:
    """One past the last sample whose 5 ms neighbourhood exceeds `level` (the envelope)."""
    env = np.convolve(np.abs(audio), np.ones(80) / 80, mode="same")
    above = np.flatnonzero(env > level / 4)
    return int(above[-1]) + 1 if len(above) else 0


def with_pause(voice: Any, text: str, word: int | None, pause_s: float = PAUSE_S) -> Spoken:
    """`text` spoken by `voice` (a `WordTimedVoice`) at 16 kHz, with `pause_s` of silence
    inserted where word number `word` starts (None: no pause)."""
    import soxr

    chunks = list(voice.synthesize_words(text))
    audio = np.concatenate([a for a, _ in chunks]).astype(np.float32)
    marks = [m for _, ms in chunks for m in ms]
    rate = voice.sample_rate_hz
    out = np.asarray(soxr.resample(audio, rate, RATE), dtype=np.float32)
    if word is None:
        return Spoken(text, out, speech_end(out))
    # cut in the quietest 10 ms around the end of the word before (-10..+30 ms): after it,
    # before the transition into this one (which its reported start includes)
    end = round(marks[word - 1].end_sample * RATE / rate)
    lo = max(0, end - 160)
    env = np.convolve(np.abs(out[lo : end + 640]), np.ones(160) / 160, mode="valid")
    cut = lo + int(np.argmin(env)) + 80
    gap = np.zeros(round(pause_s * RATE), dtype=np.float32)
    joined = np.concatenate((out[:cut], gap, out[cut:]))
    return Spoken(text, joined, speech_end(joined), (cut, cut + len(gap)))


def held_out() -> tuple[tuple[str, ...], tuple[tuple[str, int], ...]]:
    """`bench.word_timing`'s sentences: (complete, paused before the middle word)."""
    from .word_timing import SENTENCES

    return SENTENCES, tuple((t, len(t.split()) // 2) for t in SENTENCES)


def synthesize_set(path: str, which: str = "turns") -> None:
    """The bench's turns (`which`: "turns" or "held-out"), spoken by the joe voice, to `path`
    (.npz)."""
    from duplexd.engines.vits.engine import VitsEngine

    complete, paused = (COMPLETE, PAUSED) if which == "turns" else held_out()
    engine = VitsEngine(device="cpu", deterministic=True, warmup=False)
    try:
        voice = engine.open_voice("joe")
        spoken = [with_pause(voice, t, None) for t in complete]
        spoken += [with_pause(voice, t, w) for t, w in paused]
    finally:
        engine.close()
    arrays: dict[str, Any] = {}
    for i, s in enumerate(spoken):
        arrays[f"audio{i}"] = s.audio
        arrays[f"meta{i}"] = np.array([s.end, *(s.pause or (-1, -1))], dtype=np.int64)
    arrays["texts"] = np.array([s.text for s in spoken])
    np.savez(path, **arrays)


def load_set(path: str) -> list[Spoken]:
    data = np.load(path)
    out = []
    for i, text in enumerate(data["texts"]):
        end, p0, p1 = (int(x) for x in data[f"meta{i}"])
        out.append(Spoken(str(text), data[f"audio{i}"], end, (p0, p1) if p0 >= 0 else None))
    return out


def make_set(directory: str, which: str = "turns") -> str:
    """Synthesize the set in a subprocess (torch and VITS stay out of the bench process)."""
    from .daemon import synthesize_in_subprocess

    path = os.path.join(directory, "turns.npz")
    flag = "--synthesize" if which == "turns" else "--synthesize-held-out"
    return synthesize_in_subprocess("bench.turns", path, flag=flag)


# ---------------------------------------------------------------------------- one session


@dataclass
class Placed:
    """A turn on the microphone's timeline (uplink samples)."""

    spoken: Spoken
    start: int

    @property
    def end(self) -> int:
        return self.start + self.spoken.end


@dataclass
class Record:
    t0: float = 0.0
    stopped: list[tuple[float, int]] = field(default_factory=list)  # (arrival, uplink_sample)
    ends: dict[int, Any] = field(default_factory=dict)  # uplink_sample -> its TurnEnd report
    finals: list[tuple[float, int, int, str]] = field(default_factory=list)
    replies: dict[int, int] = field(default_factory=dict)  # reply uid -> its turn's end_sample
    first_audio: dict[int, float] = field(default_factory=dict)  # turn end_sample -> arrival
    to_answer: list[tuple[str, int]] = field(default_factory=list)  # (text, end_sample)
    wake: trio.Event = field(default_factory=trio.Event)
    stats: dict[str, Any] = field(default_factory=dict)  # the session's STATS at its end

    def on_frame(self, frame: Any, now: float) -> None:
        from duplexd.protocol import frames as fr

        if isinstance(frame, fr.SpeechStopped):
            self.stopped.append((now, frame.uplink_sample))
        elif isinstance(frame, fr.TurnEnd):
            self.ends[frame.uplink_sample] = frame
        elif isinstance(frame, fr.Transcript) and frame.final:
            self.finals.append((now, frame.start_sample, frame.end_sample, frame.text))
            self.to_answer.append((frame.text, frame.end_sample))
            self.wake.set()
        elif isinstance(frame, fr.Audio) and frame.seq == 0:
            turn_end = self.replies.get(frame.utterance_id)
            if turn_end is not None:
                self.first_audio.setdefault(turn_end, now)


async def answer(session: Any, rec: Record) -> None:
    """The demo responder's reply to each final transcript, streamed word by word as `duplexd
    chat` does; its first AUDIO frame is the turn's first reply audio."""
    from duplexd.client.agent import DemoResponder

    responder = DemoResponder()
    while True:
        await rec.wake.wait()
        rec.wake = trio.Event()
        while rec.to_answer:
            text, end_sample = rec.to_answer.pop(0)
            uid = session.new_utterance_id()
            rec.replies[uid] = end_sample
            async for chunk in responder.reply(text):
                await session.send_text(uid, chunk)
            await session.send_text(uid, "", end=True)


def timeline(turns: list[Spoken], rounds: int) -> tuple[F32, list[Placed]]:
    placed = []
    pos = round(LEAD_S * RATE)
    for _ in range(rounds):
        for s in turns:
            placed.append(Placed(s, pos))
            pos += len(s.audio) + round(GAP_S * RATE)
    noise = np.random.default_rng(1).normal(0.0, 10 ** (NOISE_DBFS / 20), pos)
    mic = noise.astype(np.float32)
    for p in placed:
        mic[p.start : p.start + len(p.spoken.audio)] += p.spoken.audio
    return mic, placed


async def drive_all(url: str, mic: F32, options: dict[str, Any], sessions: int) -> list[Record]:
    """`sessions` sessions at once, each with the whole microphone timeline, started
    `GAP_S / sessions` apart (so their turns do not all end at the same instant)."""
    recs = [Record() for _ in range(sessions)]
    options = {**options, "vad": {**options.get("vad", {}), "end_reports": True}}  # TURN_END
    async with trio.open_nursery() as nursery:
        for rec in recs:
            nursery.start_soon(drive, url, mic, options, rec)
            await trio.sleep(GAP_S / sessions)
    return recs


async def drive(url: str, mic: F32, options: dict[str, Any], rec: Record) -> Record:
    """One session: send `mic` in real time, then wait `GAP_S` for the last results."""
    from duplexd.client.session import open_session

    pcm = (np.clip(mic, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    frames = len(mic) // FRAME
    async with open_session(
        url, uplink_rate_hz=RATE, options=options, on_frame=rec.on_frame
    ) as session:

        async def drain() -> None:
            async for _ in session:
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            nursery.start_soon(answer, session, rec)
            rec.t0 = t0 = trio.current_time()
            for k in range(frames):
                await trio.sleep_until(t0 + (k + 1) * FRAME_S)  # sent once captured
                await session.send_audio(pcm[2 * k * FRAME : 2 * (k + 1) * FRAME])
            await trio.sleep(GAP_S)
            rec.stats = await session.stats()
            nursery.cancel_scope.cancel()
    return rec


# ---------------------------------------------------------------------------- figures


def words_of(text: str) -> list[str]:
    """`text`'s words as the WER figures compare them (`asr_helpers.normalize_text`)."""
    from .asr_helpers import normalize_text

    return normalize_text(text).split()


def missed_words(source: str, heard: list[str]) -> int:
    """How many of `source`'s words are not found, in order, in the texts `heard`."""
    src, got = words_of(source), words_of(" ".join(heard))
    matcher = difflib.SequenceMatcher(a=src, b=got, autojunk=False)
    return len(src) - sum(block.size for block in matcher.get_matching_blocks())


# the sessions' ASR counters (STATS), summed: decode wall time (s) for audio decoded (s),
# the streaming passes, the finals decoded as a tail alone, the speculative transcripts
ASR_STATS: Final = (
    "asr_s",
    "asr_audio_s",
    "asr_passes",
    "asr_passes_skipped",
    "partial_transcripts",
    "asr_tails",
    "asr_speculations",
    "asr_speculations_used",
    "asr_speculations_empty",
    "asr_speculations_moot",
    "transcripts",
    "end_checks",
    "end_checks_ahead",
    "end_checks_words",
)


def _pct(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(xs, q)), 1) if xs else None


def _answered(rec: Record) -> list[tuple[tuple[float, int, int, str], float]]:
    """(final transcript, arrival of its reply's first audio) for the finals answered."""
    return [(f, rec.first_audio[f[2]]) for f in rec.finals if f[2] in rec.first_audio]


def measure(recs: list[Record], placed: list[Placed]) -> dict[str, Any]:
    """Per turn of each session: end of speech -> SpeechStopped / final Transcript / first
    reply audio (ms), premature ends; and their percentiles over all sessions."""
    rows = [row | {"session": k} for k, rec in enumerate(recs) for row in _rows(rec, placed)]
    asr = {k: round(sum(rec.stats.get(k, 0) for rec in recs), 3) for k in ASR_STATS}
    return _summary(rows) | {"asr": asr}


def _rows(rec: Record, placed: list[Placed]) -> list[dict[str, Any]]:
    rows = []
    for i, p in enumerate(placed):
        t_end = rec.t0 + p.end / RATE  # capture time of the last speech sample
        inside = [s for _, s in rec.stopped if p.start < s < p.end - RATE // 10]
        cut_by = [r.by.name.lower() for s in inside if (r := rec.ends.get(s)) is not None]
        after = [(t, s) for t, s in rec.stopped if p.end - RATE // 10 <= s < p.end + GAP_S * RATE]
        report = rec.ends.get(after[0][1]) if after else None
        finals = [t for t, a, b, _ in rec.finals if a < p.end and b >= p.end - RATE // 10]
        replies = [t for (_, a, b, _), t in _answered(rec) if a < p.end and b >= p.end - RATE // 10]
        texts = [x for _, a, b, x in rec.finals if p.start - RATE // 2 <= a < p.end]
        rows.append(
            {
                "turn": i,
                "text": p.spoken.text,
                "paused": p.spoken.pause is not None,
                "premature": len(inside),
                "premature_by": cut_by,  # what ended the turn too soon (TURN_END)
                "stopped_ms": round(1000 * (after[0][0] - t_end), 1) if after else None,
                "ended_by": report.by.name.lower() if report is not None else None,
                "silence_ms": round(report.silence_samples / RATE * 1000, 1) if report else None,
                "decided_ms": round(report.decided_us / 1000, 1) if report else None,
                "final_ms": round(1000 * (finals[0] - t_end), 1) if finals else None,
                "reply_ms": round(1000 * (replies[0] - t_end), 1) if replies else None,
                "transcripts": texts,
                "words": len(words_of(p.spoken.text)),
                "missed_words": missed_words(p.spoken.text, texts),
            }
        )
    return rows


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if r["final_ms"] is not None and not r["premature"]]
    cut_by = [b for r in rows for b in r.get("premature_by", [])]
    finals = [r["final_ms"] for r in ok]
    replies = [r["reply_ms"] for r in ok if r["reply_ms"] is not None]
    later = [r["final_ms"] for r in ok if r["turn"] > 0]
    stops = [r["stopped_ms"] for r in ok if r["stopped_ms"] is not None]
    reported = [r for r in ok if r.get("ended_by") is not None]
    silences = [r["silence_ms"] for r in reported]
    decided = [r["decided_ms"] for r in reported]
    paused = [r for r in rows if r["paused"]]
    complete = [r for r in rows if not r["paused"]]
    return {
        "turns": len(rows),
        "final_ms_p50": _pct(finals, 50),
        "final_ms_p95": _pct(finals, 95),
        "final_ms_first_turn": rows[0]["final_ms"] if rows else None,  # the first session's
        "reply_ms_p50": _pct(replies, 50),
        "reply_ms_p95": _pct(replies, 95),
        "reply_ms_first_turn": rows[0]["reply_ms"] if rows else None,
        "final_ms_later_p50": _pct(later, 50),
        "stopped_ms_p50": _pct(stops, 50),
        "stopped_ms_p95": _pct(stops, 95),
        "silence_ms_p50": _pct(silences, 50),
        "silence_ms_p95": _pct(silences, 95),
        "decided_ms_p50": _pct(decided, 50),
        "decided_ms_p95": _pct(decided, 95),
        "ended_by": {b: sum(r["ended_by"] == b for r in reported) for b in _BY if reported},
        "premature_by": {b: cut_by.count(b) for b in _BY if cut_by.count(b)},
        "premature_paused": sum(r["premature"] > 0 for r in paused),
        "paused_turns": len(paused),
        "premature_rate": round(sum(r["premature"] > 0 for r in paused) / len(paused), 3)
        if paused
        else None,
        "premature_complete": sum(r["premature"] > 0 for r in complete),
        "complete_turns": len(complete),
        "missing_final": sum(r["final_ms"] is None for r in rows),
        "words": sum(r["words"] for r in rows),
        "missed_words": sum(r["missed_words"] for r in rows),
        "missed_words_paused": sum(r["missed_words"] for r in paused),
        "rows": rows,
    }


def markdown(result: dict[str, Any], meta: dict[str, Any]) -> str:
    r = result
    lines = [
        f"# Turn-taking, {meta['sessions']} session(s) (`{meta['command']}`,"
        f" rev {meta['git_rev']})",
        "",
        f"{r['turns']} turns ({r['complete_turns']} complete sentences, {r['paused_turns']} "
        f"with a {int(PAUSE_S * 1000)} ms pause mid-sentence), HELLO options "
        f"`{json.dumps(meta['options'])}`; daemon start -> listening {meta['daemon_start_s']} s.",
        "",
        "| end of speech -> | p50 ms | p95 ms | first turn ms | later turns p50 ms |",
        "|---|---:|---:|---:|---:|",
        f"| final TRANSCRIPT | {r['final_ms_p50']} | {r['final_ms_p95']} "
        f"| {r['final_ms_first_turn']} | {r['final_ms_later_p50']} |",
        f"| SPEECH_STOPPED | {r['stopped_ms_p50']} | {r['stopped_ms_p95']} | | |",
        f"| first reply AUDIO (demo responder) | {r['reply_ms_p50']} | {r['reply_ms_p95']} "
        f"| {r['reply_ms_first_turn']} | |",
        "",
        f"Premature end of turn: {r['premature_paused']} of {r['paused_turns']} paused turns "
        f"({100 * (r['premature_rate'] or 0):.1f} %), {r['premature_complete']} of "
        f"{r['complete_turns']} complete ones; turns without a final transcript: "
        f"{r['missing_final']}. Words not in the transcripts: {r['missed_words']} of "
        f"{r['words']} ({r['missed_words_paused']} in the paused turns).",
        "",
        _ends_line(r),
        "",
        _asr_line(r.get("asr", {})),
        "",
        "| # | turn | premature | ended by | silence ms | decided ms | stopped ms | final ms "
        "| reply ms | words missed |",
        "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['turn']} | {row['text']} | {row['premature']} | {row.get('ended_by')} "
            f"| {row.get('silence_ms')} | {row.get('decided_ms')} | {row['stopped_ms']} "
            f"| {row['final_ms']} | {row['reply_ms']} | {row['missed_words']} |"
        )
    return "\n".join(lines) + "\n"


_BY: Final = ("words", "model", "max_silence", "silence", "forgiven")


def _ends_line(r: dict[str, Any]) -> str:
    """The end of turn's share (TURN_END) over the turns that ended whole."""
    by = r.get("ended_by") or {}
    if not by:
        return "End of turn: no TURN_END reports."
    counts = ", ".join(f"{name.replace('_', ' ')} {n}" for name, n in by.items() if n)
    cut = ", ".join(f"{name.replace('_', ' ')} {n}" for name, n in r["premature_by"].items())
    return (
        f"End of turn (the daemon's TURN_END, turns that ended whole): ended by {counts}; "
        f"silence needed p50 / p95 {r['silence_ms_p50']} / {r['silence_ms_p95']} ms, then "
        f"decided after {r['decided_ms_p50']} / {r['decided_ms_p95']} ms. Premature ends "
        f"by {cut or 'none'}."
    )


def _asr_line(asr: dict[str, Any]) -> str:
    if not asr:
        return "ASR: no STATS."
    return (
        f"ASR (all sessions, STATS): {asr['asr_s']} s of decodes (wall) for "
        f"{asr['asr_audio_s']} s of audio; {asr['transcripts']} finals, "
        f"{asr['asr_speculations']} speculative transcripts "
        f"({asr['asr_speculations_used']} used, {asr.get('asr_speculations_empty', 0)} "
        f"empty: decoded again; {asr.get('asr_speculations_moot', 0)} more made moot by a later "
        f"silence, no decoder run), {asr['asr_passes']} streaming passes "
        f"({asr['asr_passes_skipped']} skipped, {asr['partial_transcripts']} partials), "
        f"{asr['asr_tails']} finals decoded as a tail alone. End of turn: "
        f"{asr.get('end_checks', 0)} turn-model runs ({asr.get('end_checks_ahead', 0)} "
        f"answered ahead), {asr.get('end_checks_words', 0)} questions answered by the "
        "transcript alone."
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.turns", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2, help="times the turn set is spoken (2)")
    p.add_argument("--sessions", type=int, default=1, help="concurrent sessions (1)")
    p.add_argument("--options", default="{}", help="HELLO options (JSON), e.g. vad settings")
    p.add_argument("--url", default="", help="a running duplexd instead of a fresh one")
    p.add_argument("--json", default="", metavar="PATH")
    p.add_argument(
        "--sentences",
        choices=("turns", "held-out"),
        default="turns",
        help="the turn set: this bench's (turns), or bench.word_timing's (held-out)",
    )
    p.add_argument("--synthesize", default="", metavar="PATH", help=argparse.SUPPRESS)
    p.add_argument("--synthesize-held-out", default="", metavar="PATH", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.synthesize or args.synthesize_held_out:
        synthesize_set(
            args.synthesize or args.synthesize_held_out, "turns" if args.synthesize else "held-out"
        )
        return 0
    from .__main__ import git_rev
    from .daemon import ServerFailed, tone_daemon

    options = json.loads(args.options)
    with tempfile.TemporaryDirectory(prefix="bench-turns-") as tmp:
        print("bench.turns: synthesizing the turns (VITS)...", file=sys.stderr)
        turns = load_set(make_set(tmp, args.sentences))
    mic, placed = timeline(turns, args.rounds)
    started = time.monotonic()
    try:
        with tone_daemon(args.url) as (url, server):
            daemon_start_s = round(time.monotonic() - started, 2) if server else None
            print(f"bench.turns: {len(mic) / RATE:.0f} s of microphone...", file=sys.stderr)
            recs = trio.run(drive_all, url, mic, options, args.sessions)
    except ServerFailed as exc:
        print(f"bench.turns: {exc}", file=sys.stderr)
        return 1
    result = measure(recs, placed)
    cmd = " ".join(["python -m bench.turns", *(argv if argv is not None else sys.argv[1:])])
    meta = {
        "command": cmd,
        "git_rev": git_rev(),
        "options": options,
        "sessions": args.sessions,
        "daemon_start_s": daemon_start_s,
        "cpu_count": os.cpu_count(),
    }
    print(markdown(result, meta))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, **result}, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
