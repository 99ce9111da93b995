"""Named tokenizer sizes (one configurable class, many presets, as DiT's model dict)."""

from __future__ import annotations

import dataclasses

from vqvdm_scale.config.core import ConfigError
from vqvdm_scale.models.tokenizer.config import TokenizerConfig

TOKENIZER_PRESETS: dict[str, TokenizerConfig] = {
    # CPU smoke tests and the quickstart: 16x32x32 (or 8x32x32 with downsample (2,4,4)) clips,
    # a (4, 4, 4) downsampling to a 4x8x8 grid, 64 codes of size 8. Runs a step in well under a second.
    "tiny": TokenizerConfig(
        base_channels=16,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        downsample=(4, 4, 4),
        latent_dim=8,
        codebook_size=64,
        dead_code_threshold=0.1,
        attn_at_lowest=True,
    ),
    # Paper scale: VQ-VDM's 3D VQGAN on 16x128x128 clips with a (4, 8, 8) downsampling to a 4x16x16 grid.
    # Widths follow the taming / LDM autoencoder (128 base, 1-2-2-4); a small D keeps the latent
    # diffusion target compact as in LDM's VQ-f8 (K=16384).
    "vqvdm": TokenizerConfig(
        base_channels=128,
        channel_mult=(1, 2, 2, 4),
        num_res_blocks=2,
        downsample=(4, 8, 8),
        latent_dim=8,
        codebook_size=16384,
        dead_code_threshold=1.0,
        attn_at_lowest=True,
        attn_heads=8,
    ),
    # TATS-like (Ge et al. 2022): (4, 8, 8) downsampling, 16384 codes of size 256, wider deep levels.
    "tats": TokenizerConfig(
        base_channels=128,
        channel_mult=(1, 2, 4, 4),
        num_res_blocks=2,
        downsample=(4, 8, 8),
        latent_dim=256,
        codebook_size=16384,
        dead_code_threshold=1.0,
        attn_at_lowest=True,
        attn_heads=8,
    ),
}


def tokenizer_preset(name: str) -> TokenizerConfig:
    """A fresh copy of the named tokenizer preset."""
    if name not in TOKENIZER_PRESETS:
        raise ConfigError(
            f"unknown tokenizer preset {name!r}; choose one of {', '.join(sorted(TOKENIZER_PRESETS))}"
        )
    return dataclasses.replace(TOKENIZER_PRESETS[name])


__all__ = ["TOKENIZER_PRESETS", "tokenizer_preset"]
