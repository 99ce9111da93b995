"""3D convolutional encoder of the VQGAN: clip ``[B, C, T, H, W]`` -> pre-quantization latent ``[B, D, t, h, w]``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vqvdm_scale.models.layers import AttnBlock3d, Downsample3d, ResBlock3d, group_norm
from vqvdm_scale.models.tokenizer.config import TokenizerConfig


def run_block(block: nn.Module, x: Tensor, use_checkpoint: bool) -> Tensor:
    """Apply ``block``, recomputing it in backward when activation checkpointing is on and grads are needed."""
    if use_checkpoint and torch.is_grad_enabled() and x.requires_grad:
        return checkpoint(block, x, use_reentrant=False)
    return block(x)


class Encoder3d(nn.Module):
    """Residual 3D conv net with per-axis downsampling (as configured) and optional mid attention."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.use_checkpoint = cfg.checkpoint_activations
        widths = [cfg.base_channels * m for m in cfg.channel_mult]
        self.conv_in = nn.Conv3d(cfg.in_channels, widths[0], kernel_size=3, padding=1)
        self.levels = nn.ModuleList()
        factors = cfg.level_factors()
        ch = widths[0]
        for i, width in enumerate(widths):
            level = nn.Module()
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock3d(ch, width, cfg.dropout))
                ch = width
            level.blocks = nn.ModuleList(blocks)
            # A transition whose factors are all 1 only changes width (done by the next level's blocks).
            if i < len(widths) - 1 and factors[i] != (1, 1, 1):
                level.down = Downsample3d(ch, factors[i])
            else:
                level.down = nn.Identity()
            self.levels.append(level)
        self.mid_block1 = ResBlock3d(ch, ch, cfg.dropout)
        self.mid_attn: nn.Module = AttnBlock3d(ch, cfg.attn_heads) if cfg.attn_at_lowest else nn.Identity()
        self.mid_block2 = ResBlock3d(ch, ch, cfg.dropout)
        self.norm_out = group_norm(ch)
        self.conv_out = nn.Conv3d(ch, cfg.latent_dim, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, T, H, W] -> [B, D, t, h, w]``."""
        h = self.conv_in(x)
        for level in self.levels:
            for block in level.blocks:
                h = run_block(block, h, self.use_checkpoint and self.training)
            h = level.down(h)
        h = run_block(self.mid_block1, h, self.use_checkpoint and self.training)
        h = self.mid_attn(h)
        h = run_block(self.mid_block2, h, self.use_checkpoint and self.training)
        return self.conv_out(F.silu(self.norm_out(h)))


__all__ = ["Encoder3d", "run_block"]
