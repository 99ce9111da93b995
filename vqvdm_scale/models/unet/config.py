"""The latent video U-Net's typed config (sizes, attention, conditioning, convolution type)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from vqvdm_scale.config.core import ConfigError

__all__ = ["UNetConfig"]


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
