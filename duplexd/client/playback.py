"""The chat's loudspeaker: the agent's audio to a WAV file, a sound card, or nowhere; and, from
a sound card, PLAYED reports of what it played (SPEC.md §4.8).

`PlaybackBuffer` is the browser client's jitter buffer (web/jitter.js) for a sound card's
callback, at the session rate, pure (no I/O, no threads): frames go in as they arrive (`push`);
`render(frames, clock_s)` gives the next block and says, as `Position`s, what played when on
the card's clock. Playback starts once `TARGET_MS` is buffered (or an utterance's last frame
is: a short one does not wait), then plays frames back to back; a buffer that runs dry waits
for `TARGET_MS` again. It reports the first sample of every run (an utterance's start, the
restart after the buffer ran dry: the server's echo canceller learns at once how late the echo
now comes), every `REPORT_MS` of an utterance, and a final count at its last frame or at a
flush (an interruption: what played before it; 0 for queued utterances that never played).
A run's first sample is not reported within `MIN_REPORT_GAP_MS` of the last report (at most
10 a second, SPEC.md §4.8, however often a stuttering network empties the buffer).

Without these reports a loudspeaker's echo is found by the server alone, and a run played a
few ms sooner than the sends put it leaks its first syllable (`python -m bench.aec_runs`).
"""

from __future__ import annotations

import collections
import threading
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from ..protocol import frames as fr

TARGET_MS: Final = 50.0  # buffered before a run starts (the browser client's)
REPORT_MS: Final = 200.0  # an utterance's position is reported this often while it plays
MIN_REPORT_GAP_MS: Final = 100.0  # a run's first sample is not reported sooner after another
_KEEP_UTTERANCES: Final = 64  # utterances whose next seq is remembered (late frames dropped)


@dataclass(frozen=True, slots=True)
class Position:
    """`samples` of an utterance, from its first, had played when the card's clock read
    `clock_us` (the last of them); `final`: it will play no more."""

    epoch: int
    utterance_id: int
    samples: int
    clock_us: int
    final: bool = False


class PlaybackBuffer:
    def __init__(self, rate_hz: int) -> None:
        self._rate = rate_hz
        self._target = round(TARGET_MS * rate_hz / 1000)
        self._every = round(REPORT_MS * rate_hz / 1000)
        self._gap_us = round(MIN_REPORT_GAP_MS * 1000)
        self._queue: collections.deque[fr.Audio] = collections.deque()
        self._pos = 0  # next sample of the first queued frame
        self._buffered = 0  # samples queued and not yet played
        self._playing = False
        self._report_run = False  # a run (re)started: report its first sample
        self._current: tuple[int, int] | None = None  # (epoch, utterance id) playing
        self._played = 0  # ... its samples played, from its first
        self._clock_us = 0  # ... when the last of them played
        self._since_report = 0  # its samples played since the last report
        self._last_report_us = -(1 << 62)
        self._next_seq: collections.OrderedDict[tuple[int, int], float] = collections.OrderedDict()
        self.underruns = 0
        self.late_frames = 0

    @property
    def buffered_samples(self) -> int:
        return self._buffered

    def push(self, frame: fr.Audio) -> None:
        """Queue `frame`, unless it is behind its utterance (late: dropped)."""
        key = (frame.epoch, frame.utterance_id)
        if frame.seq < self._next_seq.get(key, 0):
            self.late_frames += 1
            return
        self._next_seq.pop(key, None)
        self._next_seq[key] = float("inf") if frame.last else frame.seq + 1
        if len(self._next_seq) > _KEEP_UTTERANCES:
            self._next_seq.popitem(last=False)
        self._queue.append(frame)
        self._buffered += len(frame.pcm) // 2

    def render(self, frames: int, clock_s: float) -> tuple[bytes, list[Position]]:
        """The next `frames` samples (s16le) for the card, the first of them played at
        `clock_s` on its clock, and the positions to report."""
        out, events, i = bytearray(), [], 0
        us_per_sample = 1e6 / self._rate
        while i < frames:
            if not self._playing:
                if not self._startable():
                    break
                self._playing, self._report_run = True, True
            if not self._queue:  # dry
                if self._current is not None:
                    self.underruns += 1
                self._playing = False
                continue
            frame = self._queue[0]
            key = (frame.epoch, frame.utterance_id)
            at_us = round(clock_s * 1e6 + i * us_per_sample)
            if key != self._current:
                if self._current is not None:  # it ended without its last frame
                    events.append(self._position(final=True))
                self._current, self._since_report = key, 0
            n = min(len(frame.pcm) // 2 - self._pos, frames - i)
            out += frame.pcm[2 * self._pos : 2 * (self._pos + n)]
            first = fr.frame_samples(self._rate) * frame.seq + self._pos
            if self._report_run:  # (its first sample)
                self._report_run = False
                if at_us - self._last_report_us >= self._gap_us:
                    self._played, self._clock_us = first + 1, at_us
                    events.append(self._position(final=False))
            i += n
            self._pos += n
            self._buffered -= n
            self._since_report += n
            self._played = first + n
            self._clock_us = round(clock_s * 1e6 + (i - 1) * us_per_sample)
            if self._pos * 2 >= len(frame.pcm):
                self._queue.popleft()
                self._pos = 0
                if frame.last:
                    events.append(self._position(final=True))
                    self._current = None
                    continue
            if self._since_report >= self._every:
                events.append(self._position(final=False))
        out += bytes(2 * frames - len(out))
        return bytes(out), events

    def flush(self, clock_s: float) -> list[Position]:
        """Drop everything (an interruption): the final positions, the playing utterance's,
        then 0 for each queued one that never played."""
        events = [self._position(final=True)] if self._current is not None else []
        seen = {self._current}
        clock_us = round(clock_s * 1e6)
        for f in self._queue:
            key = (f.epoch, f.utterance_id)
            if key not in seen:
                seen.add(key)
                events.append(Position(*key, 0, clock_us, final=True))
        self._queue.clear()
        self._pos = self._buffered = 0
        self._playing = self._report_run = False
        self._current = None
        self._next_seq.clear()
        return events

    def _startable(self) -> bool:
        return self._buffered >= self._target or any(f.last for f in self._queue)

    def _position(self, *, final: bool) -> Position:
        assert self._current is not None
        self._last_report_us, self._since_report = self._clock_us, 0
        return Position(*self._current, self._played, self._clock_us, final)


class Speaker:
    """The agent's audio: to a WAV file (`out`), else a sound card (`sounddevice`: the module,
    or None), else nowhere. With a sound card, each `Position` goes to `report` (called on the
    card's thread: hand it over, never block). `flush` drops what is buffered (barge-in)."""

    def __init__(self, out: str, rate_hz: int, sounddevice: Any = None) -> None:
        self._wav: wave.Wave_write | None = None
        self._stream: Any = None
        self._rate = rate_hz
        self._buffer = PlaybackBuffer(rate_hz)
        self._lock = threading.Lock()
        self._clock: Callable[[Any], float] | None = None  # the card's clock in a callback
        self._last_clock_s = 0.0
        self.report: Callable[[list[Position]], None] | None = None
        self.samples = 0
        if out:
            self._wav = wave.open(out, "wb")  # noqa: SIM115 (closed by close())
            self._wav.setnchannels(1)
            self._wav.setsampwidth(2)
            self._wav.setframerate(rate_hz)
        elif sounddevice is not None:
            try:
                self._stream = sounddevice.RawOutputStream(
                    samplerate=rate_hz, channels=1, dtype="int16", callback=self._callback
                )
                self._stream.start()
            except Exception:
                self._stream = None
        self.kind = "file" if self._wav else "speaker" if self._stream else "none"

    def _card_clock(self, t: Any) -> float:
        """When the callback's first sample plays, in seconds of one clock for the stream's
        life: PortAudio's DAC time where the host gives one (some report 0), else the
        monotonic clock plus the stream's output latency (chosen at the first callback)."""
        if self._clock is None:
            if getattr(t, "outputBufferDacTime", 0.0) > 0.0:
                self._clock = lambda t: float(t.outputBufferDacTime)
            else:
                latency = float(getattr(self._stream, "latency", 0.0) or 0.0)
                self._clock = lambda _t: time.monotonic() + latency
        return max(0.0, self._clock(t))

    def _callback(self, outdata: Any, frames: int, t: Any, _status: Any) -> None:
        clock_s = self._card_clock(t)
        with self._lock:
            pcm, events = self._buffer.render(frames, clock_s)
            self._last_clock_s = clock_s
        outdata[:] = pcm
        if events and self.report is not None:
            self.report(events)

    def play(self, frame: fr.Audio) -> None:
        self.samples += len(frame.pcm) // 2
        if self._wav is not None:
            self._wav.writeframes(frame.pcm)
        elif self._stream is not None:
            with self._lock:
                self._buffer.push(frame)

    def flush(self) -> None:
        with self._lock:
            events = self._buffer.flush(self._last_clock_s)
        if events and self.report is not None:
            self.report(events)

    def close(self) -> None:
        if self._wav is not None:
            self._wav.close()
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
