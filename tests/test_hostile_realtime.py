"""The attacks of tests/test_hostile_input.py on the real clock: a real daemon process (tone
engine, worker threads, the precise timer), bystanders speaking through each attack, and the
largest gap between two of a bystander's audio frames measured. Before the fixes these attacks froze
the loop for seconds (the 32,767-space message 30 s) and killed every bystander.

Real time on a shared machine: the bound is generous (100 ms: five frames; the smallest stall
these attacks caused before the fixes was 800 ms), the tests are `slow`, this process does not
collect garbage while it measures (`no_collection_pauses`), and a failure says which attack and
what gap. What the attacks cost to the millisecond is measured by `python -m bench --attack`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio
from harness import no_collection_pauses
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from bench.daemon import duplexd_argv, start_server
from duplexd.client.errors import HandshakeRejected
from duplexd.client.session import open_session
from duplexd.protocol import frames as fr
from duplexd.protocol.codec import encode
from duplexd.protocol.jsonmode import JSON_SUBPROTOCOL

pytestmark = [
    pytest.mark.usefixtures("collect_leaked_sockets"),
    pytest.mark.slow,
    pytest.mark.integration,
    # trio-websocket's client leaks its socket when the server closes first (test_service.py)
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
    ),
]
MAX_GAP_S = 0.100
BYSTANDERS = 4
TEXT = "Hello there, this is a bystander speaking while somebody else misbehaves. " * 2


def text_chunks(first: str, chunk: str, n: int) -> bytes:
    return encode(fr.Text(1, first)) + encode(fr.Text(1, chunk)) * n


def flood(frame: fr.ClientFrame) -> bytes:
    one = encode(frame)
    return one * ((1 << 20) // len(one) - 1)


ATTACKS: dict[str, bytes | str] = {
    "32,767 one-space chunks": text_chunks("a", " ", 32_767),
    "10,922 CJK marks": text_chunks("a", "\u3002", 10_922),
    "32 KB without a space": encode(fr.Text(1, "a" * 32_768, end=True)),
    "100,000 empty chunks": text_chunks("a", "", 100_000),
    "a million bytes of GET_STATS": flood(fr.GetStats()),
    "a million bytes of PING": flood(fr.Ping(1)),
    "deeply nested JSON": "[" * 100_000,
}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """One daemon process for every attack (each attack is a new connection to it)."""
    server = start_server("duplexd", duplexd_argv("tone", "cpu"))
    try:
        yield server.url
    finally:
        assert server.stop(), server.log_tail()  # a clean SIGTERM exit, after all of it


async def bystander(url: str, gaps: list[float], errors: list[str]) -> None:
    last: list[float] = []

    def on_frame(frame: fr.ServerFrame, arrival: float) -> None:
        if isinstance(frame, fr.Audio):
            if last and frame.seq > 0:
                gaps.append(arrival - last[0])
            last[:] = [arrival]

    # the bystanders share the attackers' address and (no token) subject, so the debt the
    # previous attack left (SPEC.md §10) refuses them too until it is paid (HTTP 429,
    # Retry-After): a client told so waits and comes back, as the attacker does; once in,
    # nothing may hurt it
    for _ in range(20):
        try:
            async with open_session(url, on_frame=on_frame) as session:
                await session.receive_utterance(await session.say(TEXT))
            return
        except Exception as exc:  # a bystander must never be hurt: say how it was
            if last or (wait_s := retry_after_s(exc)) is None:
                errors.append(f"{type(exc).__name__}: {exc}")
                return
        await trio.sleep(wait_s)
    errors.append("refused 20 times")


def retry_after_s(exc: BaseException) -> float | None:
    """The Retry-After of the HTTP 429 that refused an upgrade (`exc` may be an exception group
    around it), or None for any other error."""
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return retry_after_s(exc.exceptions[0])
    if isinstance(exc, ConnectionRejected) and exc.status_code == 429:
        return next((float(v) for k, v in exc.headers or () if k == b"retry-after"), 1.0)
    if isinstance(exc, HandshakeRejected) and exc.status == 429:  # (the SDK's: no header)
        return 1.0
    return None


async def attacker(
    url: str, attack: bytes | str, answers: list[str], reading: trio.CancelScope
) -> None:
    """`attack_once`, as a persistent client makes it: every attack comes from this
    machine's address to one daemon, and the debt one leaves (SPEC.md §10) refuses the next
    for a second or so (HTTP 429, Retry-After), longer on a slow machine; it waits that out."""
    for _ in range(20):
        try:
            await attack_once(url, attack, answers, reading)
            return
        except BaseException as exc:
            wait_s = retry_after_s(exc)
            if wait_s is None:
                raise
        answers.append(f"429, retried after {wait_s:g} s")
        await trio.sleep(wait_s)
    raise AssertionError(f"refused 20 times: {answers}")


async def attack_once(
    url: str, attack: bytes | str, answers: list[str], reading: trio.CancelScope
) -> None:
    """Send `attack`, then read until the daemon closes the connection or `reading` is
    cancelled; then close it (a closing handshake: a connection left open would keep its
    session, and a drain, waiting)."""
    json_mode = isinstance(attack, str)
    subprotocol = JSON_SUBPROTOCOL if json_mode else fr.SUBPROTOCOL
    async with open_websocket_url(url, subprotocols=[subprotocol]) as ws:
        if not json_mode:
            await ws.send_message(encode(fr.Hello()))
            await ws.get_message()  # Welcome
        await ws.send_message(attack)
        with reading:
            try:
                while True:
                    message = await ws.get_message()
                    if isinstance(message, str) and '"error"' in message:
                        answers.append(message[:80])
            except ConnectionClosed as exc:
                answers.append(f"closed {exc.reason.code if exc.reason else None}")


async def attacker_after(
    delay_s: float, url: str, attack: bytes | str, answers: list[str], reading: trio.CancelScope
) -> None:
    await trio.sleep(delay_s)  # once everybody is speaking
    await attacker(url, attack, answers, reading)


async def max_gap_through(url: str, attack: bytes | str) -> float:
    """The largest gap between two of a bystander's frames while `attack` is made."""
    gaps: list[float] = []
    errors: list[str] = []
    answers: list[str] = []
    reading = trio.CancelScope()
    with no_collection_pauses(), trio.fail_after(70):
        async with trio.open_nursery() as outer:
            outer.start_soon(attacker_after, 1.0, url, attack, answers, reading)
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    for _ in range(BYSTANDERS):
                        nursery.start_soon(bystander, url, gaps, errors)
            reading.cancel()  # the bystanders are done: the attacker closes its connection
    assert not errors, errors
    assert len(gaps) > BYSTANDERS * 100  # they spoke through it
    print(f"max gap {max(gaps) * 1e3:.1f} ms of {len(gaps)}; attacker got {answers}")
    return max(gaps)


@pytest.mark.parametrize("name", list(ATTACKS))
async def test_bystanders_keep_their_audio_on_time_through(name: str, url: str) -> None:
    """A gap over the bound is measured once more before it fails the test: on a shared
    two-core machine the daemon, the bystanders and the attacker share the cores with
    whatever else runs. With a 60 ms bound and this process collecting garbage as it pleased,
    this test failed in 2 of 5 clean-clone runs when the machine ran slow (64-140 ms) and in
    the project's CI (81-85 ms twice in a row for the 32,767 spaces, 60.5 ms for 32 KB without
    a space), while run alone it measures 22-28 ms for every attack and for none, also with
    two busy processes beside it or 0.8 of a core. A stall the attack causes comes back every
    time."""
    print(f"\n{name}: ", end="")
    gap = await max_gap_through(url, ATTACKS[name])
    if gap > MAX_GAP_S:
        print(f"{name}, measured again: ", end="")
        gap = await max_gap_through(url, ATTACKS[name])
    assert gap <= MAX_GAP_S, f"{name}: a bystander's frames {gap * 1e3:.1f} ms apart, twice"
