"""A session's single writer: paced audio from the ring and control frames, in order.

Everything a session sends goes through one task (`Downlink.run`), so ordering is simple:
control frames (Interrupted, Pong, Error...) go out as soon as they are queued, audio
goes out one frame per pacer tick. The one exception keeps the order: while that task waits
with nothing to send, the tick itself sends the frame that is due (`send_now`: no task wakes
up per frame); when it cannot (a send holds the connection, the socket is full), it leaves
the frame (or the rest of it) to the task, which sends it before anything else. The ring
holds whole wire frames (16-byte audio header + PCM) written by the synthesis thread; the
writer is the ring's consumer.

Epochs make barge-in mechanical: `interrupt()` bumps the epoch and flushes the ring; any frame
of an older epoch that is still in the ring, or that a finishing synthesis thread pushes later,
is dropped when popped. The Interrupted frame is built when it is sent, from the writer's own
counters, so `samples_sent` is exactly what went out before it.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Final

import numpy as np
import trio

from .._ops.metrics import DownlinkCounters
from ..protocol import frames as fr
from ..protocol.codec import AUDIO_HEADER, encode
from .contract import (
    ENDED,
    NOT_SENT,
    PARTLY_SENT,
    SLOW_SEND_S,
    DownlinkEvents,
    FlushFn,
    SendFn,
    SendNowFn,
    send_nothing,
)
from .pacer import Pacer
from .resample import fade_out
from .ring import FrameRing

# a message with an audio frame: (data, its deadline, utterance id, sequence number, last)
_Made = tuple[bytes, float, int, int, bool]
ControlItem = bytes | Callable[[], bytes]

MAX_LAG_FRAMES: Final = 50  # ticks waiting for the writer (1 s of audio at 20 ms)
# answers (Pong, Stats...) waiting to be sent: at this many the session's reader waits before
# acting on the client's next frame (`wait_for_answers`), so requests add no more than this
MAX_CONTROL_FRAMES: Final = 1024
CONTROL_BATCH: Final = 32  # answers built and sent in one message (bounded work per step)
FIRST_LATE_S: Final = 0.001  # an utterance's first frame this late restarts its grid
# ... and one made due by `kick` (its grid anchored at the kick, off the slots) this late: it
# waits for its writer's turn, behind the first frames of a burst's other utterances
KICKED_LATE_S: Final = 0.00005
FADE_MS: Final = 5.0  # fade-out at a barge-in cut (SPEC.md §6.3), at the session's rate
_END: Final = int(fr.AudioFlags.END)


class Downlink:
    """The writer of one session. Create it, start `run` in the session nursery.

    `on_tick`, `kick`, `send_control`, `interrupt`, `pause` and `resume` are synchronous and
    must be called from the trio thread (`kick` may be sent from a worker thread with
    `TrioToken.run_sync_soon`).
    """

    def __init__(
        self,
        *,
        ring: FrameRing,
        send: SendFn,
        pacer: Pacer,
        rate_hz: int,
        events: DownlinkEvents,
        paced: bool = True,
        packets: bool = False,
        send_now: SendNowFn | None = None,
        flush: FlushFn | None = None,
    ) -> None:
        self._ring = ring
        # the tick's own send (None: every frame wakes the task) and the send of what it
        # left when the socket took only part
        self._send_now = send_now
        self._flush = flush
        self._idle = False  # the task waits with nothing to send: a tick may send itself
        self._made: _Made | None = None  # made by a tick that could not send it: the task does
        self._flush_wanted = False
        self._failed: Exception | None = None  # what the tick's send raised: the task raises it
        # True: the frames hold Opus packets (SPEC §4.6.3): an interrupt sends no faded tail
        # (fading would mean decoding and encoding again on the event loop)
        self._packets = packets
        self._paced = paced  # False: frames go out as they come (Hello downlink.paced)
        self._send = send
        self._pacer = pacer
        self._rate_hz = rate_hz
        self._frame_samples = fr.frame_samples(rate_hz)
        self._events = events
        self._lot = trio.lowlevel.ParkingLot()
        self._control: collections.deque[ControlItem] = collections.deque()
        self._answers_lot = trio.lowlevel.ParkingLot()  # the reader, waiting for room
        self._due: collections.deque[float] = collections.deque()
        self.epoch = 0
        self.paused = False  # no audio goes out: the client's PAUSE, or a held barge-in
        self._client_paused = False
        self._held = False
        self.closed = False
        # the utterance whose audio is going out: id, frames of it sent, total text chars
        self._playing_uid = 0
        self._playing_frames = 0
        # its word marks (None: no WORDS frames), and how many of them were sent
        self._marks: list[tuple[int, int, int, int]] | None = None
        self._marks_sent = 0
        self.counters = DownlinkCounters()
        self._space_lot = trio.lowlevel.ParkingLot()
        self._space_wanted = False
        self._precise = pacer.precise_now()
        self._kicked = -1.0  # the deadline of the last first frame made due by `kick`
        self._send_started: float | None = None  # when the send in progress began
        self._run_scope = trio.CancelScope()  # `run`'s; `stop` sets its deadline
        self._stopping = False

    def send_blocked_s(self, now: float) -> float:
        """How long the send in progress has been waiting (0 when none is): a client that
        reads nothing leaves it waiting for a full socket buffer to drain."""
        started = self._send_started
        return now - started if started is not None else 0.0

    @property
    def audio_due(self) -> bool:
        """Whether audio frames are due and waiting for the writer (not paused, not idle)."""
        return bool(self._due) or self._made is not None or self._flush_wanted

    @property
    def answers_full(self) -> bool:
        """Whether `MAX_CONTROL_FRAMES` answers wait to be sent: the reader waits
        (`wait_for_answers`) before acting on another client frame."""
        return len(self._control) >= MAX_CONTROL_FRAMES and not self.closed

    async def wait_for_answers(self) -> None:
        """Wait until fewer than `MAX_CONTROL_FRAMES` answers wait to be sent (or the writer
        closed): the backpressure on a client that asks faster than its answers go out.
        Meanwhile its frames wait in the WebSocket layer and then in its socket. Cancellation
        leaves nothing behind."""
        while self.answers_full:
            await self._answers_lot.park()

    @property
    def playing_uid(self) -> int:
        """The utterance whose audio is going out (0 between utterances)."""
        return self._playing_uid

    def samples_sent(self, utterance_id: int) -> int:
        """Samples of the utterance's audio sent so far in whole frames (0 unless it is the
        one playing)."""
        if utterance_id != self._playing_uid:
            return 0
        return self._playing_frames * self._frame_samples

    # ------------------------------------------------------------------ called by others

    def on_tick(self, deadline: float) -> bool:
        """Pacer hot path: send the frame due now if the writer task is idle and the
        connection takes it at once (`send_now`), else note the deadline and wake the task.

        Ticks pile up only while the writer cannot send. Past `MAX_LAG_FRAMES` that is the
        client's fault only if one send has been blocked for `SLOW_SEND_S` (its socket's buffer
        is full and not draining): SLOW_CONSUMER. Otherwise the daemon itself fell behind (its
        loop was busy): the oldest tick is dropped and counted (`ticks_dropped`), so the audio
        goes on a frame later, and the session lives."""
        if self.paused or self.closed:
            return False
        if self._can_send_now():
            return self._send_now_safely(deadline)
        due = self._due
        due.append(deadline)
        if len(due) > MAX_LAG_FRAMES:
            started = self._send_started
            if started is not None and deadline - started >= SLOW_SEND_S:
                self._send_started = None
                if not self._events.slow_consumer():
                    self.closed = True
                    return False
            due.popleft()
            self.counters.ticks_dropped += 1
        if len(due) == 1:
            self._lot.unpark()
        return True

    def _can_send_now(self) -> bool:
        """Whether the frame due can go out from the tick: the writer task waits with nothing
        to send, and the session gave a `send_now`."""
        return (
            self._idle
            and not self._due
            and not self._control
            and self._made is None
            and not self._flush_wanted
            and self._send_now is not None
        )

    def _send_now_safely(self, deadline: float) -> bool:
        """`_send_on_tick`, an exception of which the writer task raises (the session ends,
        not the pacer)."""
        try:
            return self._send_on_tick(deadline)
        except Exception as exc:
            self._failed = exc
            self._idle = False
            self._lot.unpark()
            return False

    def _send_on_tick(self, deadline: float) -> bool:
        """The tick's own send (the task is idle): the frame due goes out now, or, if the
        connection cannot take it at once, the task sends it. Whether to stay scheduled."""
        made = self._make_audio(deadline)
        if made is None:
            return self._pacer.is_scheduled(self)
        assert self._send_now is not None
        now = trio.current_time()
        result = self._send_now(made[0])
        if result == NOT_SENT:  # (the task sends it at once, and counts its pacing error)
            self._made = made
            self._idle = False  # (the next ticks leave their frames to the task too, in order)
            self._lot.unpark()
            return True
        self._pacing(made, now)
        if result == PARTLY_SENT:  # (the rest waits for the socket: the task sends it)
            self._flush_wanted = True
            self._idle = False
            self._send_started = trio.current_time()
            self._lot.unpark()
        self._audio_sent(made)
        return True

    def kick(self) -> None:
        """Frames were pushed: start pacing now unless already paced, paused or closed (an
        unpaced writer just wakes up). An utterance's first frame is due at once when
        its grid starts now (few streams): the writer is woken here and the pacer ticks from
        the next frame on (the same grid, moved to where that frame really went out if it
        waited for the writer more than `KICKED_LATE_S`: `_pacing`; without a wake-up of the
        pacer's for that frame; sent
        from here instead, as a tick sends, it made a burst of 20 replies worse at the bench's
        client when all grids started on 0.5 ms slots: that frame left up to a slot before its
        grid). At density the grid starts on the pacer's next slot (`Pacer.anchor`) and so does
        the first frame, sent by that slot's tick: one sent at once would leave up to a slot
        before the grid of the frames that follow it, which a player hears as jitter."""
        if self.paused or self.closed:
            return
        if not self._paced:
            self._lot.unpark()
            return
        pacer = self._pacer
        if pacer.is_scheduled(self):
            return
        if self._ring.count or self._playing_uid:
            now = trio.current_time()
            first = pacer.anchor(now)
            # resumed mid-utterance: the tick as ever; at density (`first` a slot ahead) the
            # first frame waits for its slot's tick too, so it and the next frames share one grid
            if self._playing_uid or self._due or first > now:
                pacer.schedule(self, first)
                return
            self._due.append(first)
            self._kicked = first
            pacer.schedule(self, first, from_tick=1)
            self._lot.unpark()

    def send_control(self, item: ControlItem) -> None:
        """Queue a control frame (bytes, or a builder called right before sending).

        The queue is bounded by its producers, not here: the reader, one answer at most per
        client frame, waits while `MAX_CONTROL_FRAMES` are queued (`wait_for_answers`); the
        uplink's events are bounded by its inbox. A client that reads nothing leaves the
        writer blocked in a send, which is SLOW_CONSUMER after `SLOW_SEND_S`."""
        if self.closed:
            return
        self._control.append(item)
        self._lot.unpark()

    def interrupt(self, cancelled_utterances: int, *, vad: bool = False) -> int:
        """Barge-in: new epoch, ring flushed, Interrupted queued ahead of any later audio.

        `vad`: the server barged in itself (Interrupted carries the VAD flag). Returns the new
        epoch. The utterance that was playing stops at the frame already being
        sent, if any; Interrupted reports it.
        """
        fade = self._playing_uid and not self.paused and not self._packets
        tail, faded = self._fade_tail() if fade else (b"", 0)
        self.epoch = (self.epoch + 1) & 0xFFFF
        self._marks = None
        self._ring.flush()
        self._space_lot.unpark_all()
        self._due.clear()
        self._pacer.unschedule(self)
        epoch = self.epoch

        def build() -> bytes:
            uid, frames = self._playing_uid, self._playing_frames
            self._playing_uid = self._playing_frames = 0
            whole = frames * self._frame_samples  # sent in full before the cut
            samples = whole + faded if tail and uid else whole
            if uid and (total := self._events.totals(uid)[0]):
                samples = min(samples, total)  # the last frame's padding is not its audio
            frame = fr.Interrupted(
                epoch=epoch,
                utterance_id=uid,
                samples_sent=samples,
                # the fade is not counted: a word it cuts was not heard whole
                chars_spoken=self._events.chars_spoken(uid, whole) if uid else 0,
                cancelled_utterances=cancelled_utterances,
                vad=vad,
            )
            self._events.sending(frame)
            return (tail if uid else b"") + encode(frame)

        self.send_control(build)
        return epoch

    def _fade_tail(self) -> tuple[bytes, int]:
        """The playing utterance's next frame, its first `FADE_MS` faded out (at the session's
        rate) and the rest silent, flagged END, so a client that plays what it gets stops
        without a click, and how many samples were faded (b"", 0 if none is ready)."""
        while (frame := self._ring.pop()) is not None:
            length, type_, _, epoch, uid, seq = AUDIO_HEADER.unpack_from(frame)
            if epoch == self.epoch and uid == self._playing_uid:
                pcm = np.frombuffer(frame, dtype="<i2", offset=fr.AUDIO_HEADER_BYTES)
                n = min(len(pcm), round(self._rate_hz * FADE_MS / 1000))
                faded = np.zeros_like(pcm)
                faded[:n] = fade_out(pcm[:n], self._rate_hz, FADE_MS).astype("<i2")
                header = AUDIO_HEADER.pack(length, type_, _END, epoch, uid, seq)
                return header + faded.tobytes(), n
        return b"", 0

    def _words_frame(self, epoch: int, uid: int, seq: int) -> bytes:
        """A WORDS frame of the marks of the words whose audio starts in frame `seq` (or
        earlier, not yet sent), or b"" if there are none."""
        marks = self._marks
        assert marks is not None
        stop = (seq + 1) * self._frame_samples
        first = end = self._marks_sent
        while end < len(marks) and marks[end][2] < stop:
            end += 1
        if end == first:
            return b""
        self._marks_sent = end
        words = tuple(fr.WordMark(*m) for m in marks[first:end])
        return encode(fr.Words(epoch=epoch, utterance_id=uid, marks=words))

    async def wait_for_space(self) -> None:
        """Wait until the ring is at most half full (or the session closes).

        Cancellation leaves nothing behind."""
        ring = self._ring
        while not self.closed and ring.free < ring.capacity // 2:
            self._space_wanted = True
            await self._space_lot.park()

    def pause(self) -> None:
        """Stop sending audio after the frame going out now (the session sends Paused)."""
        self._client_paused = True
        self._stop_audio()

    def resume(self) -> None:
        """Continue where the audio stopped, on a new grid anchored now (at density on the
        pacer's next slot: `Pacer.anchor`; the session sends Resumed); still held if a soft
        barge-in holds it."""
        self._client_paused = False
        self._go_on()

    def hold(self) -> None:
        """A soft barge-in: stop sending audio after the frame going out now, its place kept
        (independent of the client's PAUSE)."""
        self._held = True
        self._stop_audio()

    def release(self) -> None:
        """The soft barge-in is over: go on where the audio stopped, on a new grid anchored
        now (at density on the pacer's next slot; unless the client paused it), or, after an
        interrupt, with what comes next."""
        self._held = False
        self._go_on()

    @property
    def held(self) -> bool:
        return self._held

    def barge_in(
        self, outcome: fr.BargeInOutcome, reason: fr.BargeInReason, onset: int, text: str = ""
    ) -> fr.BargeIn:
        """A BARGE_IN frame about the audio now: its epoch, the utterance playing and the
        samples of it sent (where a hold stopped it); `onset` in uplink samples."""
        uid = self._playing_uid
        return fr.BargeIn(outcome, reason, self.epoch, uid, self.samples_sent(uid), onset, text)

    def _stop_audio(self) -> None:
        if not self.paused:
            self.paused = True
            self._due.clear()
            self._pacer.unschedule(self)

    def _go_on(self) -> None:
        if self.paused and not (self._client_paused or self._held):
            self.paused = False
            self.kick()

    # ------------------------------------------------------------------ the writer task

    def forget_session(self) -> None:
        """The session has ended (`run` returned): forget its events, its send (a method of
        the session when it taps what it sends for the uplink's echo reference) and the
        control frames that were not sent (their builders are methods of the session or
        closures over this writer). The session refers to its writer and the writer to it, a
        cycle only the garbage collector could free."""
        self._events = ENDED
        self._send = send_nothing
        self._send_now = self._flush = None  # (the session's, when it taps what it sends)
        self._made = self._failed = None
        self._control.clear()

    def stop(self, *, grace_s: float) -> None:
        """End `run` after the message it is sending, if any (a message is never cut by the
        stop itself), or `grace_s` from now if that message does not go out by then."""
        self._stopping = True
        self.closed = True
        self._lot.unpark()
        self._answers_lot.unpark_all()
        self._run_scope.deadline = min(self._run_scope.deadline, trio.current_time() + grace_s)

    async def run(self) -> None:
        """Send until `stop` or cancelled. Cancellation may cut a frame mid-send (the transport
        is then unusable anyway); frames still in the ring stay there."""
        with self._run_scope:
            await self._run()

    async def _run(self) -> None:
        control = self._control
        due = self._due
        while True:
            # what a tick left, even when stopping: it is the message being sent
            if self._failed is not None:
                failed, self._failed = self._failed, None
                raise failed
            if self._made is not None:  # a tick made it but could not send it
                made, self._made = self._made, None
                await self._send_made(made)
                continue
            if self._flush_wanted:  # a tick sent part of a frame: the rest goes out first
                self._flush_wanted = False
                if self._flush is not None:
                    await self._flush()
                self._send_started = None
                continue
            if self._stopping:
                break
            if not self._paced and not self.paused and self._ring.count and not due:
                due.append(trio.current_time())  # unpaced: a frame is due as soon as it is here
            if not control and not due:
                self._idle = True
                try:
                    await self._lot.park()
                finally:
                    self._idle = False
                continue  # (stopped meanwhile?)
            if control:  # the answers waiting go out together, in order, a bounded batch
                parts: list[bytes] = []
                t0 = time.perf_counter()
                pacer = self._pacer
                while control and len(parts) < CONTROL_BATCH:
                    item = control.popleft()
                    parts.append(item if isinstance(item, bytes) else item())
                    if pacer.tick_due():  # (it runs at the checkpoint below)
                        break
                self._answers_lot.unpark_all()  # room for the reader's next requests
                self._events.answered(time.perf_counter() - t0)
                self._send_started = trio.current_time()
                await self._send(parts[0] if len(parts) == 1 else b"".join(parts))
                self._send_started = None
                # a send that the socket takes at once does not yield (direct.py): the next
                # batch waits its turn behind everybody else's, the way a blocked send would
                await trio.lowlevel.checkpoint()
            if due and not self.paused and not self._stopping:
                await self._send_audio(due.popleft())
                if due:  # (behind its grid: one frame per scheduler round, not all at once)
                    await trio.lowlevel.checkpoint()

    async def _send_audio(self, deadline: float) -> None:
        made = self._make_audio(deadline)
        if made is not None:
            await self._send_made(made)

    async def _send_made(self, made: _Made) -> None:
        now = self._send_started = trio.current_time()
        self._pacing(made, now)
        await self._send(made[0])
        self._send_started = None
        self._audio_sent(made)

    def _make_audio(self, deadline: float) -> _Made | None:
        """The message of the next frame of this epoch (with the events that go before or
        after it), or None when the ring has none (an underrun while an utterance plays;
        otherwise the writer leaves the pacer's schedule)."""
        ring = self._ring
        c = self.counters
        while True:
            frame = ring.pop()
            if frame is None:
                if self._playing_uid and self._paced:
                    c.underruns += 1  # synthesis is behind: skip this tick, keep the grid
                else:
                    self._due.clear()
                    self._pacer.unschedule(self)
                return None
            if self._space_wanted and ring.free >= ring.capacity // 2:
                self._space_wanted = False
                self._space_lot.unpark_all()
            _, _, flags, epoch, uid, seq = AUDIO_HEADER.unpack_from(frame)
            if epoch == self.epoch:
                break
            c.stale_dropped += 1
        data = frame
        if seq == 0:
            self._playing_uid, self._playing_frames = uid, 0
            self._marks, self._marks_sent = self._events.word_marks(uid), 0
            data = encode(fr.UtteranceStarted(epoch=epoch, utterance_id=uid))
            if self._marks is not None:
                data += self._words_frame(epoch, uid, seq)
            data += frame
            self._events.audio_started(uid)
        elif self._marks is not None:
            data = self._words_frame(epoch, uid, seq) + frame
        last = bool(flags & _END)
        if last:
            samples, chars = self._events.totals(uid)
            done = fr.UtteranceDone(
                epoch=epoch, utterance_id=uid, samples_sent=samples, chars_spoken=chars
            )
            self._events.sending(done)
            data += encode(done)
        return data, deadline, uid, seq, last

    def _pacing(self, made: _Made, now: float) -> None:
        """`made` goes out `now`: count its pacing error (or move the grid: below)."""
        deadline, seq = made[1], made[3]
        c = self.counters
        kicked = seq == 0 and deadline == self._kicked
        if kicked:
            self._kicked = -1.0  # (matched once: a later deadline never passes for it)
        late_s = KICKED_LATE_S if kicked else FIRST_LATE_S
        if self._paced and seq == 0 and now - deadline > late_s and not self._due:
            # an utterance's grid starts with its first frame: one that goes out late (the
            # loop was busy with a burst of new utterances) moves the grid with it, so the next
            # frames are not sent early to catch up (counted in first audio, not in pacing);
            # a kicked one's grid was off the slots already: it moves to the very send time
            self._pacer.restart(self, now, exact=kicked)
            c.grids_restarted += 1
        elif self._paced and not kicked:  # (a kicked first frame: first audio's,
            # sent as soon as it was made)
            error = now - deadline
            c.pacing_error.record(error if error >= 0.0 else -error)
            if self._precise:
                self._pacer.observe_send_error(error)
            if error > self._pacer.frame_s:  # (the next frame's deadline had passed)
                c.late_sends += 1

    def _audio_sent(self, made: _Made) -> None:
        data, _, uid, _, last = made
        c = self.counters
        c.frames_sent += 1
        c.bytes_sent += len(data)
        if last:
            self._playing_uid = self._playing_frames = 0
            self._marks = None
        elif self._playing_uid == uid:
            self._playing_frames += 1
