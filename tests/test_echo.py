"""The echo canceller on its own: it finds what was sent in the uplink, follows that echo path
(delay changes, a player pausing mid-window), removes it, and leaves the user's voice alone.

The reference is real speech (the VITS voice) laid out on the server clock frame by frame, as
the session does; the uplink is built by hand so the echo path is known exactly."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from duplexd._uplink.echo import EchoCanceller

pytestmark = pytest.mark.integration
RATE = 16_000
FRAME = 320
WINDOW = 512
NOISE = 10 ** (-55 / 20)  # a quiet room


def agent_voice() -> np.ndarray:
    from speech import clip

    return np.concatenate(
        [
            clip("Sure, I can help you with that. The weather is sunny with a light breeze."),
            clip("Let me check the schedule for tomorrow; there are three meetings."),
        ]
    )


def user_voice() -> np.ndarray:
    from speech import clip

    return clip("Wait, stop, I have a question.", other_speaker=True)


def run(
    reference: np.ndarray,
    uplink: np.ndarray,
    *,
    sent_at: Callable[[int], float] = lambda i: i * 0.020,
    uplink_latency_s: float = 0.003,
    each: Callable[[EchoCanceller, int, np.ndarray], None] | None = None,
) -> tuple[EchoCanceller, np.ndarray, list[float]]:
    """Feed frame i of `reference` at server time sent_at(i) and uplink frame i arriving
    20 ms + latency after its start; returns the canceller, the output and the NCC per window.
    `each(canceller, position, output)` sees every window as it is cancelled."""
    ec = EchoCanceller(t0=0.0)
    out = np.zeros(len(uplink), dtype=np.float32)
    nccs: list[float] = []
    pending = np.zeros(0, dtype=np.float32)
    pos = 0
    for i in range(len(uplink) // FRAME):
        if (i + 1) * FRAME <= len(reference):
            ec.add_reference(sent_at(i), reference[i * FRAME : (i + 1) * FRAME])
        ec.note_uplink(i * 0.020 + 0.020 + uplink_latency_s, (i + 1) * FRAME)
        pending = np.concatenate((pending, uplink[i * FRAME : (i + 1) * FRAME]))
        while len(pending) >= WINDOW:
            window, pending = pending[:WINDOW], pending[WINDOW:]
            out[pos : pos + WINDOW], ncc = ec.cancel(pos, window)
            nccs.append(ncc)
            if each is not None:
                each(ec, pos, out[pos : pos + WINDOW])
            pos += WINDOW
    return ec, out[:pos], nccs


def echo_of(reference: np.ndarray, delay_s: float, gain_db: float, total: int) -> np.ndarray:
    d = round(delay_s * RATE)
    out = np.zeros(total, dtype=np.float32)
    n = min(len(reference), total - d)
    out[d : d + n] = 10 ** (gain_db / 20) * reference[:n]
    return out


def room(total: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, NOISE, total).astype(np.float32)


def db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.asarray(x, np.float64) ** 2) + 1e-20))


@pytest.mark.parametrize(("delay_s", "gain_db"), [(0.030, -10), (0.120, -3), (0.400, -20)])
def test_a_delayed_echo_is_found_and_removed(delay_s: float, gain_db: float) -> None:
    ref = agent_voice()
    total = len(ref) + RATE
    echo = echo_of(ref, delay_s, gain_db, total)
    ec, out, _ = run(ref, echo + room(total))
    assert ec.locked
    # the arrival latency (3 ms) is part of the delay seen on the server clock
    assert ec.delay_ms is not None and abs(ec.delay_ms - 1000 * delay_s - 3.0) <= 1.0
    start = round((delay_s + 0.3) * RATE)  # after locking on
    loud = echo[start : len(out)]
    # the echo leaves at least 25 dB quieter (what is left is mostly the room noise)
    assert db(out[start:] - room(total)[start : len(out)]) <= db(loud) - 25


def test_the_users_voice_alone_is_left_exactly_as_it_is() -> None:
    """Audio was sent (so the canceller searches) but none of it comes back (headphones): no
    spurious match may eat into the user's speech: the output is the input, bit for bit."""
    ref = agent_voice()
    user = user_voice()
    total = len(ref)
    uplink = room(total)
    for at in range(RATE // 2, total - len(user), len(user) + RATE // 2):
        uplink[at : at + len(user)] += user
    ec, out, nccs = run(ref, uplink)
    assert not ec.locked and max(nccs) == 0.0
    assert np.array_equal(out, uplink[: len(out)])


def test_the_user_talking_over_the_echo_is_kept() -> None:
    ref = agent_voice()
    user = user_voice()
    total = len(ref) + RATE
    echo = echo_of(ref, 0.060, -10, total)
    at = 2 * RATE  # the echo path is known by then
    talk = np.zeros(total, dtype=np.float32)
    talk[at : at + len(user)] = user
    noise = room(total)
    ec, out, _ = run(ref, echo + talk + noise)
    span = slice(at, at + len(user))
    assert ec.locked
    left = out[span] - talk[span] - noise[span]  # the echo left under the user's voice
    # 17 dB here: a block where the user is far louder than the echo keeps its echo when
    # taking it out would not make the block quieter (the safe side for a barge-in)
    assert db(left) <= db(echo[span]) - 15
    assert abs(db(out[span]) - db(talk[span])) <= 0.5  # and the user's voice stays


def test_the_echo_path_is_followed_when_its_delay_changes() -> None:
    """A client's player restarts between utterances: the echo delay jumps by 25 ms."""
    ref = agent_voice()
    half = len(ref) // 2
    total = len(ref) + RATE
    echo = echo_of(ref[:half], 0.030, -10, total)
    echo += echo_of(np.concatenate((np.zeros(half), ref[half:])), 0.055, -10, total)
    ec, out, _ = run(ref, echo + room(total))
    assert ec.delay_ms is not None and abs(ec.delay_ms - 58.0) <= 1.0
    after = slice(half + round(0.055 * RATE) + RATE // 5, len(out))  # 200 ms after the jump
    assert db(out[after] - room(total)[after]) <= db(echo[after]) - 25


def test_a_player_that_pauses_mid_window_is_followed() -> None:
    """A late frame at a player without a jitter buffer: 4 ms of silence, then the rest of the
    utterance 4 ms later than before (the server laid its frames out back to back)."""
    ref = agent_voice()
    total = len(ref) + RATE
    cut = 3 * RATE + 100  # mid-window
    played = np.concatenate((ref[:cut], np.zeros(64, dtype=np.float32), ref[cut:]))
    echo = echo_of(played, 0.050, -10, total)
    ec, out, _ = run(ref, echo + room(total))
    assert ec.delay_ms is not None and abs(ec.delay_ms - 57.0) <= 1.0
    d = round(0.050 * RATE)
    around = slice(cut + d - WINDOW, cut + d + 4 * WINDOW)  # the windows around the pause
    assert db(out[around] - room(total)[around]) <= db(echo[around]) - 15


def test_silence_in_the_uplink_is_not_touched() -> None:
    ref = agent_voice()
    quiet = np.zeros(len(ref), dtype=np.float32)
    ec, out, nccs = run(ref, quiet)
    assert not out.any() and not any(nccs) and ec.windows == 0


def test_what_is_left_of_an_echo_that_moved_still_looks_like_it() -> None:
    """`residue`: the session's last check before a window counts toward a barge-in. The echo
    path jumps by 12 ms (beyond what the blocks follow): the first windows after the jump keep
    much of the echo, and that leftover matches the reference near the path; the user's voice
    over the echo does not."""
    ref = agent_voice()
    user = user_voice()
    total = len(ref) + RATE
    half = len(ref) // 2
    echo = echo_of(ref[:half], 0.040, -10, total)
    echo += echo_of(np.concatenate((np.zeros(half), ref[half:])), 0.052, -10, total)
    jump = half + round(0.052 * RATE)
    talk = np.zeros(total, dtype=np.float32)
    at = RATE  # the user talks over the echo before the jump
    talk[at : at + len(user)] = user
    noise = room(total)
    residues: dict[str, list[float]] = {"user": [], "leftover": []}

    def each(ec: EchoCanceller, pos: int, out: np.ndarray) -> None:
        span = slice(pos, pos + WINDOW)
        loud = db(echo[span]) > -45 and db(out - noise[span]) > db(echo[span]) - 6
        if at + WINDOW <= pos < at + len(user) - WINDOW and db(talk[span]) > -30:
            residues["user"].append(ec.residue(pos, out))
        elif jump <= pos < jump + 4 * WINDOW and loud:
            residues["leftover"].append(ec.residue(pos, out))

    run(ref, echo + talk + noise, each=each)
    assert residues["leftover"] and min(residues["leftover"]) >= 0.5, residues["leftover"]
    assert np.median(residues["user"]) < 0.3, residues["user"]
    assert np.mean(np.array(residues["user"]) >= 0.5) <= 0.1, residues["user"]


def test_a_look_alike_delay_must_win_twice_while_the_path_still_matches() -> None:
    """Periodic audio (a tone, a held note) matches at more than one delay. In the bench (-20 dB
    echo at 250 ms) a full search found 0.92 one period away while the path followed matched
    0.85; jumping there left the real echo in and the VAD barged in. Now such a match is taken
    out for that window only, and the path moves if it wins again; a path that no longer
    matches at all (< 0.5: the player restarted) moves at once."""
    from duplexd._uplink.echo import _Match

    def match(delay: int, ncc: float) -> _Match:
        return _Match(delay, ncc, 0.1)

    ec = EchoCanceller(t0=0.0)
    ec._lock = 4692  # (the rule under test is the lock's)
    near, far = match(4692, 0.85), match(5685, 0.92)
    assert ec._decide(far, near) is far and ec._lock == 4692
    assert ec._decide(match(4690, 0.95), match(4690, 0.95)).delay == 4690  # (back on the path)
    assert ec._lock == 4690
    assert ec._decide(far, near) is far and ec._lock == 4690
    assert ec._decide(far, near) is far and ec._lock == 5685
    ec._lock = 4692  # (the rule under test is the lock's)
    assert ec._decide(far, match(4692, 0.3)) is far and ec._lock == 5685


def test_the_running_minimum_forgets_what_slid_out() -> None:
    from duplexd._uplink.echo import _RunningMin

    m = _RunningMin(3)
    assert m.value is None
    assert [m.add(v) for v in (5.0, 3.0, 4.0, 6.0, 7.0, 1.0, 2.0)] == [5, 3, 3, 3, 4, 1, 1]


def test_the_sliding_ncc_is_the_ncc_at_every_lag() -> None:
    """The one correlation all searches use: direct and by FFT it is |seg[k:k+n] . x| over the
    energies at every lag k; with the mask, lags onto a silent reference score 0."""
    from duplexd._uplink.echo import _sliding_ncc

    rng = np.random.default_rng(3)
    seg = rng.normal(0.0, 0.1, 900).astype(np.float32)
    seg[400:700] = 0.0  # the reference was silent here
    x = 0.5 * seg[100:356] + rng.normal(0.0, 0.01, 256).astype(np.float32)
    e_x = float(np.dot(x, x))
    stretches = np.lib.stride_tricks.sliding_window_view(seg.astype(np.float64), len(x))
    corr = stretches @ x.astype(np.float64)
    e_ref = np.einsum("ij,ij->i", stretches, stretches)
    want = np.abs(corr) / np.sqrt(e_x * e_ref + 1e-12)
    silent = e_ref < 1e-6 * e_x
    assert silent.any() and not silent.all()
    for fft in (False, True):
        ncc, c, e = _sliding_ncc(seg, x, e_x, fft=fft, mask_silence=False)
        np.testing.assert_allclose(c, corr, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(e, e_ref, rtol=1e-6, atol=1e-9)
        # (over silence the FFT's rounding, divided by almost nothing, is what the mask is for)
        np.testing.assert_allclose(ncc[~silent], want[~silent], rtol=1e-4, atol=1e-5)
        assert int(np.argmax(ncc)) == 100
        ncc, _, _ = _sliding_ncc(seg, x, e_x, fft=fft)
        assert np.all(ncc[silent] == 0.0)
        np.testing.assert_allclose(ncc[~silent], want[~silent], rtol=1e-4, atol=1e-5)
