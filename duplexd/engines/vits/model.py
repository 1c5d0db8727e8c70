"""VITS generator for inference (Kim et al. 2021): text encoder -> stochastic durations ->
monotonic expansion of the prior -> sampled latent -> reverse flow -> HiFi-GAN decoder.

Batched: items of different lengths are zero-padded and masked; each item's output length is
returned separately. With the noise scales at 0 an item's audio does not depend on the batch
(up to the decoder's receptive field at the very end of a padded item, which is near-silent).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import VitsConfig
from .decoder import Generator
from .duration import StochasticDurationPredictor
from .flow import CouplingFlow
from .text_encoder import TextEncoder


@dataclass(frozen=True)
class Scales:
    """Sampling controls, as in a Piper voice config ("inference" section)."""

    noise_scale: float = 0.667
    length_scale: float = 1.0
    noise_w: float = 0.8


def sequence_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B,) lengths -> (B, 1, max_len) float mask."""
    pos = torch.arange(max_len, device=lengths.device)
    return (pos[None, :] < lengths[:, None]).unsqueeze(1).float()


def expand_by_durations(stats: Tensor, durations: Tensor, n_frames: int) -> Tensor:
    """Repeat per-phoneme columns of `stats` (B, C, Tx) by integer `durations` (B, Tx)."""
    end = torch.cumsum(durations, dim=-1)
    start = end - durations
    frame = torch.arange(n_frames, device=stats.device, dtype=durations.dtype)[None, :, None]
    path = ((frame >= start[:, None, :]) & (frame < end[:, None, :])).to(stats.dtype)
    return torch.bmm(stats, path.transpose(1, 2))  # (B, C, Ty)


class Vits(nn.Module):
    """Single-speaker VITS synthesizer; parameter names follow the original training code."""

    def __init__(self, cfg: VitsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.enc_p = TextEncoder(cfg)
        self.dp = StochasticDurationPredictor(cfg)
        self.flow = CouplingFlow(cfg)
        self.dec = Generator(cfg)

    @property
    def hop_length(self) -> int:
        return self.cfg.hop_length

    def forward(
        self,
        ids: Tensor,
        lengths: Tensor,
        scales: Scales,
        generator: torch.Generator | None = None,
        frame_multiple: int = 1,
        decoder_autocast: torch.dtype | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Phoneme ids (B, Tx) with true `lengths` (B,) -> (audio (B, L), lengths in samples,
        durations (B, Tx) in latent frames of `hop_length` samples each: where every id's
        audio lies, for word timing).

        `frame_multiple` pads the latent length up to a multiple (stable shapes for CUDA
        allocators); `decoder_autocast` runs flow and decoder under autocast in that dtype.
        """
        z_p, y_mask, y_lengths, durations = self.prior(
            ids, lengths, scales, generator, frame_multiple
        )
        if decoder_autocast is None:
            z = self.flow(z_p, y_mask)
            audio = self.dec(z * y_mask)
        else:
            with torch.autocast(device_type=ids.device.type, dtype=decoder_autocast):
                z = self.flow(z_p, y_mask)
                audio = self.dec(z * y_mask)
        return audio[:, 0].float(), y_lengths * self.hop_length, durations

    def latent(
        self,
        ids: Tensor,
        lengths: Tensor,
        scales: Scales,
        generator: torch.Generator | None = None,
        frame_multiple: int = 1,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Everything but the decoder: -> (masked latent z (B, C, Ty), lengths in frames,
        durations (B, Tx) in frames).

        `self.dec(z)` then gives `forward`'s audio; the decoder may also run on windows of z
        (see `stream.py`).
        """
        z_p, y_mask, y_lengths, durations = self.prior(
            ids, lengths, scales, generator, frame_multiple
        )
        return self.flow(z_p, y_mask) * y_mask, y_lengths, durations

    def prior(
        self,
        ids: Tensor,
        lengths: Tensor,
        scales: Scales,
        generator: torch.Generator | None = None,
        frame_multiple: int = 1,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Text encoder, durations, expansion, sampling -> (z_p, y_mask, lengths in frames,
        durations (B, Tx) in frames, 0 past each item's length)."""
        x_mask = sequence_mask(lengths, ids.shape[1])
        h, m_p, logs_p = self.enc_p(ids, x_mask)
        b, _, tx = h.shape
        noise_w = _noise((b, 2, tx), h, generator) * scales.noise_w
        logw = self.dp(h, x_mask, noise_w)
        durations = torch.ceil(torch.exp(logw) * x_mask * scales.length_scale)[:, 0]
        y_lengths = durations.sum(dim=1).clamp_min(1).long()
        n_frames = int(y_lengths.max().item())
        n_frames = -(-n_frames // frame_multiple) * frame_multiple
        y_mask = sequence_mask(y_lengths, n_frames)
        m = expand_by_durations(m_p, durations, n_frames)
        logs = expand_by_durations(logs_p, durations, n_frames)
        z_p = m
        if scales.noise_scale != 0.0:
            z_p = m + _noise(m.shape, m, generator) * torch.exp(logs) * scales.noise_scale
        return z_p, y_mask, y_lengths, durations


def _noise(
    shape: tuple[int, ...] | torch.Size, like: Tensor, gen: torch.Generator | None
) -> Tensor:
    return torch.randn(shape, generator=gen, device=like.device, dtype=like.dtype)
