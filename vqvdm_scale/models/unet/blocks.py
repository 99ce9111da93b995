"""The U-Net's blocks: timestep embedding, AdaGN residual block, spatial and temporal attention, resampling."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vqvdm_scale.models.layers import group_norm


def sinusoidal_embedding(values: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer sinusoidal embedding of scalar values ``[B] -> [B, dim]`` (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=values.device, dtype=torch.float32) / half
    )
    args = values.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _identity_temporal_(conv: nn.Conv3d) -> None:
    """Initialise a (3,1,1) temporal conv to the identity so a factorised block starts per-frame."""
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    with torch.no_grad():
        n = min(conv.in_channels, conv.out_channels)
        idx = torch.arange(n)
        conv.weight[idx, idx, 1, 0, 0] = 1.0


def make_conv(in_ch: int, out_ch: int, block_type: str) -> nn.Module:
    """A 3x3x3 conv or its factorised (1,3,3) + (3,1,1) form (VDM / Make-A-Video style)."""
    if block_type == "3d":
        return nn.Conv3d(in_ch, out_ch, 3, padding=1)
    temporal = nn.Conv3d(out_ch, out_ch, (3, 1, 1), padding=(1, 0, 0))
    _identity_temporal_(temporal)
    return nn.Sequential(nn.Conv3d(in_ch, out_ch, (1, 3, 3), padding=(0, 1, 1)), temporal)


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Block(nn.Module):
    """Base of every U-Net layer: ``forward(h, emb)`` so the trunk can treat them uniformly."""

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Apply the layer to ``h`` given the conditioning embedding."""
        raise NotImplementedError


class ResBlock(Block):
    """Residual block with AdaGN: ``group_norm(h) * (1 + scale) + shift`` from the embedding (ADM)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, block_type: str, dropout: float) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = make_conv(in_ch, out_ch, block_type)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        # Zero-init the last conv so every block starts as the identity (ADM's zero_module).
        self.conv2 = zero_module(make_conv(out_ch, out_ch, block_type))
        if block_type == "factorized":
            _identity_temporal_(self.conv2[1])  # type: ignore[index, arg-type]
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv3d(in_ch, out_ch, 1)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        """Residual update of ``h`` [B,C,t,h,w] conditioned on ``emb`` [B,E]."""
        x = self.conv1(F.silu(self.norm1(h)))
        scale, shift = rearrange(self.emb_proj(F.silu(emb)), "b (two c) -> two b c 1 1 1", two=2)
        x = self.norm2(x) * (1 + scale) + shift
        x = self.conv2(self.dropout(F.silu(x)))
        return self.skip(h) + x


class SpatialAttention(Block):
    """Self-attention over the h*w positions of each frame."""

    def __init__(self, channels: int, head_dim: int) -> None:
        super().__init__()
        self.heads = channels // head_dim
        self.norm = group_norm(channels)
        self.qkv = nn.Conv3d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv3d(channels, channels, 1))

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        """Residual spatial attention on ``h`` [B,C,t,h,w] (``emb`` unused)."""
        b, _, t, hh, ww = h.shape
        q, k, v = rearrange(
            self.qkv(self.norm(h)), "b (three n d) t x y -> three (b t) n (x y) d", three=3, n=self.heads
        )
        out = F.scaled_dot_product_attention(q, k, v)
        out = rearrange(out, "(b t) n (x y) d -> b (n d) t x y", b=b, t=t, x=hh, y=ww)
        return h + self.proj(out)


class TemporalAttention(Block):
    """Self-attention over the t frames at each spatial position, with relative position bias or RoPE."""

    # Relative distances beyond this share one learned bias (frames this far apart are rare in latents).
    MAX_REL_DISTANCE = 32

    def __init__(self, channels: int, head_dim: int, temporal_pos: str) -> None:
        super().__init__()
        self.heads = channels // head_dim
        self.head_dim = head_dim
        self.temporal_pos = temporal_pos
        self.norm = group_norm(channels)
        self.qkv = nn.Conv3d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv3d(channels, channels, 1))
        if temporal_pos == "rel_bias":
            self.rel_bias = nn.Parameter(torch.zeros(self.heads, 2 * self.MAX_REL_DISTANCE + 1))

    def _bias(self, t: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        pos = torch.arange(t, device=device)
        rel = (pos[None, :] - pos[:, None]).clamp(-self.MAX_REL_DISTANCE, self.MAX_REL_DISTANCE)
        return self.rel_bias[:, rel + self.MAX_REL_DISTANCE].to(dtype)  # [heads, t, t]

    def _rope(self, x: Tensor) -> Tensor:
        # Rotary embedding (Su et al. 2021) on the frame index: rotate channel pairs (i, i + d/2).
        t, d = x.shape[-2], x.shape[-1]
        half = d // 2
        freqs = 10000.0 ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
        ang = torch.arange(t, device=x.device, dtype=torch.float32)[:, None] * freqs[None]
        cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        """Residual temporal attention on ``h`` [B,C,t,h,w] (``emb`` unused)."""
        b, _, t, hh, ww = h.shape
        q, k, v = rearrange(
            self.qkv(self.norm(h)), "b (three n d) t x y -> three (b x y) n t d", three=3, n=self.heads
        )
        mask: Optional[Tensor] = None
        if self.temporal_pos == "rope":
            q, k = self._rope(q), self._rope(k)
        else:
            mask = self._bias(t, h.device, q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = rearrange(out, "(b x y) n t d -> b (n d) t x y", b=b, x=hh, y=ww)
        return h + self.proj(out)


class Downsample(Block):
    """Strided conv halving h, w (and t when ``downsample_time``)."""

    def __init__(self, channels: int, downsample_time: bool) -> None:
        super().__init__()
        stride = (2, 2, 2) if downsample_time else (1, 2, 2)
        self.conv = nn.Conv3d(channels, channels, 3, stride=stride, padding=1)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        """Downsample ``h``."""
        return self.conv(h)


class Upsample(Block):
    """Nearest upsampling of h, w (and t when ``downsample_time``) followed by a 3x3x3 conv."""

    def __init__(self, channels: int, downsample_time: bool) -> None:
        super().__init__()
        self.scale = (2.0, 2.0, 2.0) if downsample_time else (1.0, 2.0, 2.0)
        self.conv = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        """Upsample ``h``."""
        return self.conv(F.interpolate(h, scale_factor=self.scale, mode="nearest"))


# --------------------------------------------------------------------------------------------------
# Network
