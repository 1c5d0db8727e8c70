"""Daemon bugs and deviations the fuzzers found: the open ones, and the fixed ones kept as
regression checks.

While a name is in `KNOWN_BUGS`, the generators leave out the inputs that trigger it (so that
a fuzz run still tells about everything else), `fuzz/test_known_bugs.py` pins it with a strict
xfail (it turns into a failure the day the daemon is fixed: then move the entry to
`FIXED_BUGS`), and `python -m fuzz.network` sends its reproduction once and reports what the
daemon answered in its summary (`known_bugs`), outside the `unexpected` count.

Once fixed, an entry moves to `FIXED_BUGS` (same shape): the generators produce its inputs
again, `fuzz/test_known_bugs.py` checks that the model and `ServerProtocolState` both refuse
it as the document says, and `python -m fuzz.network` sends its reproduction once and counts a
wrong answer as unexpected (`fixed_bugs` in its summary).

`KNOWN_SESSION_BUGS` (and `FIXED_SESSION_BUGS`, once fixed) are the same for bugs that a
whole exchange with the daemon reproduces, not one Hello: `fuzz/test_known_bugs.py` runs each
reproduction against an in-process daemon (`SESSION_CHECKS` there), and the soak and the
network fuzz leave out what triggers an open one (`active()` names them too).

Set FUZZ_KNOWN_BUGS=none to generate the inputs of the open ones anyway (the fuzz run then
fails on them).
"""

from __future__ import annotations

import os
from typing import Final

# name -> what goes wrong, the Hello.options that reproduces it, what the document says.
# Every reproduction is a Hello whose options the document refuses with BAD_OPTIONS.
KNOWN_BUGS: Final[dict[str, tuple[str, str, str]]] = {}

FIXED_BUGS: Final[dict[str, tuple[str, str, str]]] = {
    "options-huge-int": (
        "parse_options raised OverflowError (not BAD_OPTIONS) for an integer option value past"
        " the float range: `math.isfinite(int)`/`float(int)` overflowed in"
        " duplexd/protocol/options.py `_section`; the daemon answered Error INTERNAL, close"
        " 1011, and logged a traceback (fixed in 5bbf9ac; regression test in"
        " tests/test_state.py)",
        '{"vad": {"threshold": 1' + "0" * 309 + "}}",
        "SPEC §4.6.1: a known key out of range is BAD_OPTIONS (close 1002)",
    ),
    "options-nan-literal": (
        "parse_options accepted NaN / Infinity / -Infinity literals (Python's json.loads"
        " extension) under unknown keys: Hello.options that is not RFC 8259 JSON was accepted"
        " (fixed in 5bbf9ac; regression test in tests/test_state.py)",
        '{"x": NaN}',
        "SPEC §3.5/§4.1: options is a JSON object text (RFC 8259), else BAD_OPTIONS",
    ),
}


# name -> what goes wrong, how to reproduce it, what the document says
KNOWN_SESSION_BUGS: Final[dict[str, tuple[str, str, str]]] = {}
FIXED_SESSION_BUGS: Final[dict[str, tuple[str, str, str]]] = {
    "resume-clean-close-leak": (
        "A resumed session that its client then closes normally (WebSocket close 1000 on the"
        " resuming connection) never releases that connection: duplexd/_server/connection.py"
        " `Connection._resume` waits on `released` forever (`Resumable.get_message` re-raises"
        " the 1000 close without `_detach`, and a session that ends without an error never"
        " calls `transport.aclose()`, the only other place that sets it). Each such session"
        " leaves one trio task (the WebSocket handler, parked in `_resume`) and the whole"
        " Session object it holds, its 0.5 MB audio ring and replay log included: found by"
        " `make soak` (tasks +1 and RSS +~0.5 MB per resume cycle; fds and"
        " duplexd_sessions_active stay flat). Fixed: the connection ends its Resumable whatever"
        " way the session ended, which releases a resuming connection (tests/test_resume.py)",
        "Hello, Welcome; drop the TCP connection (no WebSocket close); connect again, Hello"
        " with options.resume {session_id, token: Welcome info.resume.token, received: 0},"
        " Welcome resumed; WebSocket close 1000 (echoed). The session is gone from /metrics"
        " but the daemon's trio task count stays one higher and the Session is never"
        " collected (fuzz/test_known_bugs.py `check_resume_clean_close`)",
        "SPEC §6.4: a close with 1000 ends the session as usual (a resumed session is that"
        " session); SECURITY.md: every connection and session is bounded",
    ),
    "close-1001-keeps-session": (
        "A client's WebSocket close 1001 (going away: what a browser sends when the page goes)"
        " does not end the session: duplexd/_server/resume.py `CLOSED_BY_CLIENT` holds only"
        " 1000, so the session is detached and kept, holding its slot, for resume_window_s"
        " (30 s) as if the connection had dropped. Fixed: CLOSED_BY_CLIENT holds 1000 and 1001"
        " (a close read on a connection already given up is not the client's;"
        " tests/test_resume.py)",
        "Hello, Welcome, WebSocket close 1001 (echoed): the session is still open"
        " (duplexd_sessions_active 1) until the resume window passes"
        " (fuzz/test_known_bugs.py `check_close_1001`)",
        "SPEC §6.4: when the connection drops without a WebSocket close from the client (a"
        " close with 1000 or 1001 ends the session as usual), the session goes on",
    ),
    "session-ring-not-closed": (
        "An ended session never closes its audio ring (duplexd/_server/session.py: nothing"
        " calls `self._ring.close()`): its C memory (0.5 MB at 48 kHz, 256 frames) is freed"
        " only when the cyclic garbage collector collects the dead Session (it is reference"
        " cycles: Session <-> Downlink, SessionEnd -> Session._finish...). After the Service's"
        " gc.freeze() the first full collection comes after some 500 sessions, later ones"
        " every 50-100: found by `make soak`, whose daemon held 30-45 MB of dead sessions"
        " (RSS, objects) that one gc.collect() gave back; every figure flat after it. Fixed:"
        " Session.run closes its ring once every task (and synthesis thread) has returned",
        "Hello, Welcome, WebSocket close 1000: once the session has ended, its FrameRing is"
        " still open (`closed` False) until a gc.collect() (fuzz/test_known_bugs.py"
        " `check_ring_closed`)",
        "duplexd/_downlink/ring.py FrameRing: the C memory is freed by close(), or, failing"
        " that, when the ring is collected; SECURITY.md: per-session memory is bounded",
    ),
}


def active() -> frozenset[str]:
    """The known bugs whose inputs the generators leave out (FUZZ_KNOWN_BUGS=none: none)."""
    if os.environ.get("FUZZ_KNOWN_BUGS", "").strip().lower() == "none":
        return frozenset()
    return frozenset(KNOWN_BUGS) | frozenset(KNOWN_SESSION_BUGS)
