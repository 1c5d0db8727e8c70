"""Uplink load (`python -m bench --uplink`): every session's microphone, in real time.

Each duplexd session sends one 20 ms AudioUp frame (16 kHz s16le) every 20 ms on absolute
deadlines (frame k leaves once it has been "captured", at start + (k + 1) x 20 ms). The
microphone hears low-level room noise; with `--uplink-echo-db` also the session's own received
downlink audio (48 kHz -> 16 kHz, played back like a player with a queue would, then delayed and
attenuated; with `--uplink-echo-room NAME` through that room of `bench.rooms` instead: its
delay, reverberation, loudspeaker, level and path change); and, in the interrupting sessions,
the user's voice: a VITS clip of the "other speaker" (slower, pitched up; see tests/speech.py),
synthesized once per bench run in a subprocess, saved as .npy and loaded by every worker. The
clip replaces the client's Interrupt: it is injected at a random moment while the agent's
utterance plays, and the server's VAD must barge in.

Measured (client clock, arrival times from the SDK reader):
- VAD barge-in latency: send time of the AudioUp frame that holds the clip's speech onset
  (with `--uplink-jitter-ms`: when it would have left without the network's delay, which
  then counts) -> Interrupted(vad) received; no Interrupted(vad) within `VAD_MISS_S` is a
  miss (or "no target" when the agent's utterance finished first, so there was nothing left
  to interrupt).
- With `--uplink-drift-ppm` the client's audio clock runs that far off the server's: frame k
  is captured at t0 + (k + 1) x 20 ms on it, and the echo is heard on it. The speaker plays on
  the server's clock (`--uplink-drift-speaker server`, as `bench.aec_drift` has it: another
  device, whose player keeps to the stream), or on the client's (`client`: one sound card,
  whose player takes each frame as it comes on that clock and plays a run back to back on it;
  its queue grows or shrinks with the drift until the run ends).
- False triggers: SpeechStarted or Interrupted(vad) outside the speech windows (first frame of
  the clip to `WINDOW_TAIL_S` after its last frame), i.e. while only noise (and echo) was sent;
  also per minute of such noise-only uplink.
"""

from __future__ import annotations

import collections
import functools
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import trio

from bench.rooms import ROOMS_BY_NAME, StreamingEcho
from bench.turns import speech_onset
from duplexd._downlink.resample import Decimator
from duplexd._uplink.reference import SentAudio
from duplexd.protocol.frames import (
    Audio,
    BargeIn,
    BargeInOutcome,
    Interrupted,
    ServerFrame,
    SpeechStarted,
    UtteranceDone,
)

RATE = 16_000
FRAME = 320  # samples per 20 ms uplink frame
FRAME_S = 0.020
USER_TEXT = "Wait, stop, I have a question."
VAD_MISS_S = 2.0  # speech onset -> Interrupted(vad) later than this: a missed barge-in
WINDOW_TAIL_S = 1.5  # SpeechStarted/Interrupted this long after the clip still belong to it
NOISE_BANK_S = 8.0
RING_S = 2.0  # the echo speaker's ring buffer
REPORT_EVERY_S = 0.2  # --uplink-echo-played: a PLAYED report this often while a run plays

F32 = npt.NDArray[np.float32]


# ---------------------------------------------------------------------------- the user's voice


def synthesize(path: str, text: str = USER_TEXT) -> None:
    """Write `text` spoken by the other speaker (16 kHz float32) to `path` (.npy)."""
    from .speech import clip  # the tests' second speaker: the VITS voice slower, pitched up

    np.save(path, clip(text, other_speaker=True))


def make_clip(directory: str, timeout_s: float = 300.0) -> str:
    """Synthesize the clip in a subprocess (no VITS model in the forking parent); its path."""
    from .daemon import synthesize_in_subprocess

    path = os.path.join(directory, "user_clip.npy")
    return synthesize_in_subprocess("bench.uplink", path, timeout_s, flag=None)


@functools.lru_cache(maxsize=4)
def load_clip(path: str) -> tuple[F32, int]:
    """(clip, onset sample), once per worker process."""
    audio = np.load(path).astype(np.float32)
    return audio, speech_onset(audio)


@functools.lru_cache(maxsize=4)
def noise_bank(dbfs: float, seed: int) -> tuple[F32, list[bytes]]:
    """`NOISE_BANK_S` of white noise at `dbfs` RMS: as floats, and as s16le frames."""
    n = int(NOISE_BANK_S / FRAME_S) * FRAME
    noise = np.random.default_rng(seed).normal(0.0, 10 ** (dbfs / 20), n).astype(np.float32)
    pcm = to_s16(noise)
    return noise, [pcm[i : i + 2 * FRAME] for i in range(0, len(pcm), 2 * FRAME)]


def to_s16(audio: F32) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def hello_options(cfg: Any) -> dict[str, Any]:
    """HELLO options: the server's VAD defaults (the barge-in mode `cfg.uplink_barge_in_mode`);
    ASR off unless `cfg.uplink_asr`."""
    vad = {"barge_in": True, "barge_in_mode": cfg.uplink_barge_in_mode}
    return {"vad": vad, "asr": {"transcripts": bool(cfg.uplink_asr)}}


# ---------------------------------------------------------------------------- the echo


class Speaker:
    """The session's loudspeaker at 16 kHz: a player with a playout buffer. The first frame
    after the queue ran dry plays `playout_s` after its arrival (a jitter buffer, as any real
    player has: browsers and WebRTC keep 20-80 ms); later frames play back to back; a frame
    that comes after its turn leaves a gap and starts a new run. An Interrupted flushes the
    queue. `playout_s` 0 is a player that starts each run on arrival (every late frame is a
    gap: the harshest echo to follow). `read` takes the microphone's share of what played.

    Each frame plays exactly where its turn is, resampled to 16 kHz as it comes (`Decimator`;
    a session rate that is no multiple of 16 kHz goes through soxr, whose blocks are placed by
    the frame their input came in: `SentAudio`, as the server dates its echo reference, and
    what it gives only after the microphone has passed its place is lost). Resampled by
    soxr and written where its blocks came out, as before, each utterance played 6-37 ms late
    at random (the end of the one before, held back, went first), and the echo path jumped
    at every utterance's start, as no real player's does. Each run is resampled as a stream of
    its own: the `Decimator`'s last milliseconds of the run before play at that run's end (or
    never: a flush drops them with the queue), not at the next run's start. (Carried over,
    after an interruption had cut a run in a loud syllable, they played as a click of up to
    -26 dBFS just before the next utterance, which no player plays and the server's reference
    does not have: a false barge-in, live, seed 58 of `bench/results/aec-runs/follow2/`.)"""

    def __init__(
        self,
        t0: float,
        downlink_rate_hz: int,
        playout_s: float,
        scale: float = 1.0,
        *,
        reports: bool = False,
    ) -> None:
        self.t0 = t0
        self.scale = scale  # its clock's 16 kHz is the server's times this (the client's)
        self.ring = np.zeros(int(RING_S * RATE), dtype=np.float32)
        self.cursor = 0  # next free sample of the queue
        self.read_to = 0  # the microphone has taken everything before this sample
        self.playout = round(playout_s * RATE)
        self._rate = downlink_rate_hz
        self._resampler: Decimator | SentAudio = (
            Decimator(downlink_rate_hz // RATE)
            if downlink_rate_hz % RATE == 0
            else SentAudio(downlink_rate_hz, RATE)
        )
        self._holds = False  # the decimator holds the tail of a run played (`_end_run`)
        # `reports`: PLAYED to send once a sample has played, as the browser client does (each
        # run's first sample, and every `REPORT_EVERY_S` of a run): (where it plays, utterance
        # id, samples of the utterance through it)
        self.reports: collections.deque[tuple[int, int, int]] | None = (
            collections.deque() if reports else None
        )
        self._report_at = 0  # a run's next periodic report from this sample on

    def play(self, pcm: bytes, now: float, utterance: tuple[int, int] = (0, 0)) -> None:
        """Queue one frame (`utterance`: its id and seq) where the player plays it."""
        x = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
        arrival = round((now - self.t0) * RATE * self.scale)
        pos = self.cursor if self.cursor >= arrival else arrival + self.playout
        if pos < 0 or pos - arrival > RING_S * RATE / 2:
            return  # before the uplink started, or queued too far ahead for the ring
        if self.reports is not None and (pos != self.cursor or pos >= self._report_at):
            uid, seq = utterance
            self.reports.append((pos, uid, seq * len(x) + 1))  # (its first sample: played)
            self._report_at = pos + round(REPORT_EVERY_S * RATE)
        previous, self.cursor = self.cursor, pos + len(x) * RATE // self._rate
        r = self._resampler
        if isinstance(r, Decimator):
            if pos != previous and self._holds:  # a new run: the last one's tail at its end
                self._end_run(previous)
                r = self._resampler
            self._write(pos - r.delay, r.process(x))  # (its delay taken back: exactly in turn)
            self._holds = True
            return
        for at, y, _ in r.add(pos / RATE, x, (0, 0)):
            self._write(round(at * RATE), y)

    def due(self, played_to: int) -> list[tuple[int, int, int]]:
        """The PLAYED reports whose sample has played before `played_to` (this clock's 16 kHz
        sample): (utterance id, samples played, the client's clock in µs when it played)."""
        out = []
        while self.reports and self.reports[0][0] < played_to:
            pos, uid, samples = self.reports.popleft()
            out.append((uid, samples, round(pos * 1e6 / RATE)))
        return out

    def flush(self, now: float) -> None:
        pos = max(0, round((now - self.t0) * RATE * self.scale))
        if self.cursor > pos:
            self._write(pos, np.zeros(self.cursor - pos, dtype=np.float32))
        if self.reports is not None:  # (what is flushed never plays)
            while self.reports and self.reports[-1][0] >= pos:
                self.reports.pop()
        self.cursor = pos
        # (what a resampler held back is dropped too: the next run starts afresh)
        if isinstance(self._resampler, SentAudio):
            self._resampler = SentAudio(self._rate, RATE)
        else:
            self._resampler, self._holds = Decimator(self._rate // RATE), False

    def _end_run(self, end: int) -> None:
        """The run that ended at sample `end` is over: what the decimator still holds of it
        plays there (its filter's tail), and the next run is resampled afresh."""
        r = self._resampler
        assert isinstance(r, Decimator)
        self._write(end - r.delay, r.process(np.zeros(2 * r.delay * r.factor, dtype=np.float32)))
        self._resampler, self._holds = Decimator(r.factor), False

    def _write(self, pos: int, y: F32) -> None:
        if pos < self.read_to:  # the microphone has passed it: too late to be heard
            y, pos = y[self.read_to - pos :], self.read_to
        n = len(self.ring)
        i = pos % n
        first = min(len(y), n - i)
        self.ring[i : i + first] = y[:first]
        self.ring[: len(y) - first] = y[first:]

    def read(self, pos: int, count: int) -> F32:
        out = np.zeros(count, dtype=np.float32)
        self.read_to = max(self.read_to, pos + count)
        if pos + count <= 0:
            return out
        skip = max(0, -pos)
        pos, count = pos + skip, count - skip
        n = len(self.ring)
        i = pos % n
        first = min(count, n - i)
        out[skip : skip + first] = self.ring[i : i + first]
        out[skip + first :] = self.ring[: count - first]
        self.ring[i : i + first] = 0
        self.ring[: count - first] = 0
        return out


# ---------------------------------------------------------------------------- one session's mic


@dataclass
class Injection:
    """One injection of the user's clip, from `start` (uplink sample)."""

    uid: int
    start: int
    first_frame: int
    onset_frame: int
    last_frame: int
    t_onset_planned: float
    t_start: float | None = None  # send time of the first frame with the clip
    t_onset: float | None = None  # ... of the frame with the speech onset
    t_end: float | None = None  # ... of the last frame with the clip
    latency: float | None = None  # onset -> Interrupted(vad)
    ended_first: bool = False  # the agent's utterance finished before any Interrupted(vad)
    onset_sent: trio.Event = field(default_factory=trio.Event)
    vad: trio.Event = field(default_factory=trio.Event)
    finished: trio.Event = field(default_factory=trio.Event)

    def covers(self, t: float) -> bool:
        """Whether speech events at `t` belong to this injection."""
        return self.t_end is None or t < self.t_end + WINDOW_TAIL_S


class Mic:
    """One session's uplink: builds and sends the frames, and classifies the VAD's frames."""

    def __init__(self, cfg: Any, index: int, out: dict[str, Any]) -> None:
        self.out = out
        self.active = True
        self.noise, self.noise_frames = noise_bank(cfg.uplink_noise_dbfs, cfg.seed)
        self.offset = (index * 997) % len(self.noise_frames)  # sessions hear different noise
        self.clip: F32 | None = None
        self.clip_onset = 0
        if cfg.uplink_clip:
            self.clip, self.clip_onset = load_clip(cfg.uplink_clip)
        self.echo_gain = None if cfg.uplink_echo_db is None else 10 ** (cfg.uplink_echo_db / 20)
        self.echo_delay = round(cfg.uplink_echo_delay_ms / 1000 * RATE)
        self.room: StreamingEcho | None = None
        if cfg.uplink_echo_room is not None:  # the room brings its own delay
            self.room = StreamingEcho(ROOMS_BY_NAME[cfg.uplink_echo_room], FRAME)
            self.echo_delay = 0
        self.playout_s = cfg.uplink_echo_playout_ms / 1000
        self.played = cfg.uplink_echo_played  # the speaker reports PLAYED
        # the client's audio clock: its 16 kHz is the server's times `scale` (the echo and the
        # frames' capture times on it); each frame then reaches the server `jitter_s` later
        # on average (exponentially distributed, in order), as over a busy network
        self.scale = 1.0 + cfg.uplink_drift_ppm * 1e-6
        self.speaker_scale = self.scale if cfg.uplink_drift_speaker == "client" else 1.0
        self.jitter_s = cfg.uplink_jitter_ms / 1000
        self.net_rng = np.random.default_rng((cfg.seed, index, 1))
        self.sent_at = 0.0  # when the last frame left
        self.echo = np.zeros(0, dtype=np.float32)  # the echo on the server's clock, from ...
        self.echo_from = 0  # ... this server sample, made up to `echo_from + len(echo)`
        self.speaker: Speaker | None = None
        self.t0 = 0.0
        self.k = 0  # next frame to send
        self.inj: Injection | None = None
        self.rng = np.random.default_rng(cfg.seed * 7919 + index)

    def expecting_vad(self) -> bool:
        return self.inj is not None and not self.inj.vad.is_set() and self.inj.t_end is None

    def inject(self, uid: int, now: float) -> Injection:
        """Start the clip at this instant of the microphone's timeline (mid-frame in general)."""
        assert self.clip is not None
        start = max(self.k * FRAME, round((now - self.t0) * RATE * self.scale))
        on = (start + self.clip_onset) // FRAME
        self.inj = Injection(
            uid=uid,
            start=start,
            first_frame=start // FRAME,
            onset_frame=on,
            last_frame=(start + len(self.clip) - 1) // FRAME,
            t_onset_planned=self.t0 + (on + 1) * FRAME_S / self.scale,
        )
        return self.inj

    def on_frame(self, frame: ServerFrame, now: float, current_epoch: int) -> None:
        """Called by the Recorder before it handles `frame` (`current_epoch`: before it)."""
        out, inj = self.out, self.inj
        if isinstance(frame, Audio):
            if self.speaker is not None and frame.epoch == current_epoch:
                self.speaker.play(frame.pcm, now, (frame.utterance_id, frame.seq))
        elif isinstance(frame, SpeechStarted):
            if inj is not None and inj.covers(now):
                out["vad_speech_started"] += self.active
            else:
                out["vad_false_speech_started"] += self.active
                if self.active:
                    out["vad_false_at"].append(now - self.t0)
        elif isinstance(frame, Interrupted):
            if self.speaker is not None:
                self.speaker.flush(now)
            if frame.vad and not (inj is not None and inj.vad.is_set() and inj.covers(now)):
                self._barge_in(now)  # (not the commit of a hold already counted)
        elif isinstance(frame, BargeIn) and frame.outcome == BargeInOutcome.HELD:
            self._barge_in(now)  # soft mode: the audio stops here (nothing is flushed)
        elif isinstance(frame, BargeIn) and frame.outcome == BargeInOutcome.RESUMED:
            if inj is not None and inj.covers(now):  # (the user's clip is a true barge-in)
                out["vad_soft_resumed"] += self.active
                if self.active:
                    out["vad_soft_resumed_why"].append(f"{frame.reason.name}: {frame.text!r}")
        elif (
            isinstance(frame, UtteranceDone)
            and inj is not None
            and frame.utterance_id == inj.uid
            and not inj.vad.is_set()
        ):
            inj.ended_first = True

    def _barge_in(self, now: float) -> None:
        """The agent's audio stopped for the user's voice (INTERRUPTED with `vad`, or a soft
        barge-in's HELD): the injection's latency, or a false barge-in."""
        out, inj = self.out, self.inj
        if inj is None or not inj.covers(now):
            out["vad_false_barge_ins"] += self.active
            if self.active:
                out["vad_false_at"].append(now - self.t0)
        elif not inj.vad.is_set():
            t_onset = inj.t_onset if inj.t_onset is not None else inj.t_onset_planned
            inj.latency = now - t_onset
            inj.vad.set()

    def build(self, k: int) -> bytes:
        inj = self.inj
        with_clip = inj is not None and inj.first_frame <= k <= inj.last_frame
        if self.speaker is None and not with_clip:
            return self.noise_frames[(self.offset + k) % len(self.noise_frames)]
        i = ((self.offset + k) % len(self.noise_frames)) * FRAME
        x = self.noise[i : i + FRAME].copy()
        lo = k * FRAME
        if self.speaker is not None:
            x += self.echo_gain * self.echo_at(lo)  # type: ignore[operator]
        if with_clip:
            assert inj is not None and self.clip is not None
            u = lo - inj.start
            part = self.clip[max(0, u) : max(0, u + FRAME)]
            at = max(0, -u)
            x[at : at + len(part)] += part[: FRAME - at]
        return to_s16(x)

    def echo_at(self, lo: int) -> F32:
        """What the microphone hears of the speaker in its frame from client sample `lo`:
        the played audio (through the room, if any), on the client's clock."""
        assert self.speaker is not None
        if self.scale == 1.0 or self.speaker.scale != 1.0:  # (the speaker on this clock too)
            played = self.speaker.read(lo - self.echo_delay, FRAME)
            return played if self.room is None else self.room.process(played)
        at = (lo + np.arange(FRAME)) / self.scale  # the frame's samples, in server samples
        while self.echo_from + len(self.echo) < at[-1] + 2:  # the room's echo, 20 ms at a time
            played = self.speaker.read(self.echo_from + len(self.echo) - self.echo_delay, FRAME)
            if self.room is not None:
                played = self.room.process(played)
            self.echo = np.concatenate((self.echo, played))
        y = np.interp(at - self.echo_from, np.arange(len(self.echo)), self.echo)
        done = int(at[-1]) - 1 - self.echo_from  # (the next frame starts after it)
        if done > 0:
            self.echo, self.echo_from = self.echo[done:], self.echo_from + done
        return y.astype(np.float32)

    async def run(self, session: Any, t0: float) -> None:
        """Send frame k once captured, at t0 + (k + 1) x 20 ms on the client's clock (and,
        with jitter, later by the network's delay), until cancelled."""
        self.t0 = t0
        if self.echo_gain is not None:
            self.speaker = Speaker(
                t0, session.sample_rate_hz, self.playout_s, self.speaker_scale,
                reports=self.played,
            )  # fmt: skip
        out = self.out
        while True:
            k = self.k
            captured = t0 + (k + 1) * FRAME_S / self.scale
            deadline = captured
            if self.jitter_s:
                late = self.net_rng.exponential(self.jitter_s)
                deadline = self.sent_at = max(self.sent_at, captured + late)
            await trio.sleep_until(deadline)
            pcm = self.build(k)
            now = trio.current_time()
            await session.send_audio(pcm)
            if (speaker := self.speaker) is not None and speaker.reports is not None:
                # (what played up to this frame's end, on the speaker's clock)
                for uid, samples, clock_us in speaker.due(
                    round((k + 1) * FRAME * speaker.scale / self.scale)
                ):
                    await session.send_played(uid, samples, clock_us=clock_us)
            self.k = k + 1
            inj = self.inj
            if inj is not None:
                if k == inj.first_frame:
                    inj.t_start = now
                if k == inj.onset_frame:
                    inj.t_onset = now - (deadline - captured)  # (the network's delay counts)
                    inj.onset_sent.set()
                if k == inj.last_frame:
                    inj.t_end = now
                    inj.finished.set()
            if self.active:
                out["uplink_frames"] += 1
                out["uplink_late_frames"] += now - deadline > FRAME_S
                if inj is None or not inj.covers(now):
                    out["uplink_noise_s"] += FRAME_S


async def speak_over(target: Any, mic: Mic, uid: int, active: Any) -> None:
    """The user talks over utterance `uid`: inject the clip, wait for the VAD's barge-in (or
    give up after `VAD_MISS_S`), let the user finish, and leave the turn's tail to the VAD."""
    out = mic.out
    inj = mic.inject(uid, trio.current_time())
    out["vad_injected"] += active()
    await inj.onset_sent.wait()
    assert inj.t_onset is not None
    with trio.move_on_at(inj.t_onset + VAD_MISS_S):
        await inj.vad.wait()
    if inj.latency is not None and inj.latency <= VAD_MISS_S:
        if active():
            out["vad_barge_in"].append(inj.latency)
    elif inj.ended_first:
        out["vad_no_target"] += active()
    else:
        out["vad_missed"] += active()
        await target.interrupt()  # stop the agent the hard way, for a clean next turn
    await inj.finished.wait()
    await trio.sleep(WINDOW_TAIL_S)  # the user's turn ends (SpeechStopped)


if __name__ == "__main__":
    synthesize(sys.argv[1], *sys.argv[2:3])
