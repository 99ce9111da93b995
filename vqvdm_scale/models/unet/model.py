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

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vqvdm_scale.models.layers import group_norm
from vqvdm_scale.models.unet.blocks import (
    Block,
    Downsample,
    ResBlock,
    SpatialAttention,
    TemporalAttention,
    Upsample,
    make_conv,
    sinusoidal_embedding,
    zero_module,
)
from vqvdm_scale.models.unet.config import UNetConfig

__all__ = ["UNet3D", "UNetConfig", "count_parameters"]


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
        self.in_conv = make_conv(config.input_channels, mc, bt)
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

        self.out_norm = group_norm(ch)
        # Zero-init the output conv: the untrained network predicts 0 (ADM, LDM).
        self.out_conv = zero_module(nn.Conv3d(ch, config.resolved_out_channels, 3, padding=1))

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
