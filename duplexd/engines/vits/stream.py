"""Windowed HiFi-GAN decoding: the latent of a whole piece, decoded a window at a time.

The decoder is a stack of convolutions, so an output sample depends only on latent frames
near it: measured on the Piper "medium" generator (upsampling 8 x 8 x 4, resblock kernels
3 / 5 / 7 with dilations up to 12), perturbing one latent frame changes the output from 9.3
frames before it to 9.8 frames after it (the sum of the layers' half-widths, counted in
frames, is about 10.6). With `CONTEXT_FRAMES` = 12 frames of latent on each side a window's
audio equals the one-shot audio to float rounding (max abs difference ~1e-6).

Windows: a small first one (`FIRST_WINDOW_FRAMES`, ~0.28 s at 22.05 kHz) so first audio comes
early, then doubling up to `MAX_WINDOW_FRAMES` (~2.2 s); each later window is ready long
before the audio before it has played. Every window decodes a latent slice of a fixed size
for its position in the plan (the last window takes extra left context rather than a shorter
slice), so the same few convolution shapes recur across pieces and the CPU backend's
per-shape setup (oneDNN primitive creation, ~35 ms) is paid once, not per piece. A later
window grows (in steps of `REACH_STEP_FRAMES`: a few more shapes) to hold the sound after a
word before a pause, which its mark needs (`plan_windows`' `reach`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from torch import Tensor, nn

CONTEXT_FRAMES: Final = 12
FIRST_WINDOW_FRAMES: Final = 24
MAX_WINDOW_FRAMES: Final = 192
REACH_STEP_FRAMES: Final = 8


@dataclass(frozen=True, slots=True)
class Window:
    """Output latent frames [start, stop), decoded from latent frames [lo, hi)."""

    start: int
    stop: int
    lo: int
    hi: int


def plan_windows(
    n_frames: int,
    *,
    first: int = FIRST_WINDOW_FRAMES,
    largest: int = MAX_WINDOW_FRAMES,
    context: int = CONTEXT_FRAMES,
    reach: Sequence[tuple[int, int]] = (),
) -> list[Window]:
    """Windows covering [0, n_frames) in order; each with `context` frames around it, or more.

    A piece no longer than `first + context` frames is one window (the one-shot decode).
    `reach`: (frame, until) pairs, by frame: a later window that holds `frame` goes on at
    least to `until` (a word before a pause starts at `frame`, and its mark needs the audio up
    to `until`: `words.sound_end`); it grows in steps of `REACH_STEP_FRAMES`, so that few new
    decoder shapes arise. The first window never grows: first audio does not wait for a mark
    (grown, it took 40-64 frames instead of 24 for "Sure, ...", "Honestly, ...").
    """
    if first < 1 or largest < first or context < 0:
        raise ValueError("need 1 <= first <= largest and context >= 0")
    windows: list[Window] = []
    start, size = 0, first
    while start < n_frames:
        grown = size
        for frame, until in reach if start else ():
            if start <= frame < start + grown < until:
                grown += -(-(until - start - grown) // REACH_STEP_FRAMES) * REACH_STEP_FRAMES
        last = n_frames - start <= grown + context  # no window of less than `context` after it
        stop = n_frames if last else start + grown
        if start == 0:
            lo, hi = 0, min(n_frames, stop + context)
        elif last:
            hi = n_frames
            lo = max(0, min(start - context, n_frames - (grown + 2 * context)))
        else:
            lo, hi = start - context, stop + context
        windows.append(Window(start, stop, lo, hi))
        start, size = stop, min(2 * size, largest)
    return windows


def standard_slices(
    *,
    first: int = FIRST_WINDOW_FRAMES,
    largest: int = MAX_WINDOW_FRAMES,
    context: int = CONTEXT_FRAMES,
) -> list[int]:
    """The latent slice sizes, in frames, that `plan_windows` decodes for pieces longer than
    one window with no `reach`: the first window's, then each later size's (with context on
    both sides). (Grown windows and the one-window pieces add sizes of their own.)"""
    sizes, size = [first + context], first
    while size < largest:
        size = min(2 * size, largest)
        sizes.append(size + 2 * context)
    return sizes


def decode_window(dec: nn.Module, z: Tensor, window: Window, hop: int) -> Tensor:
    """Audio (L,) of `window` from the latent `z` (1, C, T) of one item."""
    audio: Tensor = dec(z[:, :, window.lo : window.hi])[0, 0]
    return audio[(window.start - window.lo) * hop : (window.stop - window.lo) * hop]
