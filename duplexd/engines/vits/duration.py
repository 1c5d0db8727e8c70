"""Stochastic duration predictor of VITS, inference direction only (noise -> log-durations).

The conditioning network is a stack of dilated depth-separable convolutions; the flow is a
chain of flips and coupling layers whose transform is a monotonic rational-quadratic spline
(Durkan et al. 2019, "Neural Spline Flows") with identity tails outside [-B, B].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import VitsConfig
from .text_encoder import ChannelNorm

MIN_BIN = 1e-3
MIN_DERIVATIVE = 1e-3
SEARCH_EPS = 1e-6


class DilatedSeparableConvs(nn.Module):
    """Residual stack: depthwise conv (dilation k**i) -> norm -> GELU -> 1x1 -> norm -> GELU."""

    def __init__(self, channels: int, kernel: int, n_layers: int) -> None:
        super().__init__()
        self.convs_sep = nn.ModuleList()
        self.convs_1x1 = nn.ModuleList()
        self.norms_1 = nn.ModuleList()
        self.norms_2 = nn.ModuleList()
        for i in range(n_layers):
            dilation = kernel**i
            pad = (kernel * dilation - dilation) // 2
            self.convs_sep.append(
                nn.Conv1d(
                    channels, channels, kernel, groups=channels, dilation=dilation, padding=pad
                )
            )
            self.convs_1x1.append(nn.Conv1d(channels, channels, 1))
            self.norms_1.append(ChannelNorm(channels))
            self.norms_2.append(ChannelNorm(channels))

    def forward(self, x: Tensor, x_mask: Tensor, g: Tensor | None = None) -> Tensor:
        if g is not None:
            x = x + g
        for sep, n1, pw, n2 in zip(
            self.convs_sep, self.norms_1, self.convs_1x1, self.norms_2, strict=True
        ):
            y = F.gelu(n1(sep(x * x_mask)))
            y = F.gelu(n2(pw(y)))
            x = x + y
        return x * x_mask


def _bins(raw: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """Softmax bin sizes (with a floor) -> (knot positions incl. both ends, bin sizes)."""
    n = raw.shape[-1]
    size = MIN_BIN + (1.0 - MIN_BIN * n) * torch.softmax(raw, dim=-1)
    knots = F.pad(torch.cumsum(size, dim=-1), (1, 0), value=0.0) * (2 * bound) - bound
    knots = torch.cat([torch.full_like(knots[..., :1], -bound), knots[..., 1:-1],
                       torch.full_like(knots[..., :1], bound)], dim=-1)  # fmt: skip
    return knots, knots[..., 1:] - knots[..., :-1]


def inverse_rq_spline(
    y: Tensor, raw_w: Tensor, raw_h: Tensor, raw_d: Tensor, bound: float
) -> Tensor:
    """Invert a monotonic rational-quadratic spline on [-bound, bound]; identity outside.

    `y`: (...); `raw_w`, `raw_h`: (..., K); `raw_d`: (..., K - 1) inner-knot derivatives
    (the two boundary derivatives are fixed to 1 so the tails join smoothly).
    """
    inside = (y >= -bound) & (y <= bound)
    yc = y.clamp(-bound, bound)
    xk, widths = _bins(raw_w, bound)
    yk, heights = _bins(raw_h, bound)
    edge = math.log(math.expm1(1.0 - MIN_DERIVATIVE))
    deriv = MIN_DERIVATIVE + F.softplus(F.pad(raw_d, (1, 1), value=edge))
    # Which bin (in output space) holds each y.
    loc = torch.cat([yk[..., :-1], yk[..., -1:] + SEARCH_EPS], dim=-1)
    k = ((yc.unsqueeze(-1) >= loc).sum(dim=-1, keepdim=True) - 1).clamp(0, widths.shape[-1] - 1)

    def pick(t: Tensor) -> Tensor:
        return torch.gather(t, -1, k).squeeze(-1)

    x0, w, y0, h = pick(xk), pick(widths), pick(yk), pick(heights)
    d0, d1 = pick(deriv[..., :-1]), pick(deriv[..., 1:])
    s = h / w
    dy = yc - y0
    curv = d0 + d1 - 2 * s
    a = dy * curv + h * (s - d0)
    b = h * d0 - dy * curv
    c = -s * dy
    disc = (b * b - 4 * a * c).clamp_min(0.0)
    theta = (2 * c) / (-b - torch.sqrt(disc))
    return torch.where(inside, theta * w + x0, y)


class SplineCouplingFlow(nn.Module):
    """Coupling layer: channel 0 (plus conditioning) parameterises a spline applied to channel 1."""

    def __init__(self, cfg: VitsConfig) -> None:
        super().__init__()
        ch = cfg.dp_channels
        self.num_bins = cfg.dp_num_bins
        self.bound = cfg.dp_tail_bound
        self.scale = math.sqrt(ch)
        self.pre = nn.Conv1d(1, ch, 1)
        self.convs = DilatedSeparableConvs(ch, cfg.dp_kernel, cfg.dp_layers)
        self.proj = nn.Conv1d(ch, 3 * cfg.dp_num_bins - 1, 1)

    def reverse(self, z: Tensor, x_mask: Tensor, g: Tensor) -> Tensor:
        z0, z1 = z[:, :1], z[:, 1:]
        h = self.proj(self.convs(self.pre(z0), x_mask, g)) * x_mask  # (B, 3K-1, T)
        h = h.transpose(1, 2)  # (B, T, 3K-1)
        nb = self.num_bins
        raw_w = h[..., :nb] / self.scale
        raw_h = h[..., nb : 2 * nb] / self.scale
        raw_d = h[..., 2 * nb :]
        z1 = inverse_rq_spline(z1[:, 0], raw_w, raw_h, raw_d, self.bound).unsqueeze(1)
        return torch.cat([z0, z1], dim=1) * x_mask


class AffineFlow(nn.Module):
    """Element-wise affine flow over the two channels."""

    def __init__(self) -> None:
        super().__init__()
        self.m = nn.Parameter(torch.zeros(2, 1))
        self.logs = nn.Parameter(torch.zeros(2, 1))

    def reverse(self, z: Tensor, x_mask: Tensor) -> Tensor:
        return (z - self.m) * torch.exp(-self.logs) * x_mask


class StochasticDurationPredictor(nn.Module):
    """Hidden text states + Gaussian noise -> log-durations (B, 1, T)."""

    def __init__(self, cfg: VitsConfig) -> None:
        super().__init__()
        ch = cfg.dp_channels
        self.pre = nn.Conv1d(cfg.hidden, ch, 1)
        self.convs = DilatedSeparableConvs(ch, cfg.dp_kernel, cfg.dp_layers)
        self.proj = nn.Conv1d(ch, ch, 1)
        # Keep the training-time indices so parameter names match (odd/even = flips).
        flows: dict[str, nn.Module] = {"0": AffineFlow()}
        for i in cfg.dp_flow_ids:
            flows[str(i)] = SplineCouplingFlow(cfg)
        self.flows = nn.ModuleDict(flows)
        self.flow_order = sorted(cfg.dp_flow_ids, reverse=True)

    def forward(self, x: Tensor, x_mask: Tensor, noise: Tensor) -> Tensor:
        """`noise`: (B, 2, T) standard normal already multiplied by the noise scale."""
        g = self.proj(self.convs(self.pre(x), x_mask)) * x_mask
        z = noise
        for i in self.flow_order:
            z = torch.flip(z, [1])
            flow = self.flows[str(i)]
            assert isinstance(flow, SplineCouplingFlow)
            z = flow.reverse(z, x_mask, g)
        z = torch.flip(z, [1])
        affine = self.flows["0"]
        assert isinstance(affine, AffineFlow)
        z = affine.reverse(z, x_mask)
        return z[:, :1]
