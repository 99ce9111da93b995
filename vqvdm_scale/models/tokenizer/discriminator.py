"""PatchGAN discriminators for the VQGAN: a 3D one on clips and a 2D one on randomly sampled frames."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from vqvdm_scale.config.core import ConfigError
from vqvdm_scale.models.layers import group_norm


@dataclass
class DiscriminatorConfig:
    """PatchGAN discriminators (Isola et al. 2017) as used by TATS: 3D on clips, 2D on frames.

    Args:
        in_channels: video channels.
        base_channels: width of the first conv; doubles per layer up to 8x.
        num_layers: strided (stride 2) conv layers; deeper layers see larger patches.
        use_2d: train a frame discriminator on ``frames_2d`` random frames per clip.
        use_3d: train a clip discriminator.
        frames_2d: frames sampled per clip for the 2D discriminator (all frames if >= T).
    """

    in_channels: int = 3
    base_channels: int = 64
    num_layers: int = 3
    use_2d: bool = True
    use_3d: bool = True
    frames_2d: int = 4

    def __post_init__(self) -> None:
        for key in ("in_channels", "base_channels", "num_layers", "frames_2d"):
            if getattr(self, key) < 1:
                raise ConfigError(f"discriminator.{key} must be >= 1, got {getattr(self, key)}")
        if not (self.use_2d or self.use_3d):
            raise ConfigError("discriminator: set use_2d or use_3d (or turn the GAN off with gan_weight=0)")


class _PatchDiscriminator(nn.Module):
    """Shared PatchGAN body for 2D and 3D convolutions; returns logits and every block's activations."""

    def __init__(
        self, conv: type[nn.Conv2d] | type[nn.Conv3d], in_channels: int, base: int, num_layers: int
    ) -> None:
        super().__init__()
        # Kernel 4 with padding 2 (TATS) rather than 1 (pix2pix) so short clips and small frames do
        # not shrink to zero size through the stride-1 head.
        k, p = 4, 2
        blocks: list[nn.Module] = [nn.Sequential(conv(in_channels, base, k, 2, p), nn.LeakyReLU(0.2))]
        ch = base
        for n in range(1, num_layers + 1):
            out = base * min(2**n, 8)
            stride = 2 if n < num_layers else 1
            # GroupNorm instead of BatchNorm: no running statistics to drift apart across data-parallel
            # ranks (DeepSpeed does not sync buffers after init), and real/fake batches do not mix.
            blocks.append(
                nn.Sequential(conv(ch, out, k, stride, p, bias=False), group_norm(out), nn.LeakyReLU(0.2))
            )
            ch = out
        self.blocks = nn.ModuleList(blocks)
        self.head = conv(ch, 1, k, 1, p)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Patch logits and the intermediate features (for feature matching)."""
        feats = []
        h = x
        for block in self.blocks:
            h = block(h)
            feats.append(h)
        return self.head(h), feats


class VideoDiscriminator3d(_PatchDiscriminator):
    """3D PatchGAN on clips ``[B, C, T, H, W]``: judges motion as well as appearance."""

    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3) -> None:
        super().__init__(nn.Conv3d, in_channels, base_channels, num_layers)


class FrameDiscriminator2d(_PatchDiscriminator):
    """2D PatchGAN on frames ``[N, C, H, W]``: judges per-frame sharpness."""

    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3) -> None:
        super().__init__(nn.Conv2d, in_channels, base_channels, num_layers)


@dataclass
class DiscOutput:
    """One discriminator's verdict on a fake batch and, optionally, the matching real batch."""

    logits_fake: Tensor
    feats_fake: list[Tensor]
    logits_real: Tensor | None
    feats_real: list[Tensor] | None


def sample_frame_indices(batch: int, frames: int, k: int, device: torch.device) -> Tensor:
    """``[batch, min(k, frames)]`` distinct random frame indices per clip (global torch RNG)."""
    k = min(k, frames)
    return torch.rand(batch, frames, device=device).argsort(dim=1)[:, :k]


def gather_frames(x: Tensor, idx: Tensor) -> Tensor:
    """Frames ``idx`` ``[B, k]`` of clips ``[B, C, T, H, W]`` as a frame batch ``[B*k, C, H, W]``."""
    rows = torch.arange(x.shape[0], device=x.device)[:, None]
    return rearrange(x.transpose(1, 2)[rows, idx], "b k c h w -> (b k) c h w")


class Discriminators(nn.Module):
    """Both discriminators as one module, so one DeepSpeed engine owns them and their optimizer."""

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.video = (
            VideoDiscriminator3d(cfg.in_channels, cfg.base_channels, cfg.num_layers) if cfg.use_3d else None
        )
        self.frame = (
            FrameDiscriminator2d(cfg.in_channels, cfg.base_channels, cfg.num_layers) if cfg.use_2d else None
        )

    def forward(self, fake: Tensor, real: Tensor | None = None) -> dict[str, DiscOutput]:
        """Judge ``fake`` clips (and ``real`` ones on the same sampled frames); keys "3d" and/or "2d".

        Real and fake go through each network in one concatenated batch (GroupNorm is per-sample, so
        they do not interact), which halves the kernel launches of the discriminator step.
        """
        if real is not None and real.shape != fake.shape:
            raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} clips differ in shape")
        out: dict[str, DiscOutput] = {}
        both = fake if real is None else torch.cat([fake, real], dim=0)
        b = fake.shape[0]
        if self.video is not None:
            out["3d"] = self._split(*self.video(both), b, real is not None)
        if self.frame is not None:
            idx = sample_frame_indices(b, fake.shape[2], self.cfg.frames_2d, fake.device)
            if real is not None:
                idx = torch.cat([idx, idx], dim=0)  # the same frames of the real clip, for feature matching
            out["2d"] = self._split(*self.frame(gather_frames(both, idx)), b * idx.shape[1], real is not None)
        return out

    @staticmethod
    def _split(logits: Tensor, feats: list[Tensor], n_fake: int, has_real: bool) -> DiscOutput:
        if not has_real:
            return DiscOutput(logits, feats, None, None)
        return DiscOutput(
            logits[:n_fake], [f[:n_fake] for f in feats], logits[n_fake:], [f[n_fake:] for f in feats]
        )


__all__ = [
    "DiscOutput",
    "DiscriminatorConfig",
    "Discriminators",
    "FrameDiscriminator2d",
    "VideoDiscriminator3d",
    "gather_frames",
    "sample_frame_indices",
]
