"""Hyper-parameters of a VITS voice, derived from the weights and graph of a Piper ONNX file."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VitsConfig:
    """Shape of one single-speaker VITS generator (inference part only)."""

    n_vocab: int = 256
    hidden: int = 192
    # Text encoder (relative-position Transformer).
    n_heads: int = 2
    n_layers: int = 6
    window_size: int = 4
    ffn_channels: int = 768
    ffn_kernel: int = 3
    # Stochastic duration predictor.
    dp_channels: int = 192
    dp_kernel: int = 3
    dp_layers: int = 3
    dp_flow_ids: tuple[int, ...] = (3, 5, 7)
    dp_num_bins: int = 10
    dp_tail_bound: float = 5.0
    # Residual coupling flow (WaveNet-like coupling layers).
    flow_ids: tuple[int, ...] = (0, 2, 4, 6)
    flow_hidden: int = 192
    flow_kernel: int = 5
    flow_dilation_rate: int = 1
    flow_wn_layers: int = 4
    # HiFi-GAN decoder.
    upsample_initial: int = 256
    upsample_rates: tuple[int, ...] = (8, 8, 4)
    upsample_kernels: tuple[int, ...] = (16, 16, 8)
    resblock_type: str = "2"
    resblock_kernels: tuple[int, ...] = (3, 5, 7)
    resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 2), (2, 6), (3, 12))
    pre_kernel: int = 7
    post_kernel: int = 7

    @property
    def hop_length(self) -> int:
        """Audio samples per latent frame."""
        hop = 1
        for rate in self.upsample_rates:
            hop *= rate
        return hop
