"""VITS posterior-to-prior flow (inference direction): mean-only affine coupling layers whose
shift is predicted by a gated WaveNet-style stack, alternated with channel flips."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import VitsConfig


class GatedConvStack(nn.Module):
    """Non-causal WaveNet body: gated dilated convs with residual and skip 1x1 convs."""

    def __init__(self, hidden: int, kernel: int, dilation_rate: int, n_layers: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        for i in range(n_layers):
            dilation = dilation_rate**i
            pad = (kernel * dilation - dilation) // 2
            self.in_layers.append(
                nn.Conv1d(hidden, 2 * hidden, kernel, dilation=dilation, padding=pad)
            )
            out = 2 * hidden if i < n_layers - 1 else hidden
            self.res_skip_layers.append(nn.Conv1d(hidden, out, 1))

    def forward(self, x: Tensor, x_mask: Tensor) -> Tensor:
        h = self.hidden
        skip = torch.zeros_like(x)
        last = len(self.in_layers) - 1
        for i, (conv, res_skip) in enumerate(
            zip(self.in_layers, self.res_skip_layers, strict=True)
        ):
            a = conv(x)
            acts = torch.tanh(a[:, :h]) * torch.sigmoid(a[:, h:])
            rs = res_skip(acts)
            if i < last:
                x = (x + rs[:, :h]) * x_mask
                skip = skip + rs[:, h:]
            else:
                skip = skip + rs
        return skip * x_mask


class MeanCouplingLayer(nn.Module):
    """x1 <- x1 - f(x0): a volume-preserving coupling layer."""

    def __init__(self, cfg: VitsConfig) -> None:
        super().__init__()
        self.n_half = cfg.hidden // 2
        self.pre = nn.Conv1d(self.n_half, cfg.flow_hidden, 1)
        self.enc = GatedConvStack(
            cfg.flow_hidden, cfg.flow_kernel, cfg.flow_dilation_rate, cfg.flow_wn_layers
        )
        self.post = nn.Conv1d(cfg.flow_hidden, self.n_half, 1)

    def reverse(self, x: Tensor, x_mask: Tensor) -> Tensor:
        x0, x1 = x[:, : self.n_half], x[:, self.n_half :]
        h = self.enc(self.pre(x0) * x_mask, x_mask)
        shift = self.post(h) * x_mask
        return torch.cat([x0, (x1 - shift) * x_mask], dim=1)


class CouplingFlow(nn.Module):
    """Prior latent -> posterior latent (what the decoder consumes)."""

    def __init__(self, cfg: VitsConfig) -> None:
        super().__init__()
        self.flows = nn.ModuleDict({str(i): MeanCouplingLayer(cfg) for i in cfg.flow_ids})
        self.order = sorted(cfg.flow_ids, reverse=True)

    def forward(self, z: Tensor, y_mask: Tensor) -> Tensor:
        for i in self.order:
            z = torch.flip(z, [1])  # the flip that followed layer i in the forward direction
            layer = self.flows[str(i)]
            assert isinstance(layer, MeanCouplingLayer)
            z = layer.reverse(z, y_mask)
        return z
