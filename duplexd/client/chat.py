"""`duplexd chat`: a terminal voice agent on top of the SDK.

Microphone (sounddevice) or `--mic-file` (a WAV played as the microphone, in real time, then
silence) -> AudioUp; the daemon's SpeechStarted/SpeechStopped/Transcript events are shown as
they come (with `--interim-ms`, what the user said so far too: "  … " lines, each a stable
prefix of the turn's final transcript); each final transcript goes to the responder (the
built-in demo, or an OpenAI-compatible endpoint with `--llm-url`) whose reply is streamed back
as an utterance; the reply plays on the speaker (sounddevice) or goes to `--out reply.wav`.
Typed lines go to the responder as a transcript does (`/say TEXT` speaks TEXT as it is);
`/pause`, `/resume`, `/stop` (interrupt) and `/quit` act at once. Chat ends by itself once
every input that ends has ended (the microphone file played, standard input at its end when
it is not a terminal) and the replies have been spoken; a sound-card microphone never ends
(`/quit`, Ctrl-C, `--max-turns`, `--timeout`).
Latency figures: end of speech -> transcript, and end of speech -> first reply audio (both
on the microphone's clock: the uplink sample where speech stopped, mapped to the time it was
captured). The first is split into the end of turn (the silence the daemon needed, what it
then waited for, from its TURN_END report, and the rest: the uplink's frames, the network) and
the ASR (SpeechStopped -> Transcript).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import wave
from typing import Any, TypeVar

import numpy as np
import trio

from ..protocol import frames as fr
from ..protocol.options import NOISE_SUPPRESSION, option_range
from .agent import DemoResponder, LLMError, OpenAIResponder, Responder
from .connect import (
    ConnectArgsError,
    ConnectOptions,
    add_connection_arguments,
    add_voice_arguments,
    connect_options,
)
from .playback import Position, Speaker
from .said import SaidReplies
from .session import ClientSession, SessionError, open_session

UPLINK_RATE_HZ = 16_000
DOWNLINK_RATE_HZ = 48_000
FRAME_S = fr.FRAME_MS / 1000
TRAILING_SILENCE_S = 2.0  # after the microphone file: silence, for the VAD and ASR to finish
IDLE_S = 1.0  # inputs ended, nothing in flight for this long: chat is done
_T = TypeVar("_T")


def add_chat_arguments(p: argparse.ArgumentParser, default_url: str) -> None:
    add_connection_arguments(p, default_url)  # --url --token-file --token --ca
    add_voice_arguments(p)
    p.add_argument("--mic-file", default="", help="a WAV file played as the microphone")
    p.add_argument("--no-mic", action="store_true", help="no uplink: typed lines only")
    p.add_argument("--out", default="", help="write the agent's audio to this WAV")
    p.add_argument("--llm-url", default="", help="OpenAI-compatible base URL (…/v1)")
    p.add_argument("--llm-model", default="gpt-4o-mini", help="the model --llm-url serves")
    p.add_argument("--llm-key", default="", help="API key (or OPENAI_API_KEY)")
    p.add_argument(
        "--vad-threshold",
        type=float,
        default=0.5,
        help="speech probability that is speech (0.05-0.99)",
    )
    p.add_argument(
        "--interim-ms",
        type=float,
        default=0.0,
        help="show what you said so far while you speak, transcribed this often (e.g. 300;"
        " 0: only each turn's final transcript)",
    )
    p.add_argument("--no-barge-in", action="store_true", help="do not let speech interrupt")
    p.add_argument(
        "--soft-barge-in",
        action="store_true",
        help='hold the reply when you make a sound; go on after "mhm", a cough or a "yeah"',
    )
    p.add_argument(
        "--noise-suppression",
        choices=NOISE_SUPPRESSION,
        default="off",
        help="take a steady noise (a fan, hiss, typing) out of your microphone on the server",
    )
    p.add_argument("--max-turns", type=int, default=0, help="quit after N replies (0: never)")
    p.add_argument("--timeout", type=float, default=0.0, help="quit after S seconds (0: never)")


def run_chat(args: argparse.Namespace) -> int:
    import os

    lo, hi = option_range("partial_ms")  # (as the server checks it: fail before connecting)
    if not lo <= args.interim_ms <= hi:
        print(
            f"duplexd chat: --interim-ms takes {lo:g} (final transcripts only) to {hi:g} ms"
            f" (300 is a good start); got {args.interim_ms:g}",
            file=sys.stderr,
        )
        return 2
    try:
        connect = connect_options(args)
    except ConnectArgsError as exc:
        print(f"duplexd chat: {exc}", file=sys.stderr)
        return 2
    key = args.llm_key or os.environ.get("OPENAI_API_KEY", "")
    responder: Responder = (
        OpenAIResponder(args.llm_url, args.llm_model, api_key=key)
        if args.llm_url
        else DemoResponder()
    )
    try:
        chat = Chat(args, responder, connect)
    except MicFileError as exc:
        print(f"duplexd chat: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(chat.run)
    except (SessionError, OSError, LLMError) as exc:
        print(f"duplexd chat: {exc}", file=sys.stderr)
        return 1
    finally:
        chat.close()
    return 0


def _say(line: str) -> None:
    print(line, flush=True)


# ---------------------------------------------------------------------- audio in and out


class MicFileError(ValueError):
    """`--mic-file` cannot be used; `str()` is one line saying why."""


def read_wav_16k(path: str) -> np.ndarray:
    """A WAV file as 16 kHz mono float32. MicFileError (one line) if it cannot be read or is
    not a 16-bit PCM WAV file."""
    import soxr

    try:
        with wave.open(path, "rb") as w:
            rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
            raw = w.readframes(w.getnframes())
    except OSError as exc:
        raise MicFileError(f"--mic-file {path}: {exc.strerror or exc}") from None
    except (wave.Error, EOFError) as exc:
        raise MicFileError(
            f"--mic-file {path}: not a PCM WAV file ({exc or 'empty'}); convert it, e.g."
            f" ffmpeg -i IN -ac 1 -ar 16000 -sample_fmt s16 OUT.wav"
        ) from None
    if width != 2:
        raise MicFileError(f"--mic-file {path}: only 16-bit WAV files are supported")
    audio = np.frombuffer(raw, "<i2").astype(np.float32) / 32768
    if channels > 1:
        audio = audio.reshape(-1, channels).mean(axis=1)
    if rate != UPLINK_RATE_HZ:
        audio = np.asarray(soxr.resample(audio, rate, UPLINK_RATE_HZ), dtype=np.float32)
    return audio


def _sounddevice() -> Any:
    try:
        import sounddevice  # type: ignore[import-not-found,import-untyped,unused-ignore]

        sounddevice.query_devices()
        return sounddevice
    except Exception:  # no library, no PortAudio, or no sound card
        return None


# ---------------------------------------------------------------------- the chat


class Chat:
    def __init__(
        self, args: argparse.Namespace, responder: Responder, connect: ConnectOptions
    ) -> None:
        self.args = args
        self.connect = connect
        self.responder = responder
        self.speaker = Speaker(args.out, DOWNLINK_RATE_HZ, None if args.out else _sounddevice())
        self.mic_audio: np.ndarray | None = read_wav_16k(args.mic_file) if args.mic_file else None
        self.sd = None if (args.mic_file or args.no_mic) else _sounddevice()
        self.uplink = self.mic_audio is not None or self.sd is not None
        self.epoch = 0
        self.mic_t0 = 0.0  # when uplink sample 0 was captured
        self.replies: set[int] = set()
        self.replies_done = 0
        self.reply_scope: trio.CancelScope | None = None
        self.speech_stop_t = math.nan
        self.stopped_at = math.nan  # when SpeechStopped arrived
        self.turn_end: fr.TurnEnd | None = None  # the daemon's report on that end of turn
        self.forgiven: list[int] = []  # onsets (uplink samples) of backchannels: no reply
        self.waiting_audio: dict[int, float] = {}  # reply uid -> end-of-speech time
        self.said = SaidReplies(responder.heard)  # what the replies said, until heard
        self.nursery: trio.Nursery | None = None
        # inputs that end: the microphone file, a standard input that is not a terminal
        self.open_inputs = {"stdin"} if not sys.stdin.isatty() else set()
        if self.mic_audio is not None:
            self.open_inputs.add("mic file")
        self.speaking = False  # between SpeechStarted and its transcript
        self.quitting = False  # quit() was called (not the --timeout)
        self.replying = 0  # replies whose text is still being made

    def close(self) -> None:
        self.speaker.close()

    async def run(self) -> None:
        a = self.args
        mode = "soft" if a.soft_barge_in else "immediate"
        options: dict[str, Any] = {
            "vad": {
                "threshold": a.vad_threshold,
                "barge_in": not a.no_barge_in,
                "barge_in_mode": mode,
                "noise_suppression": a.noise_suppression,
                "end_reports": True,  # TURN_END: the end of turn's share of the latency
            }
        }
        if a.interim_ms:  # (in range: `run_chat` checked)
            options["asr"] = {"partial_ms": a.interim_ms}
        async with open_session(
            a.url,
            sample_rate_hz=DOWNLINK_RATE_HZ,
            uplink_rate_hz=UPLINK_RATE_HZ if self.uplink else 0,
            voice=a.voice,
            engine=a.engine,
            token=self.connect.token,
            ssl_context=self.connect.ssl_context,
            options=options,
        ) as session:
            mic = "file " + a.mic_file if a.mic_file else "sound card" if self.sd else "none"
            _say(
                f"[connected] {session.welcome.engine}/{session.welcome.voice}; mic: {mic};"
                f" audio out: {self.speaker.kind}; type a line to ask it, /quit to leave"
            )
            if self.speaker.kind == "none":
                _say(
                    "[no sound card here: the replies are not played; pip install"
                    " 'duplexd[audio]' (and PortAudio) for speaker and microphone, or --out"
                    " reply.wav]"
                )
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                if a.timeout > 0:
                    nursery.cancel_scope.deadline = trio.current_time() + a.timeout
                nursery.start_soon(self._frames, session)
                if self.speaker.kind == "speaker":
                    nursery.start_soon(self._played, session)
                nursery.start_soon(self._stdin, session)
                if self.open_inputs and self.sd is None:  # every input ends: so do we
                    nursery.start_soon(self._end_when_done)
                if self.mic_audio is not None:
                    nursery.start_soon(self._mic_file, session, self.mic_audio)
                elif self.sd is not None:
                    nursery.start_soon(self._mic_device, session)
            if a.timeout > 0 and nursery.cancel_scope.cancelled_caught and not self.quitting:
                _say("[timeout]")

    def quit(self) -> None:
        self.quitting = True
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------ uplink

    async def _mic_file(self, session: ClientSession, audio: np.ndarray) -> None:
        """The file in real time, 20 ms frames on absolute deadlines, then silence."""
        n = fr.frame_samples(UPLINK_RATE_HZ)
        pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
        silence = bytes(2 * n)
        self.mic_t0 = trio.current_time()
        last = len(audio) // n + round(TRAILING_SILENCE_S / FRAME_S)
        k = 0
        while True:
            chunk = pcm[2 * n * k : 2 * n * (k + 1)]
            await trio.sleep_until(self.mic_t0 + (k + 1) * FRAME_S)  # captured by then
            await session.send_audio(chunk.ljust(2 * n, b"\x00") if chunk else silence)
            k += 1
            if k == last:
                self.open_inputs.discard("mic file")  # silence goes on, as from a muted mic

    async def _mic_device(self, session: ClientSession) -> None:
        send, receive = trio.open_memory_channel[bytes](50)
        token = trio.lowlevel.current_trio_token()
        n = fr.frame_samples(UPLINK_RATE_HZ)

        def callback(indata: Any, _frames: int, _time: Any, _status: Any) -> None:
            data = bytes(indata)
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(lambda: _offer(send, data))

        stream = self.sd.RawInputStream(  # type: ignore[union-attr]
            samplerate=UPLINK_RATE_HZ, channels=1, dtype="int16", blocksize=n, callback=callback
        )
        self.mic_t0 = trio.current_time()
        with stream:
            async for data in receive:
                await session.send_audio(data)

    # ------------------------------------------------------------------ downlink and events

    async def _played(self, session: ClientSession) -> None:
        """The sound card's PLAYED reports (playback.py), sent as the card's thread hands them
        over (what the server's echo canceller aligns its reference with)."""
        send, receive = trio.open_memory_channel[Position](64)
        token = trio.lowlevel.current_trio_token()

        def offer(positions: list[Position]) -> None:
            for p in positions:
                _offer(send, p)

        def report(positions: list[Position]) -> None:  # (on the card's thread)
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(offer, positions)

        self.speaker.report = report
        try:
            async for p in receive:
                await session.send_played(
                    p.utterance_id, p.samples, clock_us=p.clock_us, final=p.final
                )
        finally:
            self.speaker.report = None

    def _mic_time(self, sample: int) -> float:
        return self.mic_t0 + sample / UPLINK_RATE_HZ

    async def _frames(self, session: ClientSession) -> None:
        async for frame in session:
            now = trio.current_time()
            if isinstance(frame, fr.Audio):
                if frame.epoch == self.epoch:
                    self.speaker.play(frame)
                if frame.seq == 0 and frame.utterance_id in self.waiting_audio:
                    t_stop = self.waiting_audio.pop(frame.utterance_id)
                    _say(f"[latency] end of speech -> first reply audio {_ms(now - t_stop)}")
            elif isinstance(frame, fr.SpeechStarted):
                self.speaking = True
                _say(f"[speech started at {frame.uplink_sample / UPLINK_RATE_HZ:.2f} s]")
            elif isinstance(frame, fr.TurnEnd):
                self.turn_end = frame
            elif isinstance(frame, fr.SpeechStopped):
                self.speech_stop_t = self._mic_time(frame.uplink_sample)
                self.stopped_at = now
                if self.turn_end is not None and self.turn_end.uplink_sample != frame.uplink_sample:
                    self.turn_end = None  # (not this turn's)
                _say(f"[speech stopped at {frame.uplink_sample / UPLINK_RATE_HZ:.2f} s]")
            elif isinstance(frame, fr.Transcript):
                self._on_transcript(session, frame, now)
            elif isinstance(frame, fr.Interrupted):
                self.epoch = frame.epoch
                self.speaker.flush()
                who = "you spoke" if frame.vad else "stopped"
                if frame.utterance_id:
                    _say(
                        f"[barge-in: {who}] utterance {frame.utterance_id} cut after"
                        f" {frame.samples_sent / session.sample_rate_hz:.2f} s,"
                        f" {frame.chars_spoken} characters"
                    )
                if self.reply_scope is not None:
                    self.reply_scope.cancel()  # its text would be ignored anyway
                if self.speaker.kind != "speaker":  # (no HEARD comes: what left the server)
                    self.said.heard_up_to(frame.utterance_id, frame.chars_spoken)
                self._reply_finished(frame.utterance_id)
                for _ in range(frame.cancelled_utterances):
                    self._reply_finished(-1)
            elif isinstance(frame, fr.UtteranceDone):
                self._reply_finished(frame.utterance_id)
            elif isinstance(frame, fr.Heard):
                self._on_heard(frame, session.sample_rate_hz)
            elif isinstance(frame, fr.BargeIn):
                self._on_barge_in(frame)
            elif isinstance(frame, fr.Paused | fr.Resumed):
                _say(f"[{type(frame).__name__.lower()}]")

    def _on_barge_in(self, frame: fr.BargeIn) -> None:
        heard = f' "{frame.text}"' if frame.text else ""
        reason = frame.reason.name.lower().replace("_", " ")
        if frame.outcome is fr.BargeInOutcome.HELD:
            _say("[barge-in: held, you made a sound]")
        elif frame.outcome is fr.BargeInOutcome.RESUMED:
            self.forgiven.append(frame.uplink_sample)
            _say(f"[barge-in: forgiven{heard} ({reason}), the reply goes on]")
        else:
            _say(f"[barge-in: committed{heard} ({reason})]")

    def _on_heard(self, frame: fr.Heard, rate_hz: int) -> None:
        """What the user heard of a reply cut short (HEARD: up to the last word the speaker
        played whole), said, and kept as the reply in the responder's conversation; a reply
        heard to its end is not told again."""
        uid = frame.utterance_id
        text = self.said.text(uid)
        if text is None:
            return  # (not a reply of ours, or an old one)
        if frame.chars_heard < len(text.rstrip()):
            _say(
                f'[heard] you heard "{text[: frame.chars_heard].strip()}" of utterance {uid}'
                f" ({frame.chars_heard} of {len(text)} characters,"
                f" {frame.samples_played / rate_hz:.2f} s played)"
            )
        self.said.heard_up_to(uid, frame.chars_heard)

    def _reply_finished(self, uid: int) -> None:
        if uid in self.replies or (uid == -1 and self.replies):
            self.replies.discard(uid if uid != -1 else max(self.replies))
            self.replies_done += 1
            if self.args.max_turns and self.replies_done >= self.args.max_turns:
                _say("[done]")
                self.quit()

    def _on_transcript(self, session: ClientSession, frame: fr.Transcript, now: float) -> None:
        if not frame.final:
            _say(f"  … {frame.text}")
            return
        self.speaking = False
        t_stop = self._mic_time(frame.end_sample)
        if not math.isnan(self.speech_stop_t):
            t_stop = self.speech_stop_t
        if any(frame.start_sample <= x < frame.end_sample for x in self.forgiven):
            self.forgiven = [x for x in self.forgiven if x >= frame.end_sample]
            _say(f"you (backchannel, no reply): {frame.text}")
            return
        _say(f"you: {frame.text}")
        asr = now - self.stopped_at if now >= self.stopped_at else math.nan
        end_of_turn = self.stopped_at - t_stop
        _say(
            f"[latency] end of speech -> transcript {_ms(now - t_stop)}"
            f" (end of turn {_ms(end_of_turn)}{_split(self.turn_end, end_of_turn)},"
            f" ASR {_ms(asr)})"
        )
        self.turn_end = None
        if frame.text.strip() and self.nursery is not None:
            self.nursery.start_soon(self._reply, session, frame.text, t_stop)

    async def _reply(self, session: ClientSession, text: str, t_stop: float) -> None:
        uid = session.new_utterance_id()
        self.replies.add(uid)
        if not math.isnan(t_stop):  # (typed: no end of speech to time it from)
            self.waiting_audio[uid] = t_stop
        words = self.said.started(uid)
        self.replying += 1
        try:
            await self._stream_reply(session, uid, text, words)
        finally:
            self.replying -= 1
            self.said.ended(uid)
        _say(f"agent: {''.join(words).strip()}")

    async def _stream_reply(
        self, session: ClientSession, uid: int, text: str, words: list[str]
    ) -> None:
        with trio.CancelScope() as scope:
            self.reply_scope = scope
            try:
                # a barge-in may cancel this while it sends a chunk: closing the reply at once
                # closes the LLM connection with it
                async with contextlib.aclosing(self.responder.reply(text)) as chunks:
                    async for chunk in chunks:
                        words.append(chunk)
                        await session.send_text(uid, chunk)
                await session.send_text(uid, "", end=True)
            except LLMError as exc:
                _say(f"[llm error] {exc}")
                words[:] = ["Sorry, I could not get an answer."]  # what is said, and shown
                await session.send_text(uid, words[0], end=True)
        if self.reply_scope is scope:
            self.reply_scope = None

    async def _end_when_done(self) -> None:
        """Quit once every input has ended and nothing is in flight (no speech waiting for
        its transcript, no reply being made or spoken) for `IDLE_S`."""
        quiet_since: float | None = None
        while True:
            await trio.sleep(0.1)
            busy = self.open_inputs or self.speaking or self.replying or self.replies
            now = trio.current_time()
            if busy:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= IDLE_S:
                _say("[done]")
                self.quit()
                return

    # ------------------------------------------------------------------ the keyboard

    async def _stdin(self, session: ClientSession) -> None:
        while True:
            line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            if not line:
                self.open_inputs.discard("stdin")  # EOF: no more typed lines
                return
            cmd = line.strip()
            if cmd == "/quit":
                self.quit()
                return
            if cmd == "/pause":
                await session.pause()
            elif cmd == "/resume":
                await session.resume()
            elif cmd == "/stop":
                await session.interrupt()
            elif cmd.startswith("/say "):
                await session.say(cmd[len("/say ") :])
            elif cmd.startswith("/"):
                _say("commands: /say TEXT /pause /resume /stop /quit")
            elif cmd and self.nursery is not None:
                _say(f"you: {cmd}")  # typed, it goes to the responder as speech would
                self.nursery.start_soon(self._reply, session, cmd, math.nan)


def _offer(send: trio.MemorySendChannel[_T], item: _T) -> None:
    with contextlib.suppress(trio.WouldBlock):  # (its reader far behind: drop one)
        send.send_nowait(item)


_DECIDED_BY = {
    fr.TurnEndBy.SILENCE: "a fixed end",
    fr.TurnEndBy.MODEL: "the turn model",
    fr.TurnEndBy.WORDS: "the words",
    fr.TurnEndBy.MAX_SILENCE: "vad.max_silence_ms",
    fr.TurnEndBy.FORGIVEN: "a forgiven sound",
}


def _split(report: fr.TurnEnd | None, end_of_turn: float) -> str:
    """The end of turn's parts from the daemon's TURN_END report: the silence it needed, the
    wait for what decided, and the rest (the uplink's frames and buffers, the network); "" without
    a report."""
    if report is None:
        return ""
    silence = report.silence_samples / UPLINK_RATE_HZ
    decided = report.decided_us / 1e6
    return (
        f": {_ms(silence)} of silence, decided by {_DECIDED_BY[report.by]} {_ms(decided)}"
        f" later, frames and network {_ms(end_of_turn - silence - decided)}"
    )


def _ms(seconds: float) -> str:
    return "? ms" if math.isnan(seconds) else f"{seconds * 1000:.0f} ms"
