"""Small 3D building blocks shared by the tokenizer: norms, residual blocks, resampling, attention."""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def num_groups_for(channels: int, max_groups: int = 32) -> int:
    """The largest group count <= ``max_groups`` that divides ``channels`` (GroupNorm needs a divisor)."""
    groups = max(1, min(max_groups, channels))
    while channels % groups:
        groups -= 1
    return groups


def group_norm(channels: int, max_groups: int = 32, eps: float = 1e-6) -> nn.GroupNorm:
    """GroupNorm with a group count that fits ``channels`` (32 groups as in Wu & He 2018 when possible)."""
    return nn.GroupNorm(num_groups_for(channels, max_groups), channels, eps=eps, affine=True)


class ResBlock3d(nn.Module):
    """Pre-activation residual block: (GroupNorm, SiLU, 3x3x3 conv) x 2 with an optional 1x1x1 skip."""

    def __init__(self, in_channels: int, out_channels: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv3d(out_channels, out_channels, kernel_size=3, padding=1)
        self.skip: nn.Module = (
            nn.Conv3d(in_channels, out_channels, kernel_size=1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, T, H, W] -> [B, C_out, T, H, W]``."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


def _check_factors(factors: tuple[int, int, int]) -> tuple[int, int, int]:
    if len(factors) != 3 or any(f not in (1, 2) for f in factors):
        raise ValueError(f"per-axis (T, H, W) resampling factors must each be 1 or 2, got {factors!r}")
    return (int(factors[0]), int(factors[1]), int(factors[2]))


class Downsample3d(nn.Module):
    """Strided 3x3x3 conv that halves each axis whose factor is 2 and keeps axes with factor 1."""

    def __init__(self, channels: int, factors: tuple[int, int, int] = (2, 2, 2)) -> None:
        super().__init__()
        self.factors = _check_factors(factors)
        # kernel 3, padding 1, stride 2 maps an even length n to exactly n / 2.
        self.conv = nn.Conv3d(channels, channels, kernel_size=3, stride=self.factors, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, T, H, W] -> [B, C, T/ft, H/fh, W/fw]``."""
        return self.conv(x)


class Upsample3d(nn.Module):
    """Nearest-neighbour upsampling per axis followed by a 3x3x3 conv (avoids transposed-conv checkerboards)."""

    def __init__(self, channels: int, factors: tuple[int, int, int] = (2, 2, 2)) -> None:
        super().__init__()
        self.factors = _check_factors(factors)
        self.conv = nn.Conv3d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, T, H, W] -> [B, C, T*ft, H*fh, W*fw]``."""
        x = F.interpolate(x, scale_factor=tuple(float(f) for f in self.factors), mode="nearest")
        return self.conv(x)


class AttnBlock3d(nn.Module):
    """Residual multi-head self-attention over all ``t*h*w`` positions of a 3D feature map."""

    def __init__(self, channels: int, num_heads: int = 1) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention channels {channels} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv3d(channels, 3 * channels, kernel_size=1)
        self.proj = nn.Conv3d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, T, H, W] -> [B, C, T, H, W]``."""
        b, c, t, h, w = x.shape
        q, k, v = rearrange(
            self.qkv(self.norm(x)), "b (three n d) t h w -> three b n (t h w) d", three=3, n=self.num_heads
        ).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        out = rearrange(out, "b n (t h w) d -> b (n d) t h w", t=t, h=h, w=w)
        return x + self.proj(out)


__all__ = [
    "AttnBlock3d",
    "Downsample3d",
    "ResBlock3d",
    "Upsample3d",
    "group_norm",
    "num_groups_for",
]
