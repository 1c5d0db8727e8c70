"""HiFi-GAN generator (Kong et al. 2020): transposed-conv upsampling + multi-receptive-field
residual blocks. Weight normalisation is already folded into the weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import VitsConfig

SLOPE = 0.1


def _same(kernel: int, dilation: int) -> int:
    return (kernel * dilation - dilation) // 2


class ResBlockA(nn.Module):
    """Type-1 block: pairs (dilated conv, plain conv), each pair residual."""

    def __init__(self, ch: int, kernel: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(ch, ch, kernel, dilation=d, padding=_same(kernel, d)) for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(ch, ch, kernel, padding=_same(kernel, 1)) for _ in dilations
        )

    def forward(self, x: Tensor) -> Tensor:
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, SLOPE)), SLOPE))
        return x


class ResBlockB(nn.Module):
    """Type-2 block: one residual dilated conv per dilation."""

    def __init__(self, ch: int, kernel: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(ch, ch, kernel, dilation=d, padding=_same(kernel, d)) for d in dilations
        )

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = x + conv(F.leaky_relu(x, SLOPE))
        return x


class Generator(nn.Module):
    """Latent frames (B, C, T) -> waveform (B, 1, T * hop) in [-1, 1]."""

    def __init__(self, cfg: VitsConfig) -> None:
        super().__init__()
        ch = cfg.upsample_initial
        self.conv_pre = nn.Conv1d(cfg.hidden, ch, cfg.pre_kernel, padding=cfg.pre_kernel // 2)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        block = ResBlockA if cfg.resblock_type == "1" else ResBlockB
        for rate, kernel in zip(cfg.upsample_rates, cfg.upsample_kernels, strict=True):
            self.ups.append(
                nn.ConvTranspose1d(ch, ch // 2, kernel, stride=rate, padding=(kernel - rate) // 2)
            )
            ch //= 2
            for k, dil in zip(cfg.resblock_kernels, cfg.resblock_dilations, strict=True):
                self.resblocks.append(block(ch, k, dil))
        self.n_kernels = len(cfg.resblock_kernels)
        self.conv_post = nn.Conv1d(ch, 1, cfg.post_kernel, padding=cfg.post_kernel // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_pre(x)
        nk = self.n_kernels
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, SLOPE))
            acc = self.resblocks[i * nk](x)
            for j in range(1, nk):
                acc = acc + self.resblocks[i * nk + j](x)
            x = acc / nk
        x = self.conv_post(F.leaky_relu(x))  # default slope 0.01 here, as trained
        return torch.tanh(x)
