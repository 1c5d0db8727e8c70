"""The garbage-collection policy (`duplexd._ops.collector`): what the collector walks, and when
the frozen set is swept."""

from __future__ import annotations

import gc
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import trio
import trio.testing

from duplexd._ops import collector
from duplexd._ops.collector import GarbagePolicy
from duplexd.engines.tone import ToneEngine, ToneVoice


class Node:
    """A reference cycle of one object (weakrefs tell when it is freed)."""

    def __init__(self) -> None:
        self.me = self


class Leaf:
    """An object in no cycle."""


@pytest.fixture
def policy() -> Iterator[GarbagePolicy]:
    p = GarbagePolicy(growth=2.0, min_objects=10, min_interval_s=60.0)
    try:
        yield p
    finally:
        p.close()
    assert gc.get_freeze_count() == 0


async def test_survivors_of_a_full_collection_are_frozen(policy: GarbagePolicy) -> None:
    policy.install()
    frozen = gc.get_freeze_count()
    assert frozen > 0 and len(gc.get_objects(2)) < 1000  # all alive then: out of reach
    alive = [Node() for _ in range(100)]
    gc.collect()  # (as the collector's own would: survivors frozen by the callback)
    assert gc.get_freeze_count() >= frozen + 100
    assert not any(any(a is o for o in gc.get_objects()) for a in alive[:3])
    g = policy.stats()
    assert g.full_collections == 1 and g.longest_s == g.full_collection_s > 0
    # counted at that collection; since then frozen objects may only have been freed (by their
    # reference counts: a thread of an earlier test letting go of some, say), none frozen
    assert frozen + 100 <= g.frozen and gc.get_freeze_count() <= g.frozen


async def test_garbage_frozen_is_freed_by_refcount_or_by_a_sweep(
    policy: GarbagePolicy,
) -> None:
    policy.install()
    plain, cycle = [Leaf()], Node()
    gc.collect()  # both frozen
    dead_plain, dead_cycle = weakref.ref(plain[0]), weakref.ref(cycle)
    del plain, cycle
    assert dead_plain() is None  # reference counting frees a frozen object at once
    gc.collect()
    assert dead_cycle() is not None  # a frozen cycle waits ...
    assert policy.sweep() >= 1  # ... for a sweep
    assert dead_cycle() is None
    g = policy.stats()
    assert g.sweeps == 1 and g.collected >= 1 and g.sweep_s > 0
    assert g.full_collections == 2  # the two above; the sweep is not counted as one


async def test_close_hands_everything_back(policy: GarbagePolicy) -> None:
    policy.install()
    cycle = Node()
    gc.collect()
    dead = weakref.ref(cycle)
    del cycle
    policy.close()
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert dead() is None
    assert policy.stats().frozen == 0


def test_a_sweep_is_due_when_the_frozen_set_has_doubled_and_time_has_passed() -> None:
    p = GarbagePolicy(growth=2.0, min_objects=50_000, min_interval_s=60.0)
    p._left, p._last_sweep = 100_000, 0.0
    assert not p.due(59.9, 10**9)  # too soon, however much was frozen
    assert not p.due(60.0, 199_999)
    assert p.due(60.0, 200_000)
    p._left = 10_000  # a small set: it must also grow by `min_objects`
    assert not p.due(600.0, 59_999)
    assert p.due(600.0, 60_000)


async def test_run_sweeps_when_due_on_its_checks(
    policy: GarbagePolicy, autojump_clock: trio.testing.MockClock
) -> None:
    swept: list[float] = []
    policy.install()
    policy.sweep = lambda: swept.append(trio.current_time()) or 0  # type: ignore[method-assign]
    left = policy._left
    # the frozen set more than doubles: frozen objects may die meanwhile (at most all `left`
    # of them; after a whole test run, with torch loaded, that is hundreds of thousands, and
    # one death below exactly twice `left` was enough to miss the sweep on CI)
    keep = [Node() for _ in range(2 * left + policy.min_objects)]
    gc.collect()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(policy.run)
        await trio.sleep(61.0)
        nursery.cancel_scope.cancel()
    # checks every CHECK_INTERVAL_S from install (time 0): the first at min_interval_s sweeps
    assert collector.CHECK_INTERVAL_S == 5.0 and swept == [60.0]
    del keep


async def test_a_new_sessions_objects_are_frozen_once_it_settles(
    policy: GarbagePolicy, autojump_clock: trio.testing.MockClock
) -> None:
    policy.install()
    frozen_at_install = gc.get_freeze_count()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(policy.run)
        await trio.sleep(1.0)
        made = [Leaf() for _ in range(100)]  # what a session's setup makes, long-lived
        policy.session_opened()
        await trio.sleep(collector.SETTLE_S / 2)
        policy.session_opened()  # another opens meanwhile: both settle together
        assert policy.stats().settled == 0
        await trio.sleep(collector.SETTLE_S)
        assert policy.stats().settled == 1
        await trio.sleep(30.0)  # nothing opened since: nothing more to freeze
        nursery.cancel_scope.cancel()
    assert policy.stats().settled == 1
    assert gc.get_freeze_count() >= frozen_at_install + len(made)
    walked = {id(o) for generation in range(3) for o in gc.get_objects(generation)}
    assert not any(id(m) in walked for m in made)  # out of every collection's reach


def test_a_histograms_buckets_are_nothing_the_collector_walks() -> None:
    # every session keeps several histograms of 1,000-4,000 buckets: as a list, each slot
    # would be a reference every full collection walks (the session's share of a stall)
    from duplexd._ops.metrics import (
        Histogram,
        barge_in_histogram,
        first_audio_histogram,
        interrupt_histogram,
        pacing_histogram,
    )

    for h in (Histogram(), pacing_histogram(), first_audio_histogram(), interrupt_histogram(),
              barge_in_histogram()):  # fmt: skip
        assert len(gc.get_referents(h._counts)) <= 1  # (an array refers to its type only)
        h.record(0.001)
        assert sum(h._counts) == 1


async def _garbage_of_one_session(daemon: Any, one: Callable[[], Awaitable[None]]) -> int:
    """Run `one` (a client's session) twice, the first for imports and caches; the second
    with the collector saving what it finds: how many objects of it (the daemon's side and
    the client's) only the cyclic collector could free. Waits for the daemon to end each
    session, so that nothing is counted as alive that would have been garbage."""

    async def ended() -> None:
        with trio.fail_after(10):
            # (the connection handler gives its address back as its last step)
            while daemon.sessions or daemon.connecting or daemon.by_address:  # noqa: ASYNC110
                await trio.sleep(0.02)
        await trio.sleep(0.1)  # (trio-websocket's own last steps after the handler)

    await one()
    await ended()
    gc.collect()
    opened = daemon.sessions_total
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        await one()
        await ended()
        gc.collect()
        garbage = len(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert daemon.sessions_total == opened + 1  # (a session was opened and has ended)
    return garbage


class _GatedTone(ToneEngine):
    """The tone engine, whose synthesis of any text but the first sentence's ("Hi.") says so
    (`entered`) and waits for `gate` (a test double: the barge-in finds the worker thread
    inside it)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.entered = threading.Event(), threading.Event()
        self.gate.set()

    def open_voice(self, name: str) -> ToneVoice:
        voice = super().open_voice(name)
        synthesize, gate, entered = voice.synthesize, self.gate, self.entered

        def gated(text: str) -> Any:
            if "Hi" not in text:
                entered.set()
                gate.wait(10)
            return synthesize(text)

        voice.synthesize = gated  # type: ignore[method-assign]
        return voice


@pytest.mark.parametrize("barge_in", [False, True], ids=["spoken", "interrupted"])
async def test_a_finished_session_is_freed_by_reference_counting(barge_in: bool) -> None:
    # a session's objects that only the cyclic collector could free would wait, frozen, for
    # a sweep (a frozen set that doubles): the session breaks its own cycles when it ends.
    # A barge-in that finds synthesis running stops it with an exception raised in the
    # worker thread, whose traceback held trio's frame that held it: a cycle, with the
    # session in it (`make soak` grew ~7 KB a cycle while no sweep came)
    from harness import running_daemon

    from duplexd.client.session import open_session

    engine = _GatedTone()

    async def one() -> None:
        async with open_session(daemon.url) as s:
            if barge_in:
                engine.gate.clear()  # its second sentence waits in the worker thread ...
                engine.entered.clear()
            await s.say("Hi. Then a second sentence, cut off while it is made.")
            if barge_in:
                await trio.to_thread.run_sync(engine.entered.wait, 10)
                await s.interrupt()
                engine.gate.set()  # ... until the barge-in: then it finds it cancelled
            while type(await s.receive_frame()).__name__ not in ("UtteranceDone", "Interrupted"):
                pass

    async with running_daemon(engine) as daemon:
        assert await _garbage_of_one_session(daemon, one) == 0


@pytest.mark.parametrize("mode", ["immediate", "soft"])
async def test_a_finished_session_with_an_uplink_is_freed_by_reference_counting(mode: str) -> None:
    # the session and its uplink call each other back, and the uplink's transcripts and end
    # of turn call it back (and, with soft barge-ins, its holds: holds.py): cycles that held
    # each uplink session (its turn audio ~2 MB) frozen until a sweep, until `forget_session`
    from harness import running_daemon

    from duplexd._uplink.asr import Transcriber
    from duplexd._uplink.services import UplinkServices
    from duplexd._uplink.turn import TurnModel
    from duplexd._uplink.vad import VadModel
    from duplexd.client.session import open_session

    async def one() -> None:
        options = {"vad": {"barge_in_mode": mode}}
        async with open_session(daemon.url, uplink_rate_hz=16_000, options=options) as s:
            await s.say("Hi.")
            for _ in range(25):  # half a second of a quiet microphone
                await s.send_audio(bytes(s.uplink_frame_bytes))
            while type(await s.receive_frame()).__name__ != "UtteranceDone":
                pass

    services = UplinkServices.create(
        VadModel(), transcriber=Transcriber(cpu_threads=1), turn_model=TurnModel()
    )
    async with running_daemon(uplink_services=services) as daemon:
        assert await _garbage_of_one_session(daemon, one) == 0


@pytest.mark.parametrize(
    ("bad", "close_code"),
    [("server_frame", 1002), ("huge_prefix", 1009)],
)
async def test_a_session_ended_by_bad_input_is_freed_by_reference_counting(
    bad: str, close_code: int
) -> None:
    # the decoder keeps its error (to raise it again), whose traceback kept the read loop's
    # frame, so the session: every hostile session's, frozen until a sweep
    from harness import running_daemon
    from trio_websocket import ConnectionClosed, wrap_client_stream

    from duplexd.protocol import frames as fr
    from duplexd.protocol.codec import encode

    messages = {"server_frame": encode(fr.Pong(1, 2)), "huge_prefix": b"\xff\xff\x00\x01garbage"}
    codes: list[int] = []

    async def one() -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", daemon.port)  # (closed here, whatever
        try:  # trio-websocket does when the server closes first)
            async with trio.open_nursery() as nursery:
                ws = await wrap_client_stream(
                    nursery, stream, "127.0.0.1", "/v1", subprotocols=[fr.SUBPROTOCOL]
                )
                await ws.send_message(encode(fr.Hello()))
                await ws.send_message(messages[bad])
                with trio.fail_after(5):
                    try:
                        while True:
                            await ws.get_message()
                    except ConnectionClosed as exc:
                        codes.append(exc.reason.code)
        finally:
            await trio.aclose_forcefully(stream)

    async with running_daemon() as daemon:
        assert await _garbage_of_one_session(daemon, one) == 0
    assert codes == [close_code] * 2  # (the Error, then the close: SPEC §8)


async def test_a_writer_that_ends_with_answers_unsent_is_freed_by_reference_counting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # answers still queued when a session ends (a client that reads nothing) are builders:
    # methods of the session, closures over the writer; `forget_session` lets them go
    from test_first_frame_grid import RATE_HZ, SAMPLES, Events

    from duplexd._downlink.pacer import open_pacer
    from duplexd._downlink.ring import FrameRing
    from duplexd._downlink.writer import Downlink
    from duplexd.protocol import frames as fr

    async def send(data: bytes) -> None:
        await trio.sleep_forever()  # the client reads nothing: the first send never ends

    ring = FrameRing(16, fr.AUDIO_HEADER_BYTES + SAMPLES * fr.BYTES_PER_SAMPLE)
    gc.disable()  # (only reference counting frees anything here)
    try:
        async with open_pacer() as pacer:
            dl = Downlink(ring=ring, send=send, pacer=pacer, rate_hz=RATE_HZ, events=Events(1))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(dl.run)
                dl.send_control(b"an answer")  # stuck in its send ...
                await trio.testing.wait_all_tasks_blocked()
                dl.interrupt(0)  # ... and the Interrupted (built when sent) waits behind it
                nursery.cancel_scope.cancel()
            dl.forget_session()
            gone = weakref.ref(dl)
            del dl
            assert gone() is None
    finally:
        gc.enable()
        ring.close()


async def test_its_checks_and_stats_do_not_walk_the_frozen_set(
    policy: GarbagePolicy,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # gc.get_freeze_count walks the frozen set with the GIL held (~6 ms in the tone daemon):
    # on a timer, that was a stall of its own every 5 s; it runs where the loop is held anyway
    policy.install()
    walks: list[int] = []
    count = gc.get_freeze_count

    def counted() -> int:
        walks.append(1)
        return count()

    monkeypatch.setattr(gc, "get_freeze_count", counted)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(policy.run)
        await trio.sleep(6 * collector.CHECK_INTERVAL_S)
        frozen = policy.stats().frozen
        nursery.cancel_scope.cancel()
    assert walks == [] and frozen > 0
    keep = [Node() for _ in range(100)]
    gc.collect()  # a full collection counts it, once
    assert walks == [1] and policy.stats().frozen >= frozen + 100
    del keep


async def test_each_full_collection_is_logged_with_its_pause_by_the_loop_right_after(
    policy: GarbagePolicy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="duplexd.gc")
    policy.install()
    before = time.time()
    gc.collect()  # (as the collector's own would)
    gc.collect()
    assert not [r for r in caplog.records if r.message == "full garbage collection"]
    await trio.sleep(0.01)  # the loop's next rounds log them
    logged = [r for r in caplog.records if r.message == "full garbage collection"]
    assert len(logged) == 2 == policy.stats().full_collections
    for record in logged:
        assert before - 0.001 <= record.at <= time.time() and record.pause_ms >= 0  # type: ignore[attr-defined]
    assert sum(r.pause_ms for r in logged) == pytest.approx(  # type: ignore[attr-defined]
        1000 * policy.stats().full_collection_s, abs=0.2
    )
