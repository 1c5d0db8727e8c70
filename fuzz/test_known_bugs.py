"""Each known bug of `fuzz/known_bugs.py`, pinned: a strict xfail that fails once it is fixed
(then delete its entry there, and the generators produce its inputs again)."""

from __future__ import annotations

import pytest

from duplexd.protocol.codec import RemoteProtocolError
from duplexd.protocol.frames import ErrorCode, Hello
from duplexd.protocol.state import ServerProtocolState

from .known_bugs import KNOWN_BUGS
from .spec_model import hello_verdict

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", sorted(KNOWN_BUGS))
def test_the_document_refuses_it(name: str) -> None:
    _, options, _ = KNOWN_BUGS[name]
    assert hello_verdict(Hello(options=options)) is ErrorCode.BAD_OPTIONS


@pytest.mark.parametrize("name", sorted(KNOWN_BUGS))
@pytest.mark.xfail(strict=True, reason="a known daemon bug (fuzz/known_bugs.py)")
def test_known_bug_is_fixed(name: str) -> None:
    _, options, _ = KNOWN_BUGS[name]
    hello = Hello(options=options)
    state = ServerProtocolState(max_text_bytes=1, max_queued_utterances=1)
    with pytest.raises(RemoteProtocolError) as info:
        state.receive(hello)
    assert info.value.error_code is ErrorCode.BAD_OPTIONS
