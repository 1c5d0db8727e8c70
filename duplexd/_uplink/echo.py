"""Echo cancellation for the uplink: WebRTC's AEC3, fed the audio the session actually sent.

A client that plays the downlink through a speaker hears the agent's own voice back in its
microphone, late by the network round trip, the client's playout buffer and the room, spread
over the room's reflections, and bent by the loudspeaker. Fed to the VAD unchanged, that echo
would make the agent barge in on itself. Browsers cancel echo only of audio they play over
WebRTC, not of Web Audio playback, so the server does it: it knows exactly what it sent.

The cancelling is AEC3 (`pywebrtc_audio.EchoCanceller`, the canceller Chrome runs: an adaptive
linear filter with its own delay estimator, then a suppressor for what the filter cannot model:
reverberation beyond its length, a non-linear loudspeaker, double talk). This module is the glue
that hands it the right far-end reference for each stretch of uplink:

- The reference: the last `history_s` of what was sent (16 kHz), laid out on the server clock
  (`add_reference`: each frame where it was sent; a frame sent up to `PLAYER_BUFFER_MS` after
  where the previous one ended continues it, as the client's player plays it: its jitter
  buffer absorbs that much lateness (at its edge a tick more: placement.py's `RunRule`), and a
  frame later than that plays after a gap, as the reference then has it). A frame 25-120 ms
  late may have been played either way: both are cancelled until the echo shows which.
- The uplink on the same clock (`note_uplink`): uplink sample `u` was captured at the smallest
  `arrival_time - u / rate` seen over the last 2 s of frames (the least delayed frame). AEC3
  is handed the reference on that mapping as it was when it first ran (`_server`): the
  network's jitter moves the mapping all the time, and each move is a jump AEC3 follows
  slowly; the presence check below realigns where the echo really is. From there the
  mapping follows the echo's slide (`skew.py`: a microphone whose clock is off the
  speaker's hears the echo slide against the reference, 18 ms a minute at 300 ppm), learned
  from where the presence check finds the echo's direct path, so AEC3 sees a path that holds
  still to a sample instead of one realigned every minute or two.
- The playout delay, when the client reports playback (PLAYED, `note_played`): the client's
  audio clock mapped onto the server clock (the smallest `arrival - clock_us` over recent
  reports: the least delayed report), so each report says when the sample it names was played;
  minus when that sample was sent, that is the delay from sending to playing. The reference
  is handed to AEC3 that much later, less `PLAYOUT_MARGIN_MS` (AEC3 finds the rest, up to
  about 450 ms by measurement, and cannot cancel an echo that comes before its reference).
  A later report whose delay moved by `PLAYOUT_NEW_PATH_MS` or more (another output device),
  or on a run's first frame by a quarter of a ms or more (a run that began off where the last
  one left the player: follow.py), moves the reference with it at once: the browser client
  reports the first sample of every run it plays, so the move is known before its echo comes
  back (and the near-end check judges such a run from its start: nearend.py). One within a
  run of sends that played that much later (the player ran dry before it: sent at the edge of
  its buffer, the frame came a little later than that) moves only that run from the frame on,
  and the runs after it the player played on from it (placed.py).
  A report on a late frame being tried both ways (placement.py), or on any frame after it,
  settles the try by itself when it says which way it played (within `PLAYOUT_NEW_PATH_MS`):
  played on where the reference has a gap, the placement tried is kept at once, AEC3 with it;
  as placed, the try ends. The larger moves also have the presence check judge the path
  afresh; a smaller one keeps its verdict (the echo is where it was, a few ms on). The
  reference is never handed sooner than sent: the next report is measured from where it is,
  not from where a report it could not follow asked it to be.
  Without reports the presence check below finds an echo up to 600 ms late: a client whose
  round trip plus playout buffer may exceed that needs to send PLAYED. Nor does the server
  know where such a client's player started a new run (after a gap): each one is also tried
  placed up to 30 ms sooner (placement.py).
- Whether an echo comes back at all, and how late (`echo_found`: a GCC-PHAT of the last second
  of uplink against the reference, every 100 ms; what its scores mean: presence.py): with
  headphones nothing does, and AEC3 then only ducks the user under the agent's voice; so AEC3
  runs until no echo was found (an echo is never let through unjudged at first), and the
  uplink passes untouched while none is found (an echo that appears later, a device that
  changed, is let through while it is confirmed, with `echo_threshold` between it and a
  barge-in). Where an echo is found clearly, its
  direct path is kept `ALIGN_LEAD_MS` after the reference handed to AEC3: when it is found
  elsewhere (the first time; a player that restarted; a device that changed), the reference
  moves there and AEC3 starts over (it converges afresh in well under a second, but takes ~4 s
  to follow a delay jump of 90 ms on its own, measured, with false barge-ins on the way; on
  the way in, an echo with a 600 ms tail also leaked enough to barge in).

`converging`: AEC3 may still leak echo; the session hears silence but where no echo can reach
(the agent between words: converging.py, told where the echo is found and when the reference moves).

AEC3 works in 10 ms frames and answers `AEC_LATENCY_SAMPLES` (8 ms) late; `process` keeps whole
frames (a remainder waits for the next call), and its output is the input's samples in order,
none dropped or repeated, so output sample `k` is input sample `k` and every position the
session reports stays exact: 8-18 ms behind the input while AEC3 runs. While nothing was sent
for `IDLE_S` (no echo possible), or no echo is found, the uplink passes through untouched, AEC3
costs nothing, and the output catches up (what AEC3 still owed comes with the new samples: a
turn that ends in the quiet after the agent spoke is heard 8 ms sooner). When AEC3 starts
again, its first 8 ms of output are stale and dropped: their input was given out already.

What AEC3 leaves of a long room's tail (past its filter, where the agent pauses) is taken out
of the turn's audio by `late` (late.py), fed here the frames AEC3 gets.

One instance per session; not thread-safe (the session's uplink worker calls it).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt
import pywebrtc_audio

from .coherence import EchoCoherence
from .converging import Convergence
from .follow import FollowRule
from .late import LateEcho
from .nearend import NearEndOnset
from .phat import peak_lag
from .phat import phat as _phat
from .placed import PlacedAudio
from .placement import TRY_EVERY_MS, Placement
from .presence import PRESENCE_LAG_S, SENT_SHARE, Presence
from .ring import SENT_LOUD
from .runmin import RunningMin
from .skew import EchoSkew

FloatArray = npt.NDArray[np.float32]

AEC_LATENCY_SAMPLES: Final = 128  # AEC3's output is this late at 16 kHz (tests/test_echo.py)
PLAYOUT_MARGIN_MS: Final = 100.0  # the reference leads the reported playout by this much
ALIGN_LEAD_MS: Final = 40.0  # ... and the echo found by the presence check by this much
_ALIGN_SLACK_MS: Final = 25.0  # a direct path found within this of that lead stays as it is
_UNSENT_SLACK_MS: Final = 2.0  # ... unless the reference handed ran this much past the sends
_LEAST_LEAD_MS: Final = 10.0  # ... and then no further than this before the echo
# A report whose delay moved this much on the client's own clock moves the reference (one on a
# run's first frame, from less: follow.py) and has the presence check start afresh. Within a
# run the player cannot move without a gap: less is the clocks' drift, which AEC3 follows
# better alone than after a jump (a 1 ms jump mid-run leaked a false barge-in, live); this
# much later, the player ran dry there, and that run moves (placed.py)
PLAYOUT_NEW_PATH_MS: Final = 8.0
IDLE_S: Final = 1.5  # no echo possible this long after the last audio sent (delay + reverb)
_REPAIR_MS: Final = 100.0  # the uplink this much later than paired: pair it anew
# A frame sent up to this much later than where the previous one ended continues it: the
# client's jitter buffer plays it back to back (the browser client's 50 ms, the bench's 40,
# WebRTC's 20-80). At 15 ms (before), a frame one pacer tick late put a gap in the reference
# the player never played, and AEC3 leaked the utterance's echo after it (false barge-ins).
PLAYER_BUFFER_MS: Final = 40.0
_OFFSET_FRAMES: Final = 100  # uplink frames over which the clock offset is the minimum
_PLAYED_REPORTS: Final = 32  # PLAYED reports over which the client clock offset is the minimum
_ALIGN_SCORE: Final = 15.0  # the echo's delay is taken from a peak this clear ...
_STILL_THERE: Final = 0.5  # ... unless the delay followed still scores this share of it


class EchoCanceller:
    def __init__(self, *, t0: float, rate_hz: int = 16_000, history_s: float = 2.0) -> None:
        self.rate_hz = rate_hz
        self._t0 = t0
        self._cap = 1 << (int(history_s * rate_hz) - 1).bit_length()
        # what was sent, by server-clock sample index, where the player plays it (placed.py)
        self.placed = PlacedAudio(rate_hz, self._cap, PLAYER_BUFFER_MS)
        self._offsets = RunningMin(_OFFSET_FRAMES)
        self._offset: float | None = None  # server-clock index of uplink sample 0
        self._pairing: float | None = None  # ... as AEC3 is handed the reference (`_server`)
        self.skew = EchoSkew(rate_hz)  # ... and how the echo slides from there (`_paired`)
        self._repair = _REPAIR_MS * rate_hz / 1000
        self._client_offsets = RunningMin(_PLAYED_REPORTS)
        self._playout = 0  # samples from sending to playing, less the margin (0: unknown)
        self._own: float | None = None  # the last followed report's delay on the client clock
        self._own_shift = 0.0  # ... and the slide followed (`skew.shift`) when it came
        self._max_playout = self._cap // 2  # (the reference must still hold what is handed on)
        self._follow = FollowRule(rate_hz)  # (from how much a run's first report moves it)
        self._new_path = round(PLAYOUT_NEW_PATH_MS * rate_hz / 1000)
        self.playout_moves = 0  # times the reports moved the reference after the first
        self._fork: Placement | None = None  # a late frame's other placement, tried too
        self._tried_at = -(1 << 62)  # (the boundary of the last one: `TRY_EVERY_MS` apart)
        self._try_every = round(TRY_EVERY_MS * rate_hz / 1000)
        self.placements_tried = 0  # late frames whose other placement was tried ...
        self.placements_moved = 0  # ... and kept
        self._align = 0  # ... and further, from the delay the presence check found
        self._aec = pywebrtc_audio.EchoCanceller(rate_hz)
        self._latency = round(AEC_LATENCY_SAMPLES * rate_hz / 16_000)
        self._frame = rate_hz // 100
        self._held = np.zeros(0, dtype=np.float32)  # input short of a whole 10 ms frame
        self._pos = 0  # uplink position of the first held sample
        self._tail = np.zeros(self._latency, dtype=np.float32)  # the last input samples
        self._running = False  # whether AEC3 processed the previous frames
        self._owed = 0  # ... the last of them not yet given out (AEC3's lateness, or none)
        self.presence = Presence(rate_hz)  # does an echo come back at all (presence.py)
        self._recent = np.zeros(self.presence.span, dtype=np.float32)  # the uplink's last
        self._lags = round(PRESENCE_LAG_S * rate_hz)
        self._delay = round(ALIGN_LEAD_MS * rate_hz / 1000)  # the echo's path, as handed on
        self._echo_at = self._delay  # ... and where the presence check last found it
        self._slack = round(_ALIGN_SLACK_MS * rate_hz / 1000)
        self._unsent_slack = round(_UNSENT_SLACK_MS * rate_hz / 1000)
        self._least_lead = round(_LEAST_LEAD_MS * rate_hz / 1000)
        self._handed_end = -(1 << 62)  # the furthest reference index handed to AEC3
        # the least the reference handed ran past the sends at each frame of a paced run since
        # the last verdict (None: none came): a clock mapping that runs ahead of the sends does
        # so at every frame; an uplink frame that came early (the loop late before) at one
        self._overrun: int | None = None
        self.frames = 0  # 10 ms frames AEC3 processed
        self.realignments = 0  # times the reference was moved to the echo found (AEC3 reset)
        self.convergence = Convergence(rate_hz)  # what this AEC3 has learned from
        self.near_end = NearEndOnset(rate_hz)
        self.coherence = EchoCoherence(rate_hz)
        self.late = LateEcho(rate_hz)  # (the turn's audio: the tail AEC3 leaves, late.py)
        self.energy_in = 0.0  # of the uplink while echo was possible ...
        self.energy_out = 0.0  # ... and of what AEC3 left of it

    # ------------------------------------------------------------------ inputs

    def add_reference(
        self, now: float, samples: FloatArray, frame: tuple[int, int] | None = None
    ) -> None:
        """Audio sent at server time `now` (16 kHz float, as the client will play it);
        `frame`: its (utterance id, seq), for `note_played`."""
        n = len(samples)
        if not n:
            return
        idx = round((now - self._t0) * self.rate_hz)
        reported = self._own is not None
        end, other = self.placed.end, self.placed.other(idx, reported=reported)
        if other is not None and self._fork is not None:
            self._settle(self._fork, last=True)  # (one at a time: the last one's verdict first)
            end, other = self.placed.end, self.placed.other(idx, reported=reported)
        if (  # the player may have played it either way: both are tried (placement.py)
            other is not None
            and self._running
            and self.echo_found
            and other[0] - self._tried_at >= self._try_every
        ):
            self._try(*other)
        if self.placed.place(idx, samples, frame):  # (the next frame of the same paced run)
            assert end is not None
            # (AEC3 may have been handed its samples before they were sent: as silence)
            late = min(max(0, self._handed_end - end), self.placed.rule.contiguous)
            self._overrun = late if self._overrun is None else min(self._overrun, late)

    def note_uplink(self, now: float, end_sample: int) -> None:
        """An uplink frame ending at 16 kHz sample `end_sample` arrived at server time `now`."""
        self._offset = self._offsets.add((now - self._t0) * self.rate_hz - end_sample)

    def note_played(
        self,
        now: float,
        frame: tuple[int, int],
        offset: int,
        clock_us: int,
        *,
        final: bool = False,
    ) -> float | None:
        """A PLAYED report that arrived at server time `now`: sample `offset` (16 kHz) of the
        downlink frame `frame` (utterance id, seq) played at the client's `clock_us` (`final`:
        the utterance's last report). Returns the playout delay found (ms from sending to
        playing; None: that frame is unknown)."""
        client = self._client_offsets.add(now - clock_us / 1e6)  # server - client clock, s
        sent = self.placed.at(frame)
        if sent is None:
            return None
        played = (clock_us / 1e6 + client - self._t0) * self.rate_hz
        delay = played - (sent + offset)
        # the same on the client's own clock (an offset of its own): its changes are the
        # player's, not those of the clock mapping's estimate (which settles as quicker reports
        # come in and moves as they slide out, while the player stays where it was)
        own = clock_us * self.rate_hz / 1e6 - (sent + offset)
        shift, first, missed = self.skew.shift(self._pos), self.placed.began_run(frame), 0
        if not final:  # (its count may be capped at what was sent, its clock not)
            self._follow.add(own + shift, run_first=first)
        if self._own is None:  # the first report: the echo found so far stays where it was
            margin = PLAYOUT_MARGIN_MS * self.rate_hz / 1000
            playout = min(max(0, round(delay - margin)), self._max_playout)
            self._align = max(0, self._align - playout)  # found (the report explains that much)
            self._playout, self._own, self._own_shift = playout, own, shift
            self.convergence.unlocate()
        elif not final:
            # the player moved (it refilled its buffer after running dry; another device): the
            # echo moved with it, and so does the reference (AEC3's filter still fits the room).
            # (Not on a final report.) What the echo's slide moved the reference by since is
            # not moved twice: a client clock off the server's moves the reports and the echo
            # alike (`skew.py`).
            moved = own - self._own + (shift - self._own_shift)
            fork = self._fork
            if fork is not None and sent >= fork.boundary:
                # a frame past a late one tried both ways: the report says which way the
                # player played it. Played on where the reference has a gap: the placement
                # tried is kept (and moves the frame, so `own` stays). (Played after a gap
                # where the reference plays on, the run moves as reported, below.)
                if fork.shift < 0 and abs(moved - fork.shift) < self._new_path:
                    self._keep(fork)
                    return float(1000 * delay / self.rate_hz)
                if abs(moved) < self._new_path:
                    self._fork = None  # (played as placed)
            if abs(moved) >= (self._follow.threshold if first else self._new_path):
                # (the player ran dry within a run: that run, if the ring still holds it)
                ran_dry = not first and 0 < moved <= self._max_playout
                if ran_dry and self.placed.move_run(sent, round(moved)):
                    self._fork = None
                    self.presence.restart()  # (the path moved: judged afresh, as in `_move`)
                    self.convergence.unlocate()
                    self.playout_moves += 1
                    return float(1000 * delay / self.rate_hz)
                # (what the reference could not follow, it has not: the next report is
                # measured from where it is, not from where this one asked it to be)
                missed = round(moved) - self._move(round(moved))
                self._own, self._own_shift = own - missed, shift
        if first and not final and abs(missed) < self._follow.threshold:
            self.placed.confirm(frame)  # (the run is where it played: nearend.py's guard)
        return float(1000 * delay / self.rate_hz)

    def _try(self, boundary: int, shift: int) -> None:
        """Try the reference placed `shift` samples later from `boundary` on as well (its judges
        brought up on the last second of uplink, as `_realign` brings one up)."""
        fork = Placement(self.rate_hz, boundary, shift)
        m = min(len(self._recent), self.presence.heard)
        m -= m % self._frame
        if m > 0:
            fork.bring_up(
                self._segment, self._recent[len(self._recent) - m :], self._server(self._pos - m)
            )
        self._fork, self._tried_at = fork, boundary
        self.placements_tried += 1

    def _settle(self, fork: Placement, *, last: bool = False) -> None:
        """Keep the placement `fork` found the player's, if it is known (`last`: decide now)."""
        other = fork.verdict(1 << 62 if last else self._handed_end)
        if other is None:
            return
        self._fork = None
        if other:
            self._keep(fork)

    def _keep(self, fork: Placement) -> None:
        """The placement `fork` tried is the player's: the reference as the player has it, and
        AEC3 is the one fed that."""
        self._fork = None
        if self.placed.end is None:
            return
        self.placed.move_from(fork.boundary, fork.shift)
        self.convergence.unlocate()
        self._aec = fork.aec
        self.placements_moved += 1

    def _move(self, samples: int) -> int:
        """Hand the reference on `samples` later from now on (earlier if negative); returns how
        far it moved: less where it cannot go (sooner than sent, past the reference's history)."""
        playout, align = self._playout + samples, self._align
        if playout < 0:  # (sooner than the reports said at first: what was aligned goes first)
            align = max(0, align + playout)
        playout = min(max(0, playout), self._max_playout)
        moved = playout + align - (self._playout + self._align)
        if not moved:
            return 0
        self._playout, self._align = playout, align
        self._handed_end = -(1 << 62)  # (what was handed is on the old mapping)
        self.convergence.unlocate()
        if abs(moved) >= self._new_path:  # (the presence check judges the new path afresh)
            self.presence.restart()
        self.playout_moves += 1
        self._fork = None
        return moved

    @property
    def playout_ms(self) -> float:
        """How much later than sent the reference is handed to AEC3 (from PLAYED reports)."""
        return 1000 * self._playout / self.rate_hz

    # ------------------------------------------------------------------ cancelling

    def reference(self, start: int, end: int) -> FloatArray | None:
        """The reference handed to AEC3 with uplink samples [start, end) as it is mapped now,
        and `PRESENCE_LAG_S` of it before (where their echo may begin); None: none handed yet."""
        paired = self._paired(end)
        if paired is None:
            return None
        handed = self._handed(paired, end)
        return self._segment(handed - (end - start) - self._lags, end - start + self._lags)

    def _handed(self, paired: float, pos: int) -> int:
        """The reference index handed with uplink sample `pos`, the clocks paired at `paired`."""
        return round(paired) + pos - (self._playout + self._align)

    def _segment(self, start: int, length: int) -> FloatArray:
        """Reference samples [start, start + length); zeros where nothing (known) was sent."""
        return self.placed.segment(start, length)

    def active(self, start: int) -> bool:
        """Whether uplink sample `start` may hold echo of what was sent."""
        if self._offset is None or self.placed.end is None:
            return False
        p = round(self._offset) + start - (self._playout + self._align)
        return self.placed.active_until > p - IDLE_S * self.rate_hz

    def process(self, samples: FloatArray) -> FloatArray:
        """The uplink's next samples (16 kHz) with the echo removed, in order: the output may
        be shorter or longer than the input by less than a 10 ms frame (a remainder waits)."""
        held = np.concatenate((self._held, samples)) if len(self._held) else samples
        n = len(held) - len(held) % self._frame
        self._held = held[n:].copy()
        if not n:
            return held[:0]
        chunk, pos = held[:n], self._pos
        self._pos += n
        lat = self._latency
        joined = np.concatenate((self._tail, chunk))
        self._tail = joined[-lat:].copy()
        if not self.active(pos + n):  # nothing sent lately: the uplink as it is
            self._running, self._fork = False, None
            return self._caught_up(joined)
        assert self._offset is not None
        self._judge(chunk, pos)  # (which may move the reference, and start AEC3 over)
        handed = self._server(pos)
        far = self._segment(handed, n)
        if self.echo_found is False:  # headphones: nothing comes back to take out
            self._running, self._fork = False, None
            e = float(np.dot(joined[:n], joined[:n]))
            self.energy_in += e
            self.energy_out += e
            return self._caught_up(joined)
        fork = self._fork
        ours = None if fork is None else fork.segment(self._segment, handed, n)
        placed = self.near_end.guarding and self.placed.confirmed(handed, handed + n)
        self.near_end.add(chunk, far, pos, placed=placed)
        self.coherence.add(chunk, far, pos, self._echo_at)
        self.late.add(chunk, far, pos)
        out: FloatArray = self._aec.process(chunk, far)
        if fork is not None and ours is not None:
            out = fork.process(chunk, handed, far, ours, out)
            self._settle(fork)
        # AEC3's output is `lat` late: it continues the previous call's; unless it was idle:
        # then its first `lat` samples are stale, and the input they stand for was given out
        if not self._running:
            out = out[lat:]
        self._running, self._owed = True, lat
        self.frames += n // self._frame
        self.convergence.add(pos, far, ours)
        self.energy_in += float(np.dot(joined[:n], joined[:n]))
        self.energy_out += float(np.dot(out, out))
        return out

    def _caught_up(self, joined: FloatArray) -> FloatArray:
        """The uplink as it came, passed through (`joined`: the last `lat` input samples, then
        the new ones): with the samples AEC3 still owed, if it ran last."""
        out = joined[self._latency - self._owed :]
        self._owed = 0
        return out

    def _server(self, pos: int) -> int:
        """The index of the reference handed to AEC3 with uplink sample `pos`: on the clock
        mapping as it was when AEC3 first ran (`_pairing`), not as the network's jitter moves
        it since (each move is a jump AEC3 follows slowly: false barge-ins, with 30-60 ms of
        jitter, measured), unless the uplink now comes `_REPAIR_MS` later than that (the
        session resumed after a gap): echo must not come before its reference. Until the
        first verdict on the echo, the pairing also follows the least delayed frame down (by
        over 10 ms): it was taken from the first frames alone, and one of them late pairs the
        clocks late, which hands AEC3 a reference the later, less delayed frames find not sent
        yet, zeros (AEC3 is converging then, so the jump costs nothing)."""
        assert self._offset is not None
        offset = self._offset
        paired = self._paired(pos)
        if (
            paired is None
            or offset - paired > self._repair
            or (paired - offset > self._frame and self.echo_found is None)
        ):
            self._pairing = offset - self.skew.shift(pos)  # (a new mapping)
            self.convergence.unlocate()
            paired, self._handed_end = offset, -(1 << 62)
        return self._handed(paired, pos)

    def _paired(self, pos: int) -> float | None:
        """The server-clock index paired with uplink sample 0, as the reference is handed
        at uplink sample `pos`: the pairing, and the echo's slide since (`skew.py`)."""
        if self._pairing is None:
            return None
        return self._pairing + self.skew.shift(pos)

    def _judge(self, chunk: FloatArray, pos: int) -> None:
        """Every `PRESENCE_EVERY_S` (3 times that once known): does the last second of uplink
        (up to `chunk`, at uplink sample `pos`) hold an echo of what was sent (presence.py; a
        GCC-PHAT at 8 kHz), and where is it?"""
        end = self._server(pos + len(chunk))
        self._handed_end = max(self._handed_end, end)  # (`add_reference` checks it)
        k = min(len(chunk), len(self._recent))
        self._recent[:-k] = self._recent[k:]
        self._recent[-k:] = chunk[-k:]
        w = self.presence.window(len(chunk))
        if w is None:
            return
        far = self._segment(end - w - self._lags, w + self._lags)
        if np.count_nonzero(np.abs(far[-w:]) > SENT_LOUD) < SENT_SHARE * w:
            self.presence.unsure()
            return  # too little was sent to tell: the verdict stands
        overrun, self._overrun = self._overrun or 0, None  # (since the last verdict)
        near = self._recent[-w:]
        corr = _phat(near[0::2] + near[1::2], far[0::2] + far[1::2])
        lag = int(np.argmax(corr))
        score = float(corr[lag])
        edge = lag < 2 or lag > len(corr) - 3  # (a peak at the end of the range: cut off there)
        none_before = self.presence.found is False
        if self.presence.verdict(score):
            if none_before:  # (an echo after none: what was learned is old)
                self.near_end.reset()
            delay = self._lags - 2 * lag  # (at 8 kHz)
            if score >= _ALIGN_SCORE and not edge:  # where the direct path was, to the slide
                now = pos + len(chunk)
                exact = self._lags - 2 * peak_lag(corr, lag)
                self._echo_at = round(exact)  # (unless the reference moves now: `_realign`)
                self.convergence.locate(self._echo_at, self._slack)
                self.skew.observe(now - w / 2, end - exact - now, now)
            # where AEC3 is told to look now: does the echo still show there? (periodic
            # audio, a tone, peaks at many lags: the path moves only if it no longer does)
            at = (self._lags - self._delay) // 2
            there = float(np.max(corr[max(0, at - 2) : at + 3]))
            # It moves at the first verdict that finds it gone from there: waiting for a second
            # one (0.3 s later) let the moved echo through meanwhile (bench.aec_jitter: false
            # barge-ins 70 -> 32 in 480 draws); the tone engine's voice, whose many peaks the
            # check above keeps in place, moved it no more often (bench/results/README.md).
            if score >= _ALIGN_SCORE and there < _STILL_THERE * score and not edge:
                self._realign(delay, pos, w - len(chunk), unsent=overrun)

    def _realign(self, delay: int, pos: int, history: int, *, unsent: int = 0) -> None:
        """The echo's direct path comes `delay` samples after the reference handed to AEC3:
        if that is far from `ALIGN_LEAD_MS`, hand the reference on that much later from now on
        (uplink sample `pos`), and start AEC3 over (it takes seconds to follow a delay that
        jumps by more than ~30 ms on its own, converging afresh on an aligned reference well
        under one), brought up to `pos` on the `history` samples of uplink before it: a fresh
        AEC3 ducks the user hard for most of its first second (measured: -15..-37 dB).

        Wherever the echo is found, if the reference handed since the last verdict ran
        `unsent` samples (2-40 ms) past what was sent at every frame of the run (the least of
        them: one uplink frame that came early says nothing), the clock mapping runs ahead of the
        sends and AEC3 was handed zeros for what it has to cancel: the reference is handed on
        that much later and 10 ms more (measured: a client whose audio clock runs 300 ppm fast,
        in a room with a 40 ms path, false barge-ins every minute or so, `bench.aec_drift`; in
        a replay that handed the sends over as late as a jittery uplink's frames, an echo 23 ms
        off the lead, within the slack, and nothing taken out for a whole utterance). An echo
        that comes sooner than the reference can be handed on pairs the clocks anew, when the
        uplink now comes later than paired: a client whose clock runs slow slides that way, 18
        ms a minute at -300 ppm (measured: false barge-ins once it had slid ~95 ms, until the
        100 ms of `_REPAIR_MS` re-paired it; in the 40 ms room, from 2.5 minutes on).

        A reference handed past the sends is not always a clock: the sends themselves run late
        for a while when VITS falls behind on a loaded box. So `unsent` never moves the
        reference closer than `_LEAST_LEAD_MS` to the echo found: live, sends 40 ms late at
        every frame of a run moved it 50 ms, past an echo 37 ms after it, and AEC3 then let
        that echo through (false barge-ins every second to the end of the run). (Ignoring
        `unsent` once the skew follows a slide was tried and is wrong: a loudspeaker on the
        client's clock plays each run back to back, its echo slides only within a run, no line
        forms that follows it, and at +300 ppm that let 28 false triggers through in 10 minutes
        of `bench.aec_drift --speaker client`.)"""
        target = round(ALIGN_LEAD_MS * self.rate_hz / 1000)
        shift = delay - target
        overran = unsent > self._unsent_slack
        if overran:  # (never so far that the echo would come before its reference)
            shift = max(shift, min(unsent + self._frame, delay - self._least_lead))
            overran = shift > delay - target
        if not overran and abs(shift) <= self._slack:
            return
        align = self._align + shift
        paired = self._paired(pos)
        if align < 0 and self._offset is not None and paired is not None:
            # the echo comes sooner than the reference can be handed on: the client's clock
            # runs slow (its uplink spans more of the server's time than it says), and the
            # uplink arrives later than when the clocks were paired: pair them where it
            # arrives now (the reference handed that much later, the echo as much later)
            late = round(self._offset - paired)
            if late > 0:
                self._pairing = paired + late - self.skew.shift(pos)  # (`_handed_end`: below)
                align += late
        align = max(0, align)
        if align == self._align:
            return  # (the echo comes sooner than the reference can be handed on sooner)
        self._align, self._delay = align, target
        self._echo_at = target
        self._handed_end, self._overrun = -(1 << 62), None  # (on the new mapping from here)
        aec = pywebrtc_audio.EchoCanceller(self.rate_hz)
        m = history - history % self._frame
        self._aec, self._fork = aec, None
        n = len(self._recent) - (self._pos - pos)  # `_recent` ends at `self._pos`
        far = self._segment(self._server(pos - m), m) if m > 0 else self._recent[:0]
        if m > 0:  # (its output: already sent on, by the AEC3 it replaces)
            aec.process(self._recent[n - m : n], far)
        self.convergence.restart(pos, far)
        self.convergence.locate(target, self._slack)
        self.realignments += 1

    @property
    def echo_found(self) -> bool | None:
        """Whether an echo comes back (None: not known yet; presence.py)."""
        return self.presence.found

    @property
    def echo_score(self) -> float:
        """The last verdict's score (GCC-PHAT peak over its RMS)."""
        return self.presence.score

    @property
    def converging(self) -> bool:
        """Whether the echo may still come through: AEC3 runs and has learned from under
        `CONVERGING_S` of uplink (after the session's first words, or a realignment short of
        history). Not while no verdict on the echo is made yet past that: a user with
        headphones, talking while the verdict waits (their voice blurs it), would not be heard
        at all; AEC3 runs meanwhile, and `echo_threshold` holds what it lets through."""
        if self.echo_found is False or not self._running:
            return False
        return self.convergence.converging

    @property
    def removed_db(self) -> float:
        """How much quieter the uplink left AEC3 than it came, while echo was possible."""
        if self.energy_out <= 0.0 or not self.energy_in:
            return 0.0
        return float(10 * np.log10(self.energy_in / self.energy_out))
