"""The stage-2 latent video U-Net: ADM-style residual U-Net over ``[B, C, t, h, w]`` latents.

Design follows ADM (Dhariwal & Nichol 2021) extended to video as in VDM (Ho et al. 2022) and
VQ-VDM: residual blocks conditioned by scale-shift (AdaGN) on one embedding (timestep + class +
fps), spatial self-attention per frame and temporal self-attention per pixel at chosen
resolutions, skip connections between the down and up paths, and a zero-initialised output conv
so the untrained network predicts zero. Convolutions are full 3D or factorised (2D spatial then
1D temporal, as in VDM's space-time factorised U-Net).

Optional context conditioning (``context_frames``): the input becomes
``concat([x, context * mask, mask])``. It serves PVDM's previous-clip conditioning (mask = 1
everywhere) and RaMViD-style random frame masks (mask = 1 on the known frames); a missing context
is all zeros with mask 0 (the "dropped context" case used for the unconditional branch).

The network holds no loss, optimizer or distributed code; activation checkpointing is the only
training concern it knows, switched by its config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vqvdm_scale.config.core import ConfigError

__all__ = ["UNet3D", "UNetConfig", "count_parameters", "sinusoidal_embedding"]


@dataclass
class UNetConfig:
    """Architecture of the latent video U-Net (see the module docstring for the design).

    Args:
        in_channels: latent channels C.
        out_channels: output channels; None means ``in_channels`` (eps / v prediction).
        model_channels: width of the first level; level i has ``model_channels * channel_mult[i]``.
        channel_mult: width multiplier per resolution level.
        num_res_blocks: residual blocks per level on the down path (up path has one more).
        attention_resolutions: spatial downsample factors (1, 2, 4, ...) at which spatial and
            temporal self-attention run; the middle block always has attention.
        head_dim: channels per attention head (heads = channels // head_dim).
        num_classes: 0 = unconditional; otherwise the class table has ``num_classes + 1`` rows,
            the last one being the null class for classifier-free guidance.
        use_fps: condition on the clip's frame rate.
        block_type: "3d" (3x3x3 convs) or "factorized" ((1,3,3) spatial then (3,1,1) temporal).
        dropout: dropout inside residual blocks.
        temporal_pos: position encoding of temporal attention: learned relative position bias
            ("rel_bias") or rotary embedding on the frame index ("rope").
        context_frames: take ``concat([x, context * mask, mask])`` as input (2C+1 channels).
        checkpoint_activations: recompute each block in backward (torch.utils.checkpoint).
        downsample_time: also halve time at each downsample (latent grids are usually short).
    """

    in_channels: int = 4
    out_channels: Optional[int] = None
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (2, 4, 8)
    head_dim: int = 64
    num_classes: int = 0
    use_fps: bool = False
    block_type: Literal["3d", "factorized"] = "3d"
    dropout: float = 0.0
    temporal_pos: Literal["rel_bias", "rope"] = "rel_bias"
    context_frames: bool = False
    checkpoint_activations: bool = False
    downsample_time: bool = False

    def __post_init__(self) -> None:
        # Tuples may arrive as lists from hand-written code; keep them hashable and comparable.
        self.channel_mult = tuple(self.channel_mult)
        self.attention_resolutions = tuple(self.attention_resolutions)
        if self.in_channels < 1:
            raise ConfigError(f"model.in_channels must be >= 1, got {self.in_channels}")
        if self.out_channels is not None and self.out_channels < 1:
            raise ConfigError(f"model.out_channels must be >= 1 or null, got {self.out_channels}")
        if self.model_channels < 1:
            raise ConfigError(f"model.model_channels must be >= 1, got {self.model_channels}")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise ConfigError(
                f"model.channel_mult must be a non-empty list of ints >= 1, got {self.channel_mult}"
            )
        if self.num_res_blocks < 1:
            raise ConfigError(f"model.num_res_blocks must be >= 1, got {self.num_res_blocks}")
        factors = [2**i for i in range(len(self.channel_mult))]
        bad = [r for r in self.attention_resolutions if r not in factors]
        if bad:
            raise ConfigError(
                f"model.attention_resolutions {bad} are not downsample factors of this U-Net; "
                f"with {len(self.channel_mult)} levels choose from {factors}"
            )
        if self.head_dim < 1:
            raise ConfigError(f"model.head_dim must be >= 1, got {self.head_dim}")
        if self.temporal_pos == "rope" and self.head_dim % 2:
            raise ConfigError(f"model.head_dim must be even for temporal_pos='rope', got {self.head_dim}")
        attn_levels = {i for i, f in enumerate(factors) if f in self.attention_resolutions}
        attn_levels.add(len(self.channel_mult) - 1)  # the middle block
        for i in sorted(attn_levels):
            ch = self.model_channels * self.channel_mult[i]
            if ch % self.head_dim:
                raise ConfigError(
                    f"model.head_dim={self.head_dim} does not divide the {ch} channels at level {i} "
                    f"(model_channels * channel_mult[{i}]); change head_dim or model_channels"
                )
        if self.num_classes < 0:
            raise ConfigError(f"model.num_classes must be >= 0 (0 = unconditional), got {self.num_classes}")
        if self.block_type not in ("3d", "factorized"):
            raise ConfigError(f"model.block_type must be '3d' or 'factorized', got {self.block_type!r}")
        if self.temporal_pos not in ("rel_bias", "rope"):
            raise ConfigError(f"model.temporal_pos must be 'rel_bias' or 'rope', got {self.temporal_pos!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")

    @property
    def resolved_out_channels(self) -> int:
        """Output channels with the ``None`` default resolved."""
        return self.in_channels if self.out_channels is None else self.out_channels

    @property
    def input_channels(self) -> int:
        """Channels the first conv sees: C, or 2C+1 with context frames."""
        return 2 * self.in_channels + 1 if self.context_frames else self.in_channels


# --------------------------------------------------------------------------------------------------
# Layers


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


def _num_groups(channels: int) -> int:
    # 32 groups as in ADM where the width allows it; otherwise the largest divisor that fits.
    return math.gcd(channels, 32)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_num_groups(channels), channels, eps=1e-6)


def _identity_temporal_(conv: nn.Conv3d) -> None:
    """Initialise a (3,1,1) temporal conv to the identity so a factorised block starts per-frame."""
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    with torch.no_grad():
        n = min(conv.in_channels, conv.out_channels)
        idx = torch.arange(n)
        conv.weight[idx, idx, 1, 0, 0] = 1.0


def _conv(in_ch: int, out_ch: int, block_type: str) -> nn.Module:
    """A 3x3x3 conv or its factorised (1,3,3) + (3,1,1) form (VDM / Make-A-Video style)."""
    if block_type == "3d":
        return nn.Conv3d(in_ch, out_ch, 3, padding=1)
    temporal = nn.Conv3d(out_ch, out_ch, (3, 1, 1), padding=(1, 0, 0))
    _identity_temporal_(temporal)
    return nn.Sequential(nn.Conv3d(in_ch, out_ch, (1, 3, 3), padding=(0, 1, 1)), temporal)


def _zero_(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Block(nn.Module):
    """Base of every U-Net layer: ``forward(h, emb)`` so the trunk can treat them uniformly."""

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Apply the layer to ``h`` given the conditioning embedding."""
        raise NotImplementedError


class ResBlock(Block):
    """Residual block with AdaGN: ``norm(h) * (1 + scale) + shift`` from the embedding (ADM)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, block_type: str, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = _conv(in_ch, out_ch, block_type)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = _norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        # Zero-init the last conv so every block starts as the identity (ADM's zero_module).
        self.conv2 = _zero_(_conv(out_ch, out_ch, block_type))
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
        self.norm = _norm(channels)
        self.qkv = nn.Conv3d(channels, 3 * channels, 1)
        self.proj = _zero_(nn.Conv3d(channels, channels, 1))

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
        self.norm = _norm(channels)
        self.qkv = nn.Conv3d(channels, 3 * channels, 1)
        self.proj = _zero_(nn.Conv3d(channels, channels, 1))
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


class UNet3D(nn.Module):
    """Latent video U-Net predicting eps (or v) for ``[B, C, t, h, w]`` latents.

    Args:
        config: the architecture (see :class:`UNetConfig`).
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        mc = config.model_channels
        emb_dim = 4 * mc
        self.emb_dim = emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb: Optional[nn.Embedding] = (
            nn.Embedding(config.num_classes + 1, emb_dim) if config.num_classes > 0 else None
        )
        self.fps_mlp: Optional[nn.Sequential] = (
            nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            if config.use_fps
            else None
        )

        bt = config.block_type
        self.in_conv = _conv(config.input_channels, mc, bt)
        self.down = nn.ModuleList()
        skip_chs = [mc]
        ch = mc
        n_levels = len(config.channel_mult)
        for level, mult in enumerate(config.channel_mult):
            factor = 2**level
            for _ in range(config.num_res_blocks):
                layers: list[Block] = [ResBlock(ch, mc * mult, emb_dim, bt, config.dropout)]
                ch = mc * mult
                if factor in config.attention_resolutions:
                    layers += self._attention(ch)
                self.down.append(nn.ModuleList(layers))
                skip_chs.append(ch)
            if level != n_levels - 1:
                self.down.append(nn.ModuleList([Downsample(ch, config.downsample_time)]))
                skip_chs.append(ch)

        self.middle = nn.ModuleList(
            [
                ResBlock(ch, ch, emb_dim, bt, config.dropout),
                *self._attention(ch),
                ResBlock(ch, ch, emb_dim, bt, config.dropout),
            ]
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            factor = 2**level
            for i in range(config.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_chs.pop(), mc * mult, emb_dim, bt, config.dropout)]
                ch = mc * mult
                if factor in config.attention_resolutions:
                    layers += self._attention(ch)
                if level != 0 and i == config.num_res_blocks:
                    layers.append(Upsample(ch, config.downsample_time))
                self.up.append(nn.ModuleList(layers))

        self.out_norm = _norm(ch)
        # Zero-init the output conv: the untrained network predicts 0 (ADM, LDM).
        self.out_conv = _zero_(nn.Conv3d(ch, config.resolved_out_channels, 3, padding=1))

    def _attention(self, channels: int) -> list[Block]:
        cfg = self.config
        return [
            SpatialAttention(channels, cfg.head_dim),
            TemporalAttention(channels, cfg.head_dim, cfg.temporal_pos),
        ]

    def _run(self, layer: nn.Module, h: Tensor, emb: Tensor) -> Tensor:
        if self.config.checkpoint_activations and torch.is_grad_enabled():
            # Non-reentrant checkpoint keeps the RNG state so dropout replays identically.
            return checkpoint(layer, h, emb, use_reentrant=False)  # type: ignore[no-any-return]
        return layer(h, emb)  # type: ignore[no-any-return]

    def _check_shapes(self, x: Tensor, context: Optional[Tensor], context_mask: Optional[Tensor]) -> None:
        cfg = self.config
        if x.ndim != 5 or x.shape[1] != cfg.in_channels:
            raise ValueError(
                f"UNet3D expects x of shape [B, {cfg.in_channels}, t, h, w], got {tuple(x.shape)}"
            )
        n_down = len(cfg.channel_mult) - 1
        div = 2**n_down
        _, _, t, h, w = x.shape
        if h % div or w % div or (cfg.downsample_time and t % div):
            dims = "t, h and w" if cfg.downsample_time else "h and w"
            raise ValueError(
                f"latent size t={t}, h={h}, w={w}: {dims} must be divisible by {div} for "
                f"{len(cfg.channel_mult)} U-Net levels; use fewer levels (channel_mult) or larger latents"
            )
        if not cfg.context_frames and (context is not None or context_mask is not None):
            raise ValueError(
                "context was given but this UNet has context_frames=False; enable it in the config"
            )
        if context is not None and context.shape != x.shape:
            raise ValueError(f"context must have the shape of x {tuple(x.shape)}, got {tuple(context.shape)}")
        if context_mask is not None:
            want = (x.shape[0], 1, t, h, w)
            if tuple(context_mask.shape) != want:
                raise ValueError(f"context_mask must have shape {want}, got {tuple(context_mask.shape)}")

    def embed(self, timesteps: Tensor, y: Optional[Tensor], fps: Optional[Tensor]) -> Tensor:
        """The conditioning embedding ``[B, 4*model_channels]``: time + class + fps."""
        cfg = self.config
        # Match the weights' dtype: under DeepSpeed bf16/fp16 the whole module is cast, with no autocast.
        wdtype = self.time_mlp[0].weight.dtype
        emb = self.time_mlp(sinusoidal_embedding(timesteps, cfg.model_channels).to(wdtype))
        if self.class_emb is not None:
            if y is None:
                # No label means the null class: the unconditional branch of classifier-free guidance.
                y = torch.full(
                    (timesteps.shape[0],), cfg.num_classes, dtype=torch.long, device=timesteps.device
                )
            emb = emb + self.class_emb(y.long())
        if self.fps_mlp is not None:
            if fps is None:
                raise ValueError("this UNet has use_fps=True: pass fps [B] (frames per second of the clip)")
            emb = emb + self.fps_mlp(sinusoidal_embedding(fps.float(), cfg.model_channels).to(wdtype))
        return emb

    def forward(
        self,
        x: Tensor,
        timesteps: Tensor,
        y: Optional[Tensor] = None,
        fps: Optional[Tensor] = None,
        context: Optional[Tensor] = None,
        context_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """Network output ``[B, out, t, h, w]`` for noisy latents ``x`` at ``timesteps`` [B].

        ``y`` [B] long (None = null class when class-conditional; ignored when num_classes=0),
        ``fps`` [B] float (ignored when use_fps=False, so loaders may always pass it), ``context``
        [B,C,t,h,w] and ``context_mask`` [B,1,t,h,w] (context frames only; a missing context is
        zeros with mask 0, a missing mask with a given context is all ones).
        """
        cfg = self.config
        self._check_shapes(x, context, context_mask)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        emb = self.embed(timesteps, y, fps).to(x.dtype)

        if cfg.context_frames:
            b, _, t, hh, ww = x.shape
            if context is None:
                context = torch.zeros_like(x)
                context_mask = torch.zeros(b, 1, t, hh, ww, dtype=x.dtype, device=x.device)
            elif context_mask is None:
                context_mask = torch.ones(b, 1, t, hh, ww, dtype=x.dtype, device=x.device)
            context_mask = context_mask.to(x.dtype)
            x = torch.cat([x, context.to(x.dtype) * context_mask, context_mask], dim=1)

        h = self.in_conv(x)
        skips = [h]
        for layers in self.down:
            for layer in layers:  # type: ignore[union-attr]
                h = self._run(layer, h, emb)
            skips.append(h)
        for layer in self.middle:
            h = self._run(layer, h, emb)
        for layers in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            for layer in layers:  # type: ignore[union-attr]
                h = self._run(layer, h, emb)
        return self.out_conv(F.silu(self.out_norm(h)))


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module`` (all of them, trainable or not)."""
    return sum(p.numel() for p in module.parameters())
