"""Stateful fuzz of `ServerProtocolState` against `spec_model.SessionModel` (SPEC §6, §7).

Rules send every client frame (Hello variants, resuming ones too (SPEC §6.4: the state only
checks the resume section's form; the daemon then looks the session up), Text with a new / the
same / an older / zero / a cancelled / the largest id, with and without END, of any size up to
the text limit and past it, Interrupt, Pause, Resume, Ping, GetStats, AudioUp with and without
an uplink, server frames the client must not send) and make every server move (Welcome with the
asked or another uplink rate, UtteranceDone of the oldest active or of any other id, other
server frames, `barge_in()`, Error, `close()`, a client frame sent by mistake); two rules aim
at the edges: filling the utterance queue to its limit and one past it, and text arriving after
an Interrupt.
Each answer must be the model's: "ok", False for ignored text, the same `RemoteProtocolError`
code for a client's mistake, a `LocalProtocolError` (INTERNAL) for a server move the rules
forbid; any other exception fails the test. After a client's mistake the server's only move is
Error (what the daemon does); a closed session refuses everything, then the next one starts.
The phase, Hello, version, uplink, active and open utterances must agree after every step.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from duplexd.protocol import frames as fr
from duplexd.protocol.codec import LocalProtocolError, RemoteProtocolError
from duplexd.protocol.options import parse_options
from duplexd.protocol.state import Phase, ServerProtocolState

from .spec_model import ILLEGAL, SessionModel, options_ok, resumes
from .stats import TRIED
from .strategies import (
    SERVER_FRAMES,
    encodable,
    hellos,
    options_texts,
    pcm,
    resume_options_texts,
    short,
    text,
    u16,
    u32,
    u64,
)

pytestmark = pytest.mark.unit

CLIENT_ONLY = st.sampled_from([fr.Interrupt(), fr.Pause(), fr.Resume(), fr.Ping(7), fr.GetStats()])
# new and newest ids most often; then a gap, older, zero, cancelled, the largest u32
ID_KINDS = ["new", "new", "newest", "newest", "new_gap", "older", "zero", "cancelled", "largest"]
TEXTS = st.tuples(
    st.sampled_from(ID_KINDS),
    st.integers(1, 1000),
    st.one_of(text, st.text(min_size=20, max_size=70).filter(encodable), st.integers(-2, 1)),
    st.booleans(),
)
FIRST_FRAMES = st.one_of(
    st.just(fr.Hello()),
    st.builds(fr.Hello, uplink_rate_hz=st.sampled_from([0, 16_000, 48_000])),
    hellos(),
    st.builds(fr.Hello, options=options_texts()),
    st.builds(fr.Hello, options=resume_options_texts()),  # state-level "ok" when well-formed
    st.none(),
)

LATE_FRAMES = st.one_of(CLIENT_ONLY, FIRST_FRAMES.filter(bool))
LATE_SENDS = st.one_of(SERVER_FRAMES, st.builds(fr.Error, st.sampled_from(fr.ErrorCode), short))


def welcome(uplink_rate_hz: int) -> fr.Welcome:
    return fr.Welcome(1, bytes(16), 48_000, 960, uplink_rate_hz, 65536, 100, 4, "tone", "sine")


class SessionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = ServerProtocolState(max_text_bytes=1, max_queued_utterances=1)
        self.model = SessionModel(1, 1)
        self.failed = False  # the client broke a rule: the server must send Error now

    @initialize(max_text_bytes=st.integers(1, 64), max_queued=st.integers(1, 4), first=FIRST_FRAMES)
    def start(self, max_text_bytes: int, max_queued: int, first: fr.Hello | None) -> None:
        """The limits, and most often a Hello first (a session's first frame)."""
        self.state = ServerProtocolState(
            max_text_bytes=max_text_bytes, max_queued_utterances=max_queued
        )
        self.model = SessionModel(max_text_bytes, max_queued)
        if first is not None:
            self._receive(first)

    # ------------------------------------------------------------------ client -> server

    def _receive(self, frame: object) -> None:
        expected = self.model.receive(frame)
        TRIED["state.client_frames"] += 1
        if isinstance(frame, fr.Hello) and resumes(frame.options):
            TRIED[f"state.resume_hello.{getattr(expected, 'name', expected)}"] += 1
        TRIED[f"state.answer.{getattr(expected, 'name', expected)}"] += 1
        try:
            answer = self.state.receive(frame)
        except RemoteProtocolError as exc:
            assert exc.error_code is expected, (frame, exc, expected)
            assert exc.close_code == exc.error_code.close_code
            self.failed = True
            return
        assert expected in ("ok", "ignored"), (frame, answer, expected)
        assert answer is (expected == "ok"), (frame, answer, expected)

    @precondition(
        lambda self: not self.failed and self.model.phase == "await_hello" and not self.model.hello
    )
    @rule(uplink=st.sampled_from([0, 16_000, 48_000]))
    def open_session(self, uplink: int) -> None:
        """The common path: a good Hello, then Welcome."""
        self._receive(fr.Hello(uplink_rate_hz=uplink))
        self._send(welcome(uplink))

    @precondition(lambda self: not self.failed and self.model.phase == "open")
    @rule(texts=st.lists(TEXTS, min_size=1, max_size=4))
    def receive_texts(self, texts: list[tuple[str, int, str | int, bool]]) -> None:
        """Text with an id picked relative to the model: new (next, or after a gap), the
        newest, an older one, zero, one an interrupt cancelled, the largest u32; a body of
        any text, or (an int) the bytes left under `max_text_bytes` plus that many."""
        for kind, gap, body, end in texts:
            if self.failed:
                return
            m = self.model
            uid = {
                "new": m.last_id + 1,
                "new_gap": m.last_id + gap,
                "newest": m.last_id,
                "older": max(m.last_id - gap, 1),
                "zero": 0,
                "cancelled": max(m.cancelled_upto - gap % max(m.cancelled_upto, 1), 0),
                "largest": 0xFFFF_FFFF,
            }[kind]
            uid = min(uid, 0xFFFF_FFFF)
            if isinstance(body, int):
                used = m.text_bytes if uid == m.open_utterance else 0
                body = "x" * max(m.max_text_bytes - used + body, 0)
            self._receive(fr.Text(uid, body, end))

    @precondition(lambda self: not self.failed and self.model.phase == "open")
    @rule(beyond=st.booleans())
    def fill_the_queue(self, beyond: bool) -> None:
        """New utterances (each text ended) up to `max_queued_utterances`, and one more."""
        m = self.model
        for _ in range(2 * m.max_queued_utterances + 2):
            if self.failed or len(m.active) >= m.max_queued_utterances + beyond:
                return
            if m.text_open:
                self._receive(fr.Text(m.last_id, "", True))
            else:
                self._receive(fr.Text(min(m.last_id + 1, 0xFFFF_FFFF), "ab", True))

    @precondition(lambda self: not self.failed and self.model.phase == "open")
    @rule(late=st.lists(st.sampled_from(["newest", "older", "zero", "new"]), max_size=3))
    def interrupt_then_late_text(self, late: list[str]) -> None:
        """Interrupt, then text the client wrote before it: for the newest cancelled id, an
        older one (ignored), zero, a new id."""
        self._receive(fr.Interrupt())
        for kind in late:
            if self.failed:
                return
            m = self.model
            uid = {
                "newest": m.cancelled_upto or m.last_id,
                "older": max(m.cancelled_upto - 1, 0),
                "zero": 0,
                "new": m.last_id + 1,
            }[kind]
            self._receive(fr.Text(min(uid, 0xFFFF_FFFF), "late", False))

    @precondition(lambda self: not self.failed and self.model.phase == "open")
    @rule(frames=st.lists(CLIENT_ONLY, min_size=1, max_size=3))
    def receive_control(self, frames: list[fr.Frame]) -> None:
        for frame in frames:
            self._receive(frame)

    @precondition(lambda self: not self.failed)
    @rule(
        frame=st.one_of(
            CLIENT_ONLY,
            hellos(),
            st.builds(fr.Hello, options=options_texts()),
            st.builds(fr.AudioUp, u32, pcm),
            SERVER_FRAMES,
        )
    )
    def receive_other(self, frame: fr.Frame) -> None:
        """In any phase: a control frame, a Hello (again?), uplink audio (negotiated?), a
        frame only a server sends."""
        self._receive(frame)

    # ------------------------------------------------------------------ the server's moves

    def _send(self, frame: object) -> None:
        expected = self.model.send(frame)
        TRIED["state.server_moves"] += 1
        TRIED[f"state.move.{expected}"] += 1
        try:
            self.state.send(frame)
        except LocalProtocolError as exc:
            assert expected == ILLEGAL, (frame, exc)
            assert exc.error_code is fr.ErrorCode.INTERNAL
            return
        assert expected == "ok", (frame, expected)

    @precondition(lambda self: not self.failed and self.model.phase == "await_hello")
    @rule(asked=st.booleans(), other=st.sampled_from([0, 16_000, 48_000, 8_000]))
    def send_welcome(self, asked: bool, other: int) -> None:
        """Welcome with the uplink rate the Hello asked for, or another."""
        hello = self.model.hello
        self._send(welcome(hello.uplink_rate_hz if asked and hello is not None else other))

    @precondition(lambda self: not self.failed and self.model.active)
    @rule()
    def send_done_of_the_oldest(self) -> None:
        """What the daemon does: UtteranceDone of the oldest active utterance, once its text
        has ended (it plays in order, and only to the end of a text that ended)."""
        uid = self.model.active[0]
        if uid != self.model.open_utterance:
            self._send(fr.UtteranceDone(0, uid, 960, 3))

    @precondition(lambda self: not self.failed)
    @rule(
        frame=st.one_of(
            st.builds(fr.UtteranceDone, u16, u32, u64, u32),
            SERVER_FRAMES,
            CLIENT_ONLY,
            st.builds(fr.Text, u32, short),
        )
    )
    def send_other(self, frame: fr.Frame) -> None:
        """Any other frame: a server frame (legal when open; speech events need the uplink;
        Welcome only once, in answer to the Hello), UtteranceDone of an id that is not
        active, a client frame (never legal)."""
        if isinstance(frame, fr.UtteranceDone) and frame.utterance_id in self.model.active:
            return  # see send_done_of_the_oldest
        self._send(frame)

    @precondition(lambda self: not self.failed)
    @rule()
    def barge_in(self) -> None:
        expected = self.model.barge_in()
        try:
            answer = self.state.barge_in()
        except LocalProtocolError as exc:
            assert expected == ILLEGAL, exc
            assert exc.error_code is fr.ErrorCode.INTERNAL
            return
        assert answer is expected

    @rule(code=st.sampled_from(fr.ErrorCode), message=short, data=st.data())
    def send_error(self, code: fr.ErrorCode, message: str, data: st.DataObject) -> None:
        """Error ends the session (the only move after a client's mistake)."""
        self._send(fr.Error(code, message))
        self.failed = False
        self._closed_then_next(data)

    @precondition(lambda self: not self.failed)
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        """The connection ends without an Error."""
        self.state.close()
        self.model.close()
        self._closed_then_next(data)

    def _closed_then_next(self, data: st.DataObject) -> None:
        """A closed session refuses every frame either way, and `barge_in`; then the next
        session starts (same limits)."""
        self.agrees_with_the_model()
        self._receive(data.draw(LATE_FRAMES, label="late"))
        self._send(data.draw(LATE_SENDS, label="late send"))
        self.barge_in()
        self.failed = False
        first = data.draw(FIRST_FRAMES, label="next session")
        self.start(self.model.max_text_bytes, self.model.max_queued_utterances, first)

    # ------------------------------------------------------------------ agreement

    def teardown(self) -> None:
        TRIED["state.examples"] += 1

    @invariant()
    def agrees_with_the_model(self) -> None:
        if self.failed:
            return  # mid-refusal: the state is thrown away once Error is sent
        s, m = self.state, self.model
        assert s.phase is Phase(m.phase)
        assert s.hello == m.hello
        assert s.version == (1 if m.hello is not None else 0)
        assert s.uplink is m.uplink
        assert s.active_utterances == tuple(m.active)
        assert s.open_utterance == m.open_utterance


TestSessionMachine = SessionMachine.TestCase


@given(options_texts())
def test_options_agree_with_the_model(text: str) -> None:
    """`parse_options` against `spec_model.options_ok` alone (many more options than the state
    machine gets to): BAD_OPTIONS exactly when the model refuses, and a resume section parsed
    exactly when the model says the Hello resumes."""
    ok = options_ok(text)
    TRIED[f"options.{'ok' if ok else 'BAD_OPTIONS'}{'.resume' if resumes(text) else ''}"] += 1
    try:
        parsed = parse_options(text)
    except RemoteProtocolError as exc:
        assert not ok, (text, exc)
        assert exc.error_code is fr.ErrorCode.BAD_OPTIONS
        return
    assert ok, text
    assert (parsed.resume is not None) == resumes(text), text
