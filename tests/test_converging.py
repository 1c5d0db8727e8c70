"""converging.py: what AEC3 has learned from, and where nothing handed to it can echo."""

from __future__ import annotations

import numpy as np
import pytest

from duplexd._uplink.converging import CONVERGING_S, TAIL_MS, Convergence

RATE = 16_000
FRAME = RATE // 100
TAIL = round(TAIL_MS * RATE / 1000)


def _reference(frames: str) -> np.ndarray:
    """10 ms frames, "x" with sound, "." silent."""
    out = np.zeros(len(frames) * FRAME, dtype=np.float32)
    for i, c in enumerate(frames):
        if c == "x":
            out[i * FRAME : (i + 1) * FRAME] = 0.1
    return out


@pytest.mark.unit
def test_only_frames_handed_with_sound_are_learned_from() -> None:
    c = Convergence(RATE)
    needed = round(CONVERGING_S * 100)
    c.add(0, _reference("x." * (needed - 1)))
    assert c.converging and c.learned == (needed - 1) * FRAME
    c.add(2 * (needed - 1) * FRAME, _reference("x"))
    assert not c.converging


@pytest.mark.unit
def test_quiet_spans_the_tail_before_the_window_and_the_lead() -> None:
    """Sound handed in frame 40 (400-410 ms), its echo 40 ms later: a window before the echo
    arrives is quiet, and one after its tail; one that the echo or its tail reaches is not.
    With a lead known only to lie within 0-600 ms, the tail reaches 600 ms further."""
    c = Convergence(RATE)
    c.add(0, _reference("." * 40 + "x" + "." * 87))  # 1.28 s handed
    lead = 40 * RATE // 1000
    before = 40 * FRAME + lead  # the echo's first sample
    assert c.quiet(before - 512, before, lead, lead)
    assert not c.quiet(before - 512 + FRAME, before + FRAME, lead, lead)
    after = 41 * FRAME + lead + TAIL  # past the sound's echo and its tail
    assert c.quiet(after, after + 512, lead, lead)
    assert not c.quiet(after - FRAME, after - FRAME + 512, lead, lead)
    most = 600 * RATE // 1000
    assert not c.quiet(after, after + 512, 0, most)
    assert c.quiet(after + most - lead, after + most - lead + 512, 0, most)
    assert not c.quiet(after + most - lead - FRAME, after + most - lead - FRAME + 512, 0, most)


@pytest.mark.unit
def test_what_was_not_handed_is_not_quiet() -> None:
    """Before the first frame handed, after a gap in what was handed, and past the last frame
    handed, nothing is known: not quiet."""
    c = Convergence(RATE)
    c.add(50 * FRAME, _reference("." * 50))  # frames 50-99, silent
    assert c.quiet(90 * FRAME, 95 * FRAME, 0, 0)  # (the tail from frame 70: held, silent)
    assert not c.quiet(60 * FRAME, 65 * FRAME, 0, 0)  # (from frame 40)
    assert not c.quiet(95 * FRAME, 101 * FRAME, 0, 0)  # (frame 100: not handed yet)
    c.add(120 * FRAME, _reference("." * 50))  # (frames 100-119 never handed)
    assert c.quiet(150 * FRAME, 155 * FRAME, 0, 0)
    assert not c.quiet(130 * FRAME, 135 * FRAME, 0, 0)


@pytest.mark.unit
def test_a_late_frames_other_placement_counts_as_sent_but_not_as_learned() -> None:
    c = Convergence(RATE)
    c.add(0, _reference("." * 100), _reference("." * 40 + "x" + "." * 59))
    assert c.learned == 0
    assert not c.quiet(60 * FRAME, 65 * FRAME, 0, 0)  # (its tail from frame 40)
    assert c.quiet(70 * FRAME, 75 * FRAME, 0, 0)


@pytest.mark.unit
def test_a_restart_learns_its_history_afresh_and_forgets_the_old_alignment() -> None:
    c = Convergence(RATE)
    c.add(0, _reference("." * 100))
    c.restart(100 * FRAME, _reference("x" * 20 + "." * 30))  # frames 50-99, realigned
    assert c.learned == 20 * FRAME
    assert c.quiet(95 * FRAME, 100 * FRAME, 0, 0)  # (from frame 75)
    assert not c.quiet(85 * FRAME, 90 * FRAME, 0, 0)  # (from 65: frames 65-69 sounded)
    assert not c.quiet(60 * FRAME, 65 * FRAME, 0, 0)  # (from 40: before the history)


@pytest.mark.unit
def test_no_echo_only_where_the_echo_was_located_on_the_reference_as_handed() -> None:
    """Until the presence check has found the echo on the reference as it is handed now, an
    echo may come from anywhere (before its reference, even): no window is free of it; once
    found, a quiet one is, until the reference moves."""
    c = Convergence(RATE)
    c.add(0, _reference("x" + "." * 99))
    start = FRAME + TAIL + 60 * RATE // 1000  # past the tail, with 40 ms +- 20 of lead
    assert c.quiet(start, start + 512, 20 * RATE // 1000, 60 * RATE // 1000)
    assert not c.no_echo(start, start + 512)
    c.locate(40 * RATE // 1000, 20 * RATE // 1000)
    assert c.no_echo(start, start + 512)
    assert not c.no_echo(start - FRAME, start - FRAME + 512)
    c.unlocate()
    assert not c.no_echo(start, start + 512)
