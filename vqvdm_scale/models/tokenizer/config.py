"""Typed config of the stage-1 3D VQGAN tokenizer (network + quantizer; losses live in vqvdm_scale.losses)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from vqvdm_scale.config.core import ConfigError


def _log2_exact(value: int, key: str) -> int:
    if value < 1 or value & (value - 1):
        raise ConfigError(f"{key}: {value} is not a power of 2 (use 1, 2, 4, 8, ...)")
    return int(math.log2(value))


@dataclass
class TokenizerConfig:
    """Shape of the 3D VQGAN: widths, per-axis downsampling, codebook and quantizer options.

    Args:
        in_channels: video channels (3 for RGB).
        base_channels: width of the first encoder level; level ``i`` has ``base_channels * channel_mult[i]``.
        channel_mult: width multipliers per resolution level; ``len - 1`` levels can downsample.
        num_res_blocks: residual blocks per level.
        downsample: total (T, H, W) downsampling factors, each a power of 2.
        latent_dim: code vector size D (channels of the latent the decoder and stage 2 see).
        codebook_size: number of codes K.
        beta: commitment weight (van den Oord et al. 2017, eq. 3).
        use_ema: update the codebook by exponential moving averages instead of gradients (VQ-VAE-2).
        ema_decay: EMA decay of cluster sizes and code sums.
        ema_eps: Laplace smoothing epsilon for the EMA cluster sizes.
        dead_code_threshold: restart codes whose EMA cluster size falls below this (0 disables; needs use_ema).
        l2_normalize: look codes up by cosine similarity of l2-normalised vectors (Yu et al. 2022, ViT-VQGAN).
        attn_at_lowest: add self-attention in the middle block at the lowest resolution.
        attn_heads: attention heads of that block.
        dropout: dropout inside residual blocks.
        checkpoint_activations: recompute each residual block in backward (torch.utils.checkpoint).
    """

    in_channels: int = 3
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    downsample: tuple[int, int, int] = (4, 8, 8)
    latent_dim: int = 8
    codebook_size: int = 16384
    beta: float = 0.25
    use_ema: bool = True
    ema_decay: float = 0.99
    ema_eps: float = 1e-5
    dead_code_threshold: float = 1.0
    l2_normalize: bool = False
    attn_at_lowest: bool = True
    attn_heads: int = 1
    dropout: float = 0.0
    checkpoint_activations: bool = False

    def __post_init__(self) -> None:
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.downsample = tuple(int(f) for f in self.downsample)  # type: ignore[assignment]
        for key in ("in_channels", "base_channels", "num_res_blocks", "latent_dim", "attn_heads"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.codebook_size < 2:
            raise ConfigError(f"codebook_size must be >= 2, got {self.codebook_size}")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise ConfigError(
                f"channel_mult must be a non-empty list of positive ints, got {self.channel_mult}"
            )
        if len(self.downsample) != 3:
            raise ConfigError(f"downsample must be 3 factors (T, H, W), got {self.downsample}")
        levels = len(self.channel_mult) - 1
        for axis, factor in zip("THW", self.downsample, strict=True):
            steps = _log2_exact(factor, f"downsample[{axis}]")
            if steps > levels:
                raise ConfigError(
                    f"downsample[{axis}]={factor} needs {steps} halvings but channel_mult "
                    f"{self.channel_mult} gives only {levels} downsampling levels; add levels to channel_mult"
                )
        if self.beta < 0:
            raise ConfigError(f"beta must be >= 0, got {self.beta}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.ema_eps <= 0:
            raise ConfigError(f"ema_eps must be > 0, got {self.ema_eps}")
        if self.dead_code_threshold < 0:
            raise ConfigError(f"dead_code_threshold must be >= 0, got {self.dead_code_threshold}")
        if self.dead_code_threshold > 0 and not self.use_ema:
            # Restarting rows of an optimizer-owned parameter in place would desync Adam's moments and,
            # under ZeRO, the partitioned fp32 master copy; with EMA the codebook is a plain buffer.
            raise ConfigError("dead_code_threshold > 0 needs use_ema=true (or set dead_code_threshold=0)")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.attn_at_lowest and self.lowest_channels % self.attn_heads:
            raise ConfigError(
                f"attn_heads={self.attn_heads} must divide the lowest-level width {self.lowest_channels}"
            )

    @property
    def lowest_channels(self) -> int:
        """Width of the lowest-resolution level (middle block)."""
        return self.base_channels * self.channel_mult[-1]

    def level_factors(self) -> list[tuple[int, int, int]]:
        """Per-level (T, H, W) stride (1 or 2) of the ``len(channel_mult) - 1`` downsampling transitions.

        Each axis halves at the first ``log2(factor)`` transitions (as TATS' encoder does), so all axes
        are compressed early and the deepest levels run on the smallest grid.
        """
        steps = [int(math.log2(f)) for f in self.downsample]
        return [
            (2 if i < steps[0] else 1, 2 if i < steps[1] else 1, 2 if i < steps[2] else 1)
            for i in range(len(self.channel_mult) - 1)
        ]

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(D, t, h, w)`` of the latent for a ``frames x height x width`` clip."""
        ft, fh, fw = self.downsample
        if frames % ft or height % fh or width % fw:
            raise ValueError(
                f"clip size {frames}x{height}x{width} (T x H x W) is not divisible by the tokenizer's "
                f"downsample factors {ft}x{fh}x{fw}; crop or resize the clip to multiples of them"
            )
        return (self.latent_dim, frames // ft, height // fh, width // fw)


__all__ = ["TokenizerConfig"]
