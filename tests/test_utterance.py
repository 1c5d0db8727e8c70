"""Tests of duplexd._downlink.utterance: when the runner cuts a sentence before its end."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from duplexd._downlink.utterance import FIRST_CUT_BUDGET_S, REFILL_MARGIN_S, Utterance

pytestmark = pytest.mark.unit

TOKEN_S = 0.03  # an LLM at about 33 tokens a second; no token lands on a deadline below


async def stream(utt: Utterance, tokens: list[str], *, end: bool = True) -> None:
    """Feed `tokens` at t = 0, TOKEN_S, 2 * TOKEN_S... (then the end, if `end`)."""
    for i, token in enumerate(tokens):
        await trio.sleep_until(i * TOKEN_S)
        utt.feed(token, end=False)
    if end:
        await trio.sleep_until(len(tokens) * TOKEN_S)
        utt.feed("", end=True)


def words(text: str) -> list[str]:
    first, *rest = text.split(" ")
    return [first, *(" " + w for w in rest)]


async def pieces_with_times(utt: Utterance, synthesized_s: float = 0.0) -> list[tuple[str, float]]:
    out = []
    while (piece := await utt.next_piece(lambda: synthesized_s)) is not None:
        out.append((piece.text, trio.current_time()))
    return out


async def test_whole_text_is_never_cut(autojump_clock: trio.testing.MockClock) -> None:
    text = (
        "Doctor Patel said the results should be ready by the end of the week. How many"
        " kilometers is it from the airport to the city center, and how long is the ride?"
    )
    utt = Utterance(1)
    utt.feed(text, end=True)
    await trio.sleep(5.0)  # the runner comes late: nothing is cut for that
    assert await pieces_with_times(utt) == [
        ("Doctor Patel said the results should be ready by the end of the week.", 5.0),
        (
            "How many kilometers is it from the airport to the city center, and how long is the"
            " ride?",
            5.0,
        ),
    ]


async def test_first_piece_cut_at_the_budget(autojump_clock: trio.testing.MockClock) -> None:
    """No clause end within the budget: cut at the best phrase boundary decided by then."""
    utt = Utterance(1)
    tokens = words("How many kilometers is it from the airport to the city center of the old town?")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream, utt, tokens)
        first = await utt.next_piece()
        assert trio.current_time() == FIRST_CUT_BUDGET_S == 0.2
        # by 0.2 s "How many kilometers is it from the" arrived: "from" is a whole word
        assert first is not None and first.text == "How many kilometers is it"
        # nothing synthesized: the next piece is due 0.2 s after this one; by then "... center
        # of the" arrived, and "of" is the last phrase word known whole
        second = await utt.next_piece()
        assert trio.current_time() == 0.4
        assert second is not None and second.text == "from the airport to the city center"
        assert await pieces_with_times(utt) == [("of the old town?", len(tokens) * TOKEN_S)]


async def test_a_clause_inside_the_budget_is_not_cut(
    autojump_clock: trio.testing.MockClock,
) -> None:
    utt = Utterance(1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream, utt, ["Hello", " there", ",", " how", " are", " you", "?"])
        assert await pieces_with_times(utt, 10.0) == [
            ("Hello there,", 2 * TOKEN_S),  # the comma's arrival
            ("how are you?", 7 * TOKEN_S),  # the end
        ]


async def test_later_piece_cut_when_the_audio_runs_low(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The second piece waits for its sentence's end until the first piece's audio is down to
    `REFILL_MARGIN_S`, then is cut at the best boundary decided."""
    utt = Utterance(1)
    text = (
        "Right, the committee reviewed every application that was submitted before the"
        " deadline last month and wrote a report."
    )
    tokens = words(text)
    synthesized = [0.0]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream, utt, tokens)
        first = await utt.next_piece(lambda: synthesized[0])
        assert first is not None and first.text == "Right,"
        assert trio.current_time() == 0.0
        await trio.sleep(0.1)  # its synthesis: 0.55 s of audio, sent from t = 0.1 on
        synthesized[0] = 0.55
        utt.audio_started()
        second = await utt.next_piece(lambda: synthesized[0])
        # heard until 0.65, so due at 0.65 - margin; by then "... before the deadline"
        # arrived, and "before" is the last phrase word known whole
        assert trio.current_time() == pytest.approx(0.65 - REFILL_MARGIN_S)
        assert second is not None
        assert second.text == "the committee reviewed every application that was submitted"
        assert await pieces_with_times(utt, 10.0) == [
            ("before the deadline last month and wrote a report.", len(tokens) * TOKEN_S)
        ]


async def test_no_boundary_yet_waits_for_one(autojump_clock: trio.testing.MockClock) -> None:
    utt = Utterance(1)
    tokens = [
        "Super",
        "cali",
        "fragi",
        "listic",
        "expi",
        "ali",
        "doc",
        "ious",
        " is",
        " a",
        " word.",
    ]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream, utt, tokens)
        first = await utt.next_piece()
        assert first is not None and first.text == "Supercalifragilisticexpialidocious"
        assert trio.current_time() == 8 * TOKEN_S  # " is": the first boundary, past the budget
        assert await pieces_with_times(utt) == [("is a word.", len(tokens) * TOKEN_S)]


async def test_cancelled_wait_leaves_the_text(autojump_clock: trio.testing.MockClock) -> None:
    utt = Utterance(1)
    utt.feed("Half a sentence", end=False)
    with trio.move_on_after(0.1):
        await utt.next_piece()
    assert trio.current_time() == 0.1
    utt.feed(" and the rest.", end=True)
    assert await pieces_with_times(utt) == [("Half a sentence and the rest.", 0.1)]
