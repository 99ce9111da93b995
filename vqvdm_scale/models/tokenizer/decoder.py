"""3D convolutional decoder of the VQGAN: quantized latent ``[B, D, t, h, w]`` -> clip ``[B, C, T, H, W]``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from vqvdm_scale.models.layers import AttnBlock3d, ResBlock3d, Upsample3d, group_norm
from vqvdm_scale.models.tokenizer.config import TokenizerConfig
from vqvdm_scale.models.tokenizer.encoder import run_block


class Decoder3d(nn.Module):
    """Mirror of :class:`Encoder3d`: mid blocks, then levels from lowest to highest resolution with upsampling."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.use_checkpoint = cfg.checkpoint_activations
        widths = [cfg.base_channels * m for m in cfg.channel_mult]
        factors = cfg.level_factors()
        ch = widths[-1]
        self.conv_in = nn.Conv3d(cfg.latent_dim, ch, kernel_size=3, padding=1)
        self.mid_block1 = ResBlock3d(ch, ch, cfg.dropout)
        self.mid_attn: nn.Module = AttnBlock3d(ch, cfg.attn_heads) if cfg.attn_at_lowest else nn.Identity()
        self.mid_block2 = ResBlock3d(ch, ch, cfg.dropout)
        self.levels = nn.ModuleList()
        for i in reversed(range(len(widths))):
            level = nn.Module()
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock3d(ch, widths[i], cfg.dropout))
                ch = widths[i]
            level.blocks = nn.ModuleList(blocks)
            if i > 0 and factors[i - 1] != (1, 1, 1):
                level.up = Upsample3d(ch, factors[i - 1])
            else:
                level.up = nn.Identity()
            self.levels.append(level)
        self.norm_out = group_norm(ch)
        self.conv_out = nn.Conv3d(ch, cfg.in_channels, kernel_size=3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        """``[B, D, t, h, w] -> [B, C, T, H, W]`` (unbounded; the data range is [-1, 1])."""
        ckpt = self.use_checkpoint and self.training
        h = self.conv_in(z)
        h = run_block(self.mid_block1, h, ckpt)
        h = self.mid_attn(h)
        h = run_block(self.mid_block2, h, ckpt)
        for level in self.levels:
            for block in level.blocks:
                h = run_block(block, h, ckpt)
            h = level.up(h)
        return self.conv_out(F.silu(self.norm_out(h)))


__all__ = ["Decoder3d"]
