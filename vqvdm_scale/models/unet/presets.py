"""Named sizes of the latent video U-Net (one dict, as DiT's ``DiT_models``); see the README for counts."""

from __future__ import annotations

import dataclasses
from typing import Any

from vqvdm_scale.config.core import ConfigError
from vqvdm_scale.models.unet.config import UNetConfig

__all__ = ["UNET_PRESETS", "unet_preset"]

UNET_PRESETS: dict[str, UNetConfig] = {
    # CPU-fast: tests and the quickstart.
    "tiny": UNetConfig(
        model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,), head_dim=32
    ),
    # Sizes with 3x3x3 convs and C=4 (C=16 adds < 0.2M): S ~52M, B ~139M, L ~556M parameters,
    # spanning the VQ-VDM / LDM range. Four levels: h, w must be divisible by 8 (16x16 latents -> 2x2).
    "S": UNetConfig(
        model_channels=64,
        channel_mult=(1, 2, 2, 4),
        num_res_blocks=2,
        attention_resolutions=(2, 4, 8),
        head_dim=32,
    ),
    "B": UNetConfig(
        model_channels=96,
        channel_mult=(1, 2, 3, 4),
        num_res_blocks=2,
        attention_resolutions=(2, 4, 8),
        head_dim=32,
    ),
    "L": UNetConfig(
        model_channels=192,
        channel_mult=(1, 2, 3, 4),
        num_res_blocks=2,
        attention_resolutions=(2, 4, 8),
        head_dim=64,
    ),
}


def unet_preset(name: str, **overrides: Any) -> UNetConfig:
    """The named preset's config with ``overrides`` applied (e.g. ``in_channels=8, num_classes=101``)."""
    if name not in UNET_PRESETS:
        raise ConfigError(f"unknown UNet preset {name!r}; choose one of {', '.join(UNET_PRESETS)}")
    fields = {f.name for f in dataclasses.fields(UNetConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"unknown UNetConfig field(s) {unknown}; valid fields: {', '.join(sorted(fields))}")
    return dataclasses.replace(UNET_PRESETS[name], **overrides)
