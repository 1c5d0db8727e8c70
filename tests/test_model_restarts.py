"""The model process going away and coming back, as `RemoteEngine` sees it: one that leaves
(SIGTERM, `wire.Leaving`) finishes the utterances begun on it while new ones wait for the next
one; one that dies has the pieces it never answered asked of the next one, once; the races of a
link closing as a request begins on it. A whole restart as systemd does it, with real
processes: test_model_service.py; the rest of the model process: test_model_process.py."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from test_model_process import EagerEngine, model_process
from test_service import until

from duplexd.engines.base import EngineError, FloatAudio
from duplexd.engines.remote import ModelGoneError, RemoteEngine, wire
from duplexd.engines.remote.client import RemoteVoice
from duplexd.engines.remote.server import ModelServer, serve_model
from duplexd.engines.tone import ToneEngine

pytestmark = pytest.mark.unit


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "model.sock")


async def test_a_piece_a_dead_model_process_never_answered_is_asked_of_the_next_one(
    path: str,
) -> None:
    dying = _Deadly()  # a piece that is still being made when the model process dies
    got: list[FloatAudio] = []
    async with model_process(path, dying) as scope:
        remote, voice = await _sine(path)
        thread = threading.Thread(target=lambda: got.append(voice.synthesize("Cut short.")))
        thread.start()
        await trio.to_thread.run_sync(dying.asked.wait, 5)
        await _dies(path, scope, remote, dying)
    await trio.sleep(0.3)
    assert not got  # nothing of it came: it waits for the next model process ...
    async with model_process(path, ToneEngine()):  # ... which systemd starts
        await trio.to_thread.run_sync(thread.join, 5)
        assert len(got) == 1 and len(got[0]) > 0
    remote._reconnect_wait_s = 0.3  # (none comes now)
    with pytest.raises(ModelGoneError, match="no model process at"):
        await trio.to_thread.run_sync(voice.synthesize, "Nobody there.")
    os.unlink(path)
    async with model_process(path, ToneEngine()):
        assert len(await trio.to_thread.run_sync(voice.synthesize, "Back again.")) > 0
    remote.close()


async def test_closing_the_engine_ends_a_wait_for_the_next_model_process(path: str) -> None:
    """A daemon that stops while its model process is down does not wait `model_wait_s` for
    the next one (longer than systemd's stop timeout): closing the engine ends the wait."""
    async with serving(path, ToneEngine()) as old:
        remote = await trio.to_thread.run_sync(lambda: RemoteEngine(path, reconnect_wait_s=60))
        voice = await trio.to_thread.run_sync(remote.open_voice, "sine")
        await _leave(old, path)
    asking, failed = _asking(voice, "Nobody there yet.")
    await trio.sleep(0.3)
    assert asking.is_alive()  # it waits for the next model process ...
    remote.close()  # ... until the daemon stops
    await trio.to_thread.run_sync(asking.join, 2)
    assert not asking.is_alive() and len(failed) == 1
    assert str(failed[0]) == "the engine is closed"


class _Heard(ToneEngine):
    """The tone engine, noting every text it is asked to speak (test double)."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []

    def open_voice(self, name: str) -> object:  # type: ignore[override]
        tone, texts = super().open_voice(name), self.texts

        class Noted:
            sample_rate_hz = tone.sample_rate_hz

            def synthesize(self, text: str) -> FloatAudio:
                texts.append(text)
                return tone.synthesize(text)

        noted = Noted()
        noted.name = tone.name  # type: ignore[attr-defined]
        return noted


@asynccontextmanager
async def serving(path: str, engine: object) -> AsyncIterator[ModelServer]:
    """A model server of `engine` at `path` (its `leave` as SIGTERM calls it)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen()
    try:
        async with trio.open_nursery() as nursery:
            yield await nursery.start(serve_model, engine, [sock])
            nursery.cancel_scope.cancel()
    finally:
        sock.close()


async def _leave(old: ModelServer, path: str | None = None) -> None:
    """SIGTERM: the model process `old` leaves (its socket file at `path` removed, as `duplexd
    serve-model` does, when given) and is gone within 5 s, once its daemons let it go."""
    old.leave()
    if path is not None:
        os.unlink(path)
    with trio.fail_after(5):
        await old.all_gone()


async def _sine(path: str, reconnect_wait_s: float | None = 10) -> tuple[RemoteEngine, RemoteVoice]:
    """A daemon's engine of the model process at `path` and its "sine" voice, opened
    (`reconnect_wait_s` None: the engine's own)."""
    options = {} if reconnect_wait_s is None else {"reconnect_wait_s": reconnect_wait_s}
    remote = await trio.to_thread.run_sync(lambda: RemoteEngine(path, **options))
    voice = await trio.to_thread.run_sync(remote.open_voice, "sine")
    return remote, voice  # type: ignore[return-value]


async def test_a_model_process_that_leaves_finishes_the_utterances_begun_there(path: str) -> None:
    old_engine, new_engine = _Heard(), _Heard()
    async with serving(path, old_engine) as old:
        remote, voice = await _sine(path)
        begun, unused = voice.for_utterance(), voice.for_utterance()  # type: ignore[attr-defined]
        await trio.to_thread.run_sync(begun.synthesize, "First piece.")
        link = remote._link
        assert link is not None
        old.leave()  # SIGTERM
        os.unlink(path)  # (as the model process does: the next one will listen there)
        await until(lambda: link.leaving)
        await trio.to_thread.run_sync(begun.synthesize, "Second piece.")  # still the old one's
        assert old_engine.texts == ["First piece.", "Second piece."]
        fresh = voice.for_utterance()  # type: ignore[attr-defined]
        later: list[FloatAudio] = []
        asked = threading.Thread(target=lambda: later.append(fresh.synthesize("New one.")))
        asked.start()  # a new utterance: it waits for the next model process
        await trio.sleep(0.3)
        assert not later and old.connected == 1 and link.alive  # `begun` still holds it
        async with serving(path, new_engine):
            await trio.to_thread.run_sync(asked.join, 5)
            assert len(later) == 1 and len(later[0]) > 0 and new_engine.texts == ["New one."]
            unused.release()
            assert link.alive  # (one that never spoke held nothing)
            begun.release()  # the utterance ended: the old model process may go
            await until(lambda: old.connected == 0)
            assert not link.alive and old_engine.texts == ["First piece.", "Second piece."]
            fresh.release()
            remote.close()


async def test_an_utterance_whose_model_process_died_between_pieces_goes_on_with_the_next(
    path: str,
) -> None:
    async with model_process(path, ToneEngine()) as scope:
        remote, voice = await _sine(path)
        utterance = voice.for_utterance()  # type: ignore[attr-defined]
        await trio.to_thread.run_sync(utterance.synthesize, "First piece.")
        first = remote._link
        scope.cancel()  # it dies between two pieces
    assert first is not None
    await until(lambda: not first.alive)
    os.unlink(path)
    async with model_process(path, ToneEngine()):  # systemd restarted it
        audio = await trio.to_thread.run_sync(utterance.synthesize, "Second piece.")
        assert len(audio) > 0 and remote._link is not first
        utterance.release()
        remote.close()


async def test_a_daemon_with_nothing_under_way_lets_a_leaving_model_process_go_at_once(
    path: str,
) -> None:
    async with serving(path, ToneEngine()) as old:
        remote, _ = await _sine(path, None)
        assert old.connected == 1
        await _leave(old)
        assert old.connected == 0
        await until(lambda: remote._link is not None and not remote._link.alive)
        remote.close()


async def test_a_request_that_finds_its_link_just_closed_by_leaving_goes_on_the_next(
    path: str,
) -> None:
    """The race of `_current` handing out the link and a `Leaving` closing it, idle, before
    the request begins on it: the request goes on the next link (played here by handing the
    closed link out once)."""
    async with serving(path, ToneEngine()) as old:
        remote = await trio.to_thread.run_sync(lambda: RemoteEngine(path, reconnect_wait_s=10))
        stale = remote._link
        assert stale is not None
        await _leave(old, path)
        await until(lambda: not stale.alive)
    async with serving(path, ToneEngine()):
        handed, current = [stale], remote._current
        remote._current = lambda: handed.pop() if handed else current()  # type: ignore[method-assign]
        voice = await trio.to_thread.run_sync(remote.open_voice, "sine")
        assert not handed and voice.name == "sine"
        remote.close()


async def test_a_text_the_wire_cannot_take_fails_alone_and_leaves_nothing_waiting(
    path: str,
) -> None:
    async with serving(path, ToneEngine()) as old:
        remote, voice = await _sine(path, None)
        with pytest.raises(EngineError, match="cannot ask the model process"):
            await trio.to_thread.run_sync(voice.synthesize, "x" * (wire.MAX_TEXT_BYTES + 1))
        await _leave(old)  # no request was left waiting: the daemon let it go
        remote.close()


async def test_a_call_with_no_model_process_waits_for_the_next_one(path: str) -> None:
    async with serving(path, ToneEngine()) as old:
        remote, voice = await _sine(path)
        await _leave(old, path)  # (nothing under way: the daemon lets it go at once)
    got: list[FloatAudio] = []
    waiting = threading.Thread(target=lambda: got.append(voice.synthesize("Wait for it.")))
    waiting.start()
    await trio.sleep(0.3)  # nobody listens: it tries again
    assert not got
    async with serving(path, ToneEngine()):  # systemd started the next one
        await trio.to_thread.run_sync(waiting.join, 5)
        assert len(got) == 1 and len(got[0]) > 0
    remote.close()


class _Deadly(ToneEngine):
    """A voice whose every piece is still being made when the test kills the model process:
    it notes the text, says it was `asked`, and waits for `release` (test double)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked, self.release = threading.Event(), threading.Event()
        self.texts: list[str] = []

    def open_voice(self, name: str) -> object:  # type: ignore[override]
        tone, engine = super().open_voice(name), self

        class Deadly:
            sample_rate_hz = tone.sample_rate_hz

            def synthesize(self, text: str) -> FloatAudio:
                engine.texts.append(text)
                engine.asked.set()
                engine.release.wait(5)
                return tone.synthesize(text)

        deadly = Deadly()
        deadly.name = tone.name  # type: ignore[attr-defined]
        return deadly


def _asking(voice: RemoteVoice, text: str) -> tuple[threading.Thread, list[ModelGoneError]]:
    """`voice` asked to speak `text` in a thread of its own (as a worker thread would), and
    the ModelGoneError it ends with, once it has."""
    failed: list[ModelGoneError] = []

    def ask() -> None:
        try:
            voice.synthesize(text)
        except ModelGoneError as exc:
            failed.append(exc)

    asking = threading.Thread(target=ask)
    asking.start()
    return asking, failed


async def _dies(path: str, scope: trio.CancelScope, remote: RemoteEngine, engine: _Deadly) -> None:
    """The model process of `scope` dies as a killed one does: no new connection reaches it
    and nothing more comes from it (its piece is let go only once the daemon's link is lost)."""
    link = remote._link
    assert link is not None
    os.unlink(path)
    scope.cancel()
    await until(lambda: not link.alive)
    engine.release.set()


async def test_a_piece_whose_model_process_dies_is_asked_of_one_more_only(path: str) -> None:
    """A text that itself kills the model process (a crash in its native code) takes down two
    at most: the piece is asked once more, not of every model process systemd restarts."""
    first = _Deadly()
    async with model_process(path, first) as scope:
        remote, voice = await _sine(path)
        asking, failed = _asking(voice, "Poison.")
        await trio.to_thread.run_sync(first.asked.wait, 5)
        await _dies(path, scope, remote, first)  # making the piece
    second = _Deadly()
    async with model_process(path, second) as scope:  # systemd restarted it
        await trio.to_thread.run_sync(second.asked.wait, 5)  # asked again ...
        await _dies(path, scope, remote, second)  # ... and it dies too
    await trio.to_thread.run_sync(asking.join, 5)
    assert not asking.is_alive(), "it waits for a third model process"
    assert len(failed) == 1 and "went away" in str(failed[0])
    assert first.texts == second.texts == ["Poison."]
    remote.close()


async def test_a_request_not_answered_in_time_on_a_leaving_link_is_not_asked_again(
    path: str,
) -> None:
    """A timeout is the request's own failure even when ending it closes its link (the model
    process is leaving and nothing else holds the link): not a lost link to ask again."""
    release = threading.Event()
    async with serving(path, EagerEngine(release)) as old:
        remote = await trio.to_thread.run_sync(
            lambda: RemoteEngine(path, reply_timeout_s=0.5, reconnect_wait_s=10)
        )
        slow = await trio.to_thread.run_sync(remote.open_voice, "slow")
        asking, failed = _asking(slow, "Too slow.")
        await until(lambda: old.stats().requests_active == 1)  # asked, not answered yet
        old.leave()  # SIGTERM
        os.unlink(path)
        await trio.to_thread.run_sync(asking.join, 5)
        assert not asking.is_alive(), "it waits to ask the next model process"
        assert len(failed) == 1 and "did not answer in 0.5 s" in str(failed[0])
        release.set()
        with trio.fail_after(5):
            await old.all_gone()  # the daemon let the leaving model process go
        remote.close()


def test_a_link_told_leaving_in_its_greeting_is_closed_at_once(path: str) -> None:
    """A model process that accepted the connection as it began to leave greets with `Hello`
    and `Leaving` together: nothing will ever hold that link, so it closes at once instead of
    keeping the old model process for its whole drain."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    info = {"name": "tone", "device": "cpu", "default_voice": "sine", "voices": ["sine"]}
    closed = threading.Event()

    def leaving_model_process() -> None:  # (a peer that plays the race: test double)
        conn, _ = listener.accept()
        with conn:
            conn.sendall(wire.encode(wire.Hello(info)) + wire.encode(wire.Leaving()))
            conn.settimeout(2)
            if conn.recv(1) == b"":
                closed.set()

    peer = threading.Thread(target=leaving_model_process)
    peer.start()
    try:
        remote = RemoteEngine(path, reconnect_wait_s=0.1)
        peer.join(5)
        assert closed.is_set() and remote._link is not None and not remote._link.alive
        assert remote.default_voice == "sine"  # (its hello is still the engine's)
        remote.close()
    finally:
        listener.close()


def test_a_stop_sent_while_the_link_is_busy_goes_out_after_without_holding_the_caller(
    path: str,
) -> None:
    """`send_soon` (a barge-in's Stop, from the event loop) with another send holding the link:
    it returns at once, and another thread sends the Stop once the link is free."""
    from duplexd.engines.remote.link import Link

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    info = {"name": "tone", "device": "cpu", "default_voice": "sine", "voices": ["sine"]}
    got: list[wire.Message] = []

    def model_process() -> None:  # (a peer that greets, then reads: test double)
        conn, _ = listener.accept()
        with conn:
            conn.sendall(wire.encode(wire.Hello(info)))
            conn.settimeout(5)
            decoder = wire.Decoder()
            while not got and (data := conn.recv(65536)):
                got.extend(decoder.feed(data))

    peer = threading.Thread(target=model_process)
    peer.start()
    link = Link(path, 5.0)
    try:
        with link._send_lock:  # (a send under way)
            t0 = time.monotonic()
            link.send_soon(wire.Stop(7))
            assert time.monotonic() - t0 < 0.5
            time.sleep(0.05)
            assert got == []
        peer.join(5)
        assert got == [wire.Stop(7)]
    finally:
        link.close("test over")
        listener.close()


async def test_an_utterance_whose_link_dies_as_its_piece_begins_goes_on_with_the_next(
    path: str,
) -> None:
    """The race of the utterance's link being handed out and its model process dying before
    the piece begins on it (played by handing the dead link out once): nothing was sent, so the
    piece goes on the next model process."""
    async with model_process(path, ToneEngine()) as scope:
        remote, voice = await _sine(path)
        utterance = voice.for_utterance()  # type: ignore[attr-defined]
        await trio.to_thread.run_sync(utterance.synthesize, "First piece.")
        first = remote._link
        scope.cancel()
    assert first is not None
    await until(lambda: not first.alive)
    os.unlink(path)
    async with model_process(path, ToneEngine()):
        handed, pinned = [first], remote._pinned
        remote._pinned = lambda pin: handed.pop() if handed else pinned(pin)  # type: ignore[method-assign]
        audio = await trio.to_thread.run_sync(utterance.synthesize, "Second piece.")
        assert len(audio) > 0 and not handed and remote._link is not first
        # lost as it begins on both tries: it fails (the second try was its last), saying why
        handed += [first, first]
        with pytest.raises(ModelGoneError, match="went away: closed the connection"):
            await trio.to_thread.run_sync(utterance.synthesize, "Third piece.")
        assert not handed
        utterance.release()
        remote.close()


async def test_a_voice_opened_before_is_handed_out_at_once_while_no_model_process_is_there(
    path: str,
) -> None:
    """A session opened during a restart is welcomed at once (its voice opened before, its
    answer kept); its first piece waits for the next model process, as every new piece does.
    A voice never opened waits for one."""
    async with serving(path, ToneEngine()) as old:
        remote, first = await _sine(path)
        await _leave(old, path)
    with trio.fail_after(1):
        again = await trio.to_thread.run_sync(remote.open_voice, "sine")
    assert (again.name, again.sample_rate_hz) == (first.name, first.sample_rate_hz)
    got: list[object] = []
    never = threading.Thread(target=lambda: got.append(remote.open_voice("high")))
    never.start()
    spoken: list[FloatAudio] = []
    speaking = threading.Thread(target=lambda: spoken.append(again.synthesize("Later.")))
    speaking.start()
    await trio.sleep(0.3)
    assert not got and not spoken  # both wait for the next model process ...
    async with serving(path, _Heard()) as new:  # ... which comes
        await trio.to_thread.run_sync(never.join, 5)
        await trio.to_thread.run_sync(speaking.join, 5)
        assert len(got) == 1 and len(spoken) == 1 and len(spoken[0]) > 0
        assert new.connected == 1
        remote.close()


async def test_voices_opened_before_are_forgotten_when_the_model_process_changed(
    path: str,
) -> None:
    class Fewer(ToneEngine):  # the next model process has other voices (test double)
        def voices(self) -> list[str]:
            return ["sine"]

    async with serving(path, ToneEngine()) as old:
        remote = await trio.to_thread.run_sync(lambda: RemoteEngine(path, reconnect_wait_s=10))
        await trio.to_thread.run_sync(remote.open_voice, "high")
        await _leave(old, path)
    async with serving(path, Fewer()):
        await trio.to_thread.run_sync(remote.open_voice, "sine")  # (on the changed one)
        assert set(remote._opened) == {"sine"}  # "high" is asked of it again, if ever
        remote.close()
