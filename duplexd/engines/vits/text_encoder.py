"""VITS prior text encoder: phoneme embedding + Transformer with windowed relative positions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import VitsConfig


class ChannelNorm(nn.Module):
    """Layer normalisation over the channel axis of a (B, C, T) tensor."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        y = F.layer_norm(x.transpose(1, 2), (x.shape[1],), self.gamma, self.beta, self.eps)
        return y.transpose(1, 2)


class RelativeAttention(nn.Module):
    """Multi-head self-attention with learned relative-position terms for keys and values.

    Offsets j - i within [-window, window] get their own key and value embedding (shared by
    all heads); farther offsets get none (Shaw et al. 2018).
    """

    def __init__(self, channels: int, n_heads: int, window: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.k_channels = channels // n_heads
        self.window = window
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, channels, 1)
        n_rel = 2 * window + 1
        self.emb_rel_k = nn.Parameter(torch.zeros(1, n_rel, self.k_channels))
        self.emb_rel_v = nn.Parameter(torch.zeros(1, n_rel, self.k_channels))

    def _heads(self, x: Tensor) -> Tensor:
        b, _, t = x.shape
        return x.view(b, self.n_heads, self.k_channels, t).transpose(2, 3)  # (B, H, T, dk)

    def _offsets(self, t: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Index (T, T) of the relative embedding for each (query, key) pair, and its validity."""
        pos = torch.arange(t, device=device)
        rel = pos[None, :] - pos[:, None] + self.window
        valid = (rel >= 0) & (rel <= 2 * self.window)
        return rel.clamp(0, 2 * self.window), valid

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        b, c, t = x.shape
        q = self._heads(self.conv_q(x)) / math.sqrt(self.k_channels)
        k = self._heads(self.conv_k(x))
        v = self._heads(self.conv_v(x))
        scores = torch.matmul(q, k.transpose(-2, -1))
        # Relative key logits: q_i . e_k[j - i] for |j - i| <= window.
        rel_logits = torch.matmul(q, self.emb_rel_k[0].t())  # (B, H, T, 2w+1)
        idx, valid = self._offsets(t, x.device)
        local = torch.gather(rel_logits, -1, idx.expand(b, self.n_heads, t, t))
        scores = scores + local * valid.to(scores.dtype)
        scores = scores.masked_fill(attn_mask == 0, -1e4)
        p = torch.softmax(scores, dim=-1)
        out = torch.matmul(p, v)
        # Relative value term: sum_j p_ij e_v[j - i], regrouped per offset r = j - i + window.
        pos = torch.arange(t, device=x.device)
        key_of = pos[:, None] + torch.arange(2 * self.window + 1, device=x.device) - self.window
        key_ok = (key_of >= 0) & (key_of < t)
        weights = torch.gather(p, -1, key_of.clamp(0, t - 1).expand(b, self.n_heads, t, -1))
        weights = weights * key_ok.to(weights.dtype)
        out = out + torch.matmul(weights, self.emb_rel_v[0])
        out = out.transpose(2, 3).reshape(b, c, t)
        y: Tensor = self.conv_o(out)
        return y


class FeedForward(nn.Module):
    """Two 'same'-padded convolutions with a ReLU between them, masked at both inputs."""

    def __init__(self, channels: int, filter_channels: int, kernel: int) -> None:
        super().__init__()
        self.conv_1 = nn.Conv1d(channels, filter_channels, kernel)
        self.conv_2 = nn.Conv1d(filter_channels, channels, kernel)
        self.pad = ((kernel - 1) // 2, kernel // 2)

    def forward(self, x: Tensor, x_mask: Tensor) -> Tensor:
        x = torch.relu(self.conv_1(F.pad(x * x_mask, self.pad)))
        x = self.conv_2(F.pad(x * x_mask, self.pad))
        return x * x_mask


class AttentionEncoder(nn.Module):
    """Post-norm Transformer encoder stack."""

    def __init__(self, cfg: VitsConfig) -> None:
        super().__init__()
        h = cfg.hidden
        self.attn_layers = nn.ModuleList(
            RelativeAttention(h, cfg.n_heads, cfg.window_size) for _ in range(cfg.n_layers)
        )
        self.norm_layers_1 = nn.ModuleList(ChannelNorm(h) for _ in range(cfg.n_layers))
        self.ffn_layers = nn.ModuleList(
            FeedForward(h, cfg.ffn_channels, cfg.ffn_kernel) for _ in range(cfg.n_layers)
        )
        self.norm_layers_2 = nn.ModuleList(ChannelNorm(h) for _ in range(cfg.n_layers))

    def forward(self, x: Tensor, x_mask: Tensor) -> Tensor:
        attn_mask = x_mask.unsqueeze(2) * x_mask.unsqueeze(-1)  # (B, 1, T, T)
        x = x * x_mask
        for attn, norm1, ffn, norm2 in zip(
            self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2, strict=True
        ):
            x = norm1(x + attn(x, attn_mask))
            x = norm2(x + ffn(x, x_mask))
        return x * x_mask


class TextEncoder(nn.Module):
    """Phoneme ids -> hidden states and the prior's per-phoneme mean and log-std."""

    def __init__(self, cfg: VitsConfig) -> None:
        super().__init__()
        self.hidden = cfg.hidden
        self.emb = nn.Embedding(cfg.n_vocab, cfg.hidden)
        self.encoder = AttentionEncoder(cfg)
        self.proj = nn.Conv1d(cfg.hidden, 2 * cfg.hidden, 1)

    def forward(self, ids: Tensor, x_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.emb(ids).transpose(1, 2) * math.sqrt(self.hidden)  # (B, C, T)
        x = self.encoder(x * x_mask, x_mask)
        stats = self.proj(x) * x_mask
        m, logs = torch.split(stats, self.hidden, dim=1)
        return x, m, logs
