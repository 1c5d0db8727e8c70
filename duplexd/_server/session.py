"""An open session: a reader, an utterance runner, a writer (and the uplink) in one nursery.

Built by `duplexd._server.connection` once the handshake is done, with everything it needs:
the agreed `Opened` (voice, rates), the protocol state, the ring, the writer (`Downlink`) and
the uplink if one was negotiated; nothing is set later. `run()` serves it until the peer closes,
errs, or the daemon ends it (`go_away`); whatever ends one task ends them all (`SessionEnd`).

Where things happen:
- a byte enters in `_read_loop` (decoded by `duplexd._server.handshake.receive_frames`) and
  every frame is checked by the protocol state before `_dispatch` acts on it;
- each utterance runs in its own cancel scope (`Utterance.scope`) in `_run_utterances`: text
  -> pieces -> `UtteranceProducer` in a worker thread -> the ring;
- a barge-in (`_interrupt`: a client Interrupt, or the uplink's `_barge_in`) cancels those
  scopes, and the writer's new epoch drops whatever audio of theirs is still in the ring;
- the writer (`duplexd._downlink.writer`) sends the audio on the pacer's grid and tells the
  session what it sent through the `DownlinkEvents` methods below.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .._downlink.contract import SLOW_SEND_S
from .._downlink.pacer import Pacer
from .._downlink.producer import PieceMap, SynthesisCancelled, UtteranceProducer
from .._downlink.utterance import Utterance
from .._downlink.writer import Downlink
from .._ops.metrics import DownlinkCounters, SessionObserver, session_stats
from .._ops.settings import SessionLimits
from .._uplink.services import UplinkServices
from .._uplink.soft import Settled
from .._uplink.uplink import Uplink
from ..engines.base import voice_kind
from ..protocol import frames as fr
from ..protocol.codec import Decoder, RemoteProtocolError, encode
from ..protocol.state import ServerProtocolState
from ..protocol.transport import Transport
from .ending import SessionEnd, forget_frames
from .handshake import DRAINING_MESSAGE, Offload, Opened, Refusal, receive_message
from .limits import RECEIVE_S_PER_BYTE, SESSION_OPEN_S, Budgets
from .playback import Playback
from .resume import Resumable, resumed_welcome
from .sends import writer_sends
from .synthesis import downlink_audio

log = logging.getLogger("duplexd.session")

# The event loop is sacred: a client's message, however many frames it holds, is decoded and
# acted upon in batches of this many frames with a checkpoint between them (and at once when a
# tick of the pacer's is due: it runs at the checkpoint, `Pacer.tick_due`), within the
# client's frame budget, and the loop time it costs is counted (`input_s`) against the client's
# share of the loop (`limits.input_share`: over it, its reading waits): `duplexd._server.limits`.
# Its reading also waits while `MAX_CONTROL_FRAMES` answers wait to be sent (backpressure: a
# client that asks faster than its answers go out is slowed down, not failed).
FRAMES_PER_CHECKPOINT = 64


class Session:
    """One open session. `offload` runs blocking work (the daemon: a worker thread; tests
    may run it inline under a MockClock, where a worker thread would let the clock jump);
    `synthesis_offload`, for an engine whose sessions take turns (`duplexd._server.synthesis`),
    runs its chunks one call each; without it a piece is one `offload` call."""

    def __init__(
        self,
        transport: Transport,
        *,
        opened: Opened,
        state: ServerProtocolState,
        decoder: Decoder,
        end: SessionEnd,
        observer: SessionObserver,
        pacer: Pacer,
        limits: SessionLimits,
        uplink_services: UplinkServices | None,
        offload: Offload = trio.to_thread.run_sync,
        synthesis_offload: Offload | None = None,
        draining: Callable[[], bool] = lambda: False,
        budgets: Budgets | None = None,
    ) -> None:
        self.id = opened.session_id
        self._draining = draining
        self.tag = end.tag
        self.observer = observer
        self._transport = transport
        self._opened = opened
        self._state = state
        self._decoder = decoder
        self._end = end
        self._pacer = pacer
        self._offload = offload
        self._synthesis_offload = synthesis_offload  # the engine's turns, if it takes them
        self._queue: collections.deque[Utterance] = collections.deque()
        self._utterances: dict[int, Utterance] = {}  # until Done or Interrupted is sent
        self._current: Utterance | None = None  # the one being synthesized
        self._queue_lot = trio.lowlevel.ParkingLot()
        now = trio.current_time()
        self.budgets = budgets if budgets is not None else Budgets.full(limits, now)
        self._frame_rate = self.budgets.frames
        self._loop_share = self.budgets.loop_share
        self._loop_share.spend(SESSION_OPEN_S)  # what opening (and closing) it costs
        self._synthesis = self.budgets.synthesis
        self._limits = limits
        self._opened_at = now
        self._last_input = now  # when the client last sent a frame
        rate = opened.sample_rate_hz
        self._frame_samples = fr.frame_samples(rate)
        # the ring of whole AUDIO frames, and (Opus) an encoder for each utterance's thread
        self._ring, self._new_encoder = downlink_audio(state.options.codec, rate, limits)
        self._opus = self._new_encoder is not None  # AUDIO bodies are Opus packets
        self._uplink: Uplink | None = None
        uplink_rate = opened.hello.uplink_rate_hz
        if uplink_rate and uplink_services is not None:
            self._uplink = Uplink(
                rate_hz=uplink_rate,
                downlink_rate_hz=rate,
                options=state.options,
                services=uplink_services,
                downlink_opus=self._opus,
                send=self._send_control,
                barge_in=self._barge_in,
                hold=self._hold,
                settle=self._settle,
            )
        self._tasks_scope = trio.CancelScope()  # every task but the writer
        end.finish_with(self._finish)
        # the audio sent is the uplink's echo reference
        sends = writer_sends(transport, self._uplink.on_downlink if self._uplink else None)
        self._downlink = Downlink(
            ring=self._ring,
            send=sends.send,
            pacer=pacer,
            rate_hz=rate,
            events=self,
            paced=state.options.downlink.paced,
            packets=self._opus,
            send_now=sends.send_now,
            flush=sends.flush,
        )
        self.playback = Playback()  # what the client says it played (PLAYED, HEARD)
        # WORDS frames: asked for, and the voice times its words (Welcome says so)
        self._words = state.options.downlink.words and voice_kind(opened.voice).timed

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve the session until one of its tasks ends it (then all stop). Never raises
        except `trio.Cancelled`; a failure is recorded in the `SessionEnd`. Cancellation
        (or the end) leaves synthesis threads told to stop and the pacer slot released.

        The end comes in order (`_finish`): every task but the writer is cancelled at once;
        the writer finishes the message it is sending (within `SLOW_SEND_S`), so the Error
        frame that follows finds the WebSocket whole."""
        guard = self._guarded
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(guard, self._downlink.run)
                with self._tasks_scope:
                    async with trio.open_nursery() as tasks:
                        tasks.start_soon(guard, self._run_utterances)
                        tasks.start_soon(guard, self._read_loop)
                        tasks.start_soon(guard, self._watch_time)
                        if self._uplink is not None:
                            tasks.start_soon(guard, self._uplink.run)
                            tasks.start_soon(guard, self._uplink.process)
        finally:
            self._abort_all()
            self._downlink.closed = True
            self._pacer.unschedule(self._downlink)
            # every task (and so every synthesis thread) has returned: the ring's C memory goes
            # now, and, its cycles broken, reference counting frees the rest (not a sweep)
            self._ring.close()
            self._downlink.forget_session()
            if self._uplink is not None:
                self._uplink.forget_session()
            self._end.finish_with(self._end.scope.cancel)

    def _finish(self) -> None:
        """End the session (`SessionEnd` calls it): the tasks now, the writer after the
        message in flight, or after `SLOW_SEND_S` if that one does not go out."""
        self._tasks_scope.cancel()
        self._downlink.stop(grace_s=SLOW_SEND_S)
        self._abort_all()

    async def _guarded(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run one of the session's tasks; whatever ends it ends the session."""
        await self._end.guard(fn)
        self._end.stop()

    def _abort_all(self) -> None:
        """Tell every synthesis thread to stop at once (the utterance runner waits for its
        worker thread: a thread cannot be cancelled; it stops at its next cancel check)."""
        for utt in self._queue:
            utt.abort()
        if self._current is not None:
            self._current.abort()

    # ------------------------------------------------------------------ reading

    async def _read_loop(self) -> None:
        await self._act_on_message()  # the rest of the Hello's message, if any
        while True:
            message = await receive_message(self._transport)
            self._charge(len(message) * RECEIVE_S_PER_BYTE)  # the WebSocket layer's work
            self._decoder.receive_data(message)
            await self._act_on_message()

    async def _act_on_message(self) -> None:
        """Decode and act on the buffered message frame by frame: `FRAMES_PER_CHECKPOINT` at a
        time with a checkpoint between batches, one frame-budget token each, and waiting
        while the writer holds `MAX_CONTROL_FRAMES` answers. Raises LIMIT_EXCEEDED when the
        budget is spent, MALFORMED for a frame cut at the end of the message (the frames
        before it were acted upon). Cancellation at a checkpoint leaves the rest of the
        message in the decoder."""
        decoder, rate, dl, pacer = self._decoder, self._frame_rate, self._downlink, self._pacer
        now = trio.current_time()
        self._last_input = now
        rate.refill(now)
        if not decoder.buffered_bytes and not rate.take():  # an empty message costs too
            raise self._over_budget()
        t0 = time.perf_counter()
        n = 0
        try:
            while (frame := decoder.next_frame()) is not None:
                if not rate.take():
                    raise self._over_budget()
                self._dispatch(frame)
                n += 1
                if dl.answers_full:  # asked faster than answered: read on once they go out
                    await self._account(time.perf_counter() - t0)
                    await dl.wait_for_answers()
                    t0 = time.perf_counter()
                elif n % FRAMES_PER_CHECKPOINT == 0 or pacer.tick_due():
                    await self._account(time.perf_counter() - t0)
                    t0 = time.perf_counter()
            decoder.check_boundary()  # a frame must not span WebSocket messages
        except RemoteProtocolError:
            self._charge(time.perf_counter() - t0)  # the session ends: its debt is carried
            raise
        # (the next `receive_message` lets the others run: one task step less a message)
        await self._account(time.perf_counter() - t0, checkpoint=False)

    def _charge(self, spent_s: float) -> None:
        """Count `spent_s` of loop time against the client's share."""
        self.observer.input_s += spent_s
        self._loop_share.refill(trio.current_time())
        self._loop_share.spend(spent_s)

    async def _account(self, spent_s: float, *, checkpoint: bool = True) -> None:
        """Count the loop time a batch of this client's frames cost; wait while the client is
        over its share of the loop (`limits.input_share`), else just let others run (unless
        not `checkpoint`: the caller's next step does)."""
        self._charge(spent_s)
        debt = self._loop_share.debt_s()
        if debt > 0:
            self.observer.input_throttled_s += debt
            await trio.sleep(debt)
        elif checkpoint:
            await trio.lowlevel.checkpoint()

    def _over_budget(self) -> RemoteProtocolError:
        limits = self._limits
        return RemoteProtocolError(
            fr.ErrorCode.LIMIT_EXCEEDED,
            f"more than {limits.frame_burst} frames at once or {limits.max_frames_per_s:g} a"
            " second on average: send fewer, larger frames",
        )

    async def _watch_time(self) -> None:
        """End the session when it was idle for `idle_timeout_s` (no client frame, nothing
        queued or playing) or lived `max_session_s` (0: no limit), both LIMIT_EXCEEDED; or when
        the writer has been stuck in one send for `SLOW_SEND_S` (SLOW_CONSUMER; with audio due
        the writer notices sooner itself). Looks at least once a second."""
        limits = self._limits
        idle_s, life_s = limits.idle_timeout_s, limits.max_session_s
        end_of_life = self._opened_at + life_s if life_s else math.inf
        while True:
            now = trio.current_time()
            await trio.sleep_until(min(self._last_input + idle_s, end_of_life, now + 1.0))
            now = trio.current_time()
            if self._downlink.send_blocked_s(now) >= SLOW_SEND_S and not self.slow_consumer():
                self._downlink.closed = True
                return
            if now >= end_of_life:
                raise RemoteProtocolError(
                    fr.ErrorCode.LIMIT_EXCEEDED,
                    f"a session lasts at most {life_s:g} s here (limits.max_session_s):"
                    " open a new one",
                )
            if now >= self._last_input + idle_s:
                if not self.busy:
                    raise RemoteProtocolError(
                        fr.ErrorCode.LIMIT_EXCEEDED,
                        f"idle for {idle_s:g} s (limits.idle_timeout_s): nothing was sent"
                        " and nothing was playing",
                    )
                self._last_input = now  # speaking counts as activity

    def _dispatch(self, frame: fr.Frame) -> None:
        if not self._state.receive(frame):
            return  # text still in flight for an interrupted utterance: dropped
        dl = self._downlink
        if isinstance(frame, fr.Text):
            self._on_text(frame)
        elif isinstance(frame, fr.Interrupt):
            self._interrupt(vad=False)
        elif isinstance(frame, fr.Pause):
            dl.pause()
            self._send_control(fr.Paused())
        elif isinstance(frame, fr.Resume):
            dl.resume()
            self._send_control(fr.Resumed())
        elif isinstance(frame, fr.Ping):
            self._send_control(fr.Pong(nonce=frame.nonce, server_time_ns=time.monotonic_ns()))
        elif isinstance(frame, fr.GetStats):
            dl.send_control(self._stats_message)  # built right before it is sent: fresh
        elif isinstance(frame, fr.AudioUp) and self._uplink is not None:
            self._uplink.feed(frame.seq, frame.pcm)
        elif isinstance(frame, fr.Played):
            if self._uplink is not None:
                self._uplink.on_played(frame)  # the echo's delay
            if heard := self.playback.report(frame, self._playing):
                self._send_control(heard)

    def _on_text(self, frame: fr.Text) -> None:
        utt = self._utterances.get(frame.utterance_id)
        if utt is None:
            if self._draining():  # a drain waits for what was said, not for what comes next
                raise Refusal(fr.ErrorCode.GOING_AWAY, DRAINING_MESSAGE)
            utt = Utterance(frame.utterance_id)
            self._utterances[utt.uid] = utt
            self.observer.text_started(utt.uid)
            self._queue.append(utt)
            self._queue_lot.unpark()
        utt.feed(frame.text, end=frame.end)

    def _interrupt(self, *, vad: bool) -> None:
        """Barge-in (the protocol state already cancelled the active utterances): cancel every
        utterance not yet done (queued, being synthesized, or waiting in the ring) and have
        the writer start a new epoch and send Interrupted."""
        dl = self._downlink
        victims = list(self._utterances.values())
        self._queue.clear()
        for utt in victims:
            utt.abort()
        cancelled = 0
        for utt in victims:
            if utt.uid != dl.playing_uid:  # the playing one ends with its Interrupted
                cancelled += 1
                self._retire(utt.uid)
        self.observer.interrupt_requested()
        dl.interrupt(cancelled, vad=vad)
        if dl.held:  # a soft barge-in held the audio: the interrupt decided it
            dl.release()
            if self._uplink is not None:
                self._uplink.hold_ended()

    def _barge_in(self, delay_s: float) -> None:
        """The uplink heard the user start speaking: interrupt, if anything is queued or
        playing (Interrupted then carries the VAD flag)."""
        if self._state.barge_in():
            self._interrupt(vad=True)
            self.observer.barged_in(delay_s)

    def _hold(self, delay_s: float, uplink_sample: int) -> bool:
        """A soft barge-in's onset: hold the audio (its place kept) if anything is queued or
        playing, and say so; the uplink decides what comes next (`_settle`)."""
        if not self._state.active_utterances:
            return False
        self._downlink.hold()
        held = self._downlink.barge_in(
            fr.BargeInOutcome.HELD, fr.BargeInReason.ONSET, uplink_sample
        )
        self._send_control(held)
        self.observer.barged_in(delay_s)
        return True

    def _settle(self, settled: Settled, uplink_sample: int) -> None:
        """The held barge-in is decided: resume where the audio stopped, or interrupt (the
        Interrupted that follows reports the samples sent before the hold)."""
        outcome = fr.BargeInOutcome.RESUMED if settled.resume else fr.BargeInOutcome.COMMITTED
        self._send_control(
            self._downlink.barge_in(outcome, settled.reason, uplink_sample, settled.text)
        )
        if not settled.resume and self._state.barge_in():
            self._interrupt(vad=True)
        self._downlink.release()

    # ------------------------------------------------------------------ sending

    def _send_control(self, frame: fr.ServerFrame) -> None:
        """Queue a frame on the writer, after the protocol state allowed it."""
        self._state.send(frame)
        self._downlink.send_control(encode(frame))

    def _stats_message(self) -> bytes:
        frame = fr.Stats(json=json.dumps(self.stats()))
        self._state.send(frame)
        return encode(frame)

    # ------------------------------------------------------------------ the writer's events

    def chars_spoken(self, utterance_id: int, samples: int) -> int:
        utt = self._utterances.get(utterance_id)
        return utt.chars_spoken(samples) if utt is not None else 0

    def word_marks(self, utterance_id: int) -> list[tuple[int, int, int, int]] | None:
        if not self._words:
            return None
        utt = self._utterances.get(utterance_id)
        return utt.piece_map.words if utt is not None else None

    def totals(self, utterance_id: int) -> tuple[int, int]:
        utt = self._utterances.get(utterance_id)
        return (utt.piece_map.total_samples, utt.total_chars) if utt is not None else (0, 0)

    def audio_started(self, utterance_id: int) -> None:
        if (utt := self._utterances.get(utterance_id)) is not None:
            utt.audio_started()  # its listener's clock: when to cut a sentence early
        self.observer.audio_started(utterance_id)

    def sending(self, frame: fr.UtteranceDone | fr.Interrupted) -> None:
        self._state.send(frame)
        if pieces := self._piece_map(frame.utterance_id):
            self.playback.ended(frame.utterance_id, pieces, frame.samples_sent)
        if frame.utterance_id:
            self._retire(frame.utterance_id)
        if isinstance(frame, fr.Interrupted):
            self.observer.interrupted()

    def slow_consumer(self) -> bool:
        if self.resumable is not None:  # a connection that stopped reading is as good as gone
            self.resumable.drop()
            return True
        waiting = "audio was due" if self._downlink.audio_due else "frames waited to be sent"
        self._end.fail(
            fr.ErrorCode.SLOW_CONSUMER,
            f"the client read nothing for {SLOW_SEND_S:g} s while {waiting} (its socket's"
            " buffer stayed full): read what the server sends as it comes",
        )
        return False

    # ------------------------------------------------------------------ resuming

    @property
    def resumable(self) -> Resumable | None:
        """The session's transport when it can outlive its connection (resume is on)."""
        transport = self._transport
        return transport if isinstance(transport, Resumable) else None

    def resumed_welcome(self, report: dict[str, Any]) -> fr.Welcome:
        """The Welcome that answers a Hello resuming this session."""
        return resumed_welcome(self._opened.welcome, report)

    def on_resumed(self, report: dict[str, Any]) -> None:
        """A new connection took the session over (its Welcome and replay are sent)."""
        self._last_input = trio.current_time()
        if self._uplink is not None:
            self._uplink.resync()  # the microphone frames missed while away are skipped
        log.info(
            "session resumed",
            extra={
                "session": self.tag,
                "replayed": report["replayed"],
                "lost_messages": report["lost"]["messages"],
            },
        )

    def answered(self, spent_s: float) -> None:
        self._charge(spent_s)  # the reader waits it out before reading on

    def _playing(self, uid: int) -> tuple[PieceMap, int] | None:
        """An utterance not ended yet: its word timing and the samples of it sent so far."""
        pieces = self._piece_map(uid)
        return None if pieces is None else (pieces, self._downlink.samples_sent(uid))

    def _piece_map(self, uid: int) -> PieceMap | None:
        return utt.piece_map if (utt := self._utterances.get(uid)) is not None else None

    def _retire(self, uid: int) -> None:
        if self._utterances.pop(uid, None) is not None:
            self.observer.utterance_ended(uid)

    # ------------------------------------------------------------------ synthesis

    async def _run_utterances(self) -> None:
        while True:
            while not self._queue:
                await self._queue_lot.park()
            utt = self._queue.popleft()
            self._current = utt
            try:
                with utt.scope:
                    await self._produce(utt)
            finally:
                self._current = None

    async def _produce(self, utt: Utterance) -> None:
        dl = self._downlink
        token = trio.lowlevel.current_trio_token()
        turns = self._synthesis_offload

        def kick() -> None:
            if turns is None:  # (taking turns, a call is one chunk: `_push_backlog` kicks)
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(dl.kick)

        producer = UtteranceProducer(
            voice=self._opened.voice,
            ring=self._ring,
            out_rate_hz=self._opened.sample_rate_hz,
            frame_samples=self._frame_samples,
            epoch=dl.epoch,
            utterance_id=utt.uid,
            pieces=utt.piece_map,
            cancel=utt.cancel,
            kick=kick,
            opus=self._new_encoder,
        )
        try:
            while (piece := await utt.next_piece(lambda: producer.audio_s)) is not None:
                await self._wait_synthesis_budget()
                done = False
                while not done:
                    before_s = producer.audio_s
                    if turns is None:  # one call for the piece (the engine takes no turns)
                        await self._offload(producer.render, piece)
                        done = True
                    else:  # a chunk a call: the sessions of the engine take turns
                        done = await turns(producer.render_step, piece)
                    self._synthesis.spend(producer.audio_s - before_s)
                    await self._push_backlog(producer)
            # (with the chunks' turns when the engine takes them: a burst's ends go in batches)
            await (turns or self._offload)(producer.finish, utt.total_chars)
            await self._push_backlog(producer)
        except SynthesisCancelled as cancelled:
            # raised in a worker thread (a barge-in while it synthesizes): trio's frame in its
            # traceback holds the outcome that holds it, a reference cycle with this frame,
            # so this session, in it (`forget_frames`)
            forget_frames(cancelled)
        finally:
            producer.end()  # (cancelled between two chunks: the engine's stream is let go)
        self.observer.synthesized(producer.engine_s, producer.audio_s)

    async def _wait_synthesis_budget(self) -> None:
        """Wait while this session synthesized more audio than `synthesis_speed` allows (a
        client that starts and interrupts utterances over and over); cancelled with the
        utterance, it leaves nothing behind."""
        budget = self._synthesis
        budget.refill(trio.current_time())
        debt = budget.debt_s()
        if debt > 0:
            self.observer.synthesis_throttled_s += debt
            await trio.sleep(debt)

    async def _push_backlog(self, producer: UtteranceProducer) -> None:
        """Push the frames that did not fit in the ring, as the writer frees space."""
        dl = self._downlink
        while producer.push_backlog() and not dl.closed:
            dl.kick()
            await dl.wait_for_space()
        dl.kick()

    # ------------------------------------------------------------------ operations

    @property
    def busy(self) -> bool:
        """Whether an utterance is queued, being synthesized or playing."""
        return bool(self._utterances)

    @property
    def counters(self) -> DownlinkCounters:
        """The writer's counters."""
        return self._downlink.counters

    @property
    def error_code(self) -> fr.ErrorCode | None:
        """The error the session ended (or is ending) with, if any."""
        return self._end.error[0] if self._end.error is not None else None

    def go_away(self, message: str = "server is shutting down") -> None:
        """End the session: Error GOING_AWAY, then close code 1001. Synchronous; trio thread."""
        self._end.fail(fr.ErrorCode.GOING_AWAY, message)

    def stats(self) -> dict[str, Any]:
        uplink = self._uplink.stats() if self._uplink is not None else {}
        return session_stats(self.tag, self._downlink.counters, self.observer) | uplink
