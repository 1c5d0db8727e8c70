"""Where the user's voice fell quiet, from its level: the true start of a silence.

silero-vad hears the end of speech late: its probability stays over the silence threshold for
120-260 ms after the voice has died away (measured on the bench's turns: `bench.turns`' set
through `SileroVad`, the envelope's end against the first window under `neg_threshold`), so a
silence counted from silero's verdict ends every turn that much later than the user stopped.
Pipecat gates silero with the audio's volume for the same reason. `QuietTracker` follows the
level of the cleaned uplink (after the echo canceller) in 8 ms blocks and says since when the
voice has been quiet; the detector (`vad.SpeechDetector`) counts a silence from there once
silero agrees that it is one, never from further back than `vad.MAX_BACKDATE_MS`.

A block is quiet when its level is under both the voice's recent peak less `BELOW_PEAK_DB` and
the room's noise floor plus `ABOVE_FLOOR_DB`, whichever is higher: the peak decays slowly so it
is the voice of the last few seconds, and the floor is the quietest block so far, rising
slowly, so a room that gets noisier is followed (digital silence, a gap filled with zeros, is
quiet but not the room's floor). In a noisy room the quiet voice of a word's
end may count as quiet: the damage is bounded, as a silence is only backdated once silero hears
it, and by `MAX_BACKDATE_MS` at most (measured on the bench's turns: the quiet began within 4 ms
of the voice's envelope end under -60 and most under -45 dBFS of white noise; 20-225 ms before
it under -35).

In a quiet room the level alone is enough (`certain`): while the voice's peak is
`CERTAIN_OVER_FLOOR_DB` or more over the floor, "quiet" means 35 dB under the voice, and a run
of it is a pause, not a weak consonant or a soft word; the detector then counts a silence from
a wholly quiet window on without waiting for silero (64 ms sooner at the median on the bench's
turns under -55 to -70 dBFS of noise). Measured on those turns through this tracker and
`SileroVad`: under -60 dBFS the level is certain at 14 of 14 ends, under -50 at 3, from -45 at
none; in no room did a wholly quiet window it was certain of fall inside speech that silero
still heard (>= `neg_threshold`) for 150 ms or more, only in the pauses at commas, which silero
hears too. At 25 dB over the floor it was: a soft stretch of "I want to fly" under -45 dBFS.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

BLOCK_SAMPLES: Final = 128  # 8 ms at 16 kHz; a VAD window is 4 blocks
BELOW_PEAK_DB: Final = 35.0
ABOVE_FLOOR_DB: Final = 6.0
PEAK_DECAY_DB_PER_BLOCK: Final = 6.0 * BLOCK_SAMPLES / 16_000  # 6 dB a second
FLOOR_RISE_DB_PER_BLOCK: Final = 1.0 * BLOCK_SAMPLES / 16_000  # 1 dB a second
_SILENT_DB: Final = -100.0  # level of digital silence (the floor of the log)
# a block this quiet is digital silence (an uplink gap filled with zeros, a muted microphone):
# quiet, but no room's noise floor (it would pin the floor there, and in a loud room nothing
# would count as quiet until the floor had risen back, at 1 dB a second)
DIGITAL_SILENCE_DB: Final = -90.0
CERTAIN_OVER_FLOOR_DB: Final = 30.0  # the voice this far over the floor: the level is enough


class QuietTracker:
    """The level of one stream, block by block (16 kHz sample positions). Not thread-safe:
    one per uplink, used by its worker."""

    def __init__(self) -> None:
        self._peak_db = _SILENT_DB
        self._floor_db: float | None = None
        self.quiet_since: int | None = None  # first sample of the current quiet run, if any

    def window(self, start: int, samples: npt.NDArray[np.float32]) -> int | None:
        """Follow the blocks of `samples` (which begin at sample `start`; a whole number of
        blocks) and return `quiet_since` at their end: where the current run of quiet blocks
        began, or None if the last block is not quiet."""
        blocks = samples.reshape(-1, BLOCK_SAMPLES)
        power = np.einsum("ij,ij->i", blocks, blocks) / BLOCK_SAMPLES
        levels = 10.0 * np.log10(np.maximum(power, 10 ** (_SILENT_DB / 10)))
        peak, floor = self._peak_db, self._floor_db
        for k, level in enumerate(levels.tolist()):
            if level > DIGITAL_SILENCE_DB:
                rise = FLOOR_RISE_DB_PER_BLOCK
                floor = level if floor is None or level < floor else floor + rise
            peak = max(level, peak - PEAK_DECAY_DB_PER_BLOCK)
            quiet_below = peak - BELOW_PEAK_DB
            if floor is not None:
                quiet_below = max(quiet_below, floor + ABOVE_FLOOR_DB)
            if level < quiet_below:
                if self.quiet_since is None:
                    self.quiet_since = start + k * BLOCK_SAMPLES
            else:
                self.quiet_since = None
        self._peak_db, self._floor_db = peak, floor
        return self.quiet_since

    @property
    def certain(self) -> bool:
        """Whether a quiet run is a silence by the level alone: the voice's recent peak is
        `CERTAIN_OVER_FLOOR_DB` or more over the room's floor (a quiet room)."""
        floor = self._floor_db
        return floor is not None and self._peak_db - floor >= CERTAIN_OVER_FLOOR_DB
