"""How a metric is computed, as named presets; every result records the protocol it used.

FVD and KVD follow StyleGAN-V's ``fvd2048_16f`` / ``fvd2048_128f`` (``src/metrics/frechet_video_distance.py``,
``metric_utils.py``), which PVDM's tables use:

- real clips: one clip per video from the first ``num_real`` videos of the shards (in manifest order),
  after videos shorter than ``frames * stride`` frames are discarded; the start frame is uniform in
  ``[0, n - (frames - 1) * stride - 1]`` (StyleGAN-V draws it unseeded; we seed it per video from
  ``(seed, video index)``, so it does not depend on the number of ranks);
- fake clips: ``num_fake`` generated clips from frame 0, converted with ``(x * 127.5 + 128).clamp(0, 255)``;
- features: the detector's 400 logits at ``rescale=True, resize=True`` (224 x 224 inside the detector);
- statistics: float64 mean and the covariance normalised by N, Fréchet distance of the two Gaussians.

KVD follows TATS' ``polynomial_mmd`` (``tats/fvd/fvd.py``): the unbiased MMD^2 with kernel
``(x.y / 400 + 1)^3`` over all real vs all fake features, one pass, no subsets, reported as computed.
DIGAN repeats the same formula over 10 regenerated sets (seed 42) and reports mean +- std.

IS presets (:data:`IS_PRESETS`) name the three protocols UCF-101 tables mix.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from vqvdm_scale.config.core import ConfigError

__all__ = ["IS_PRESETS", "ISPreset", "ProtocolConfig"]


@dataclass(frozen=True)
class ISPreset:
    """One published Inception Score protocol (C3D on UCF-101).

    Args:
        num_samples: generated clips per draw.
        splits: parts each draw is split into; the score is the mean +- std over parts, or over draws.
        draws: independent sets of ``num_samples`` (TGANv2 scores 10 sets, one split each).
        eps: added to the probabilities before the logarithm.
        shuffle_seed: the probabilities are shuffled with ``RandomState(seed)`` before splitting.
        crop: frames are resized so the short side is 128, then centre-cropped to 112 before the detector
            (TGAN); otherwise the detector resizes whole frames to 112 x 112 (TGANv2, StyleGAN-V).
        source: where the protocol is defined.
    """

    num_samples: int
    splits: int
    draws: int
    eps: float
    shuffle_seed: int | None
    crop: bool
    source: str


IS_PRESETS: dict[str, ISPreset] = {
    "stylegan-v": ISPreset(
        2048, 10, 1, 0.0, 42, False, "StyleGAN-V src/metrics/video_inception_score.py (isv2048_ucf)"
    ),
    "tganv2": ISPreset(
        2048, 1, 10, 1e-20, None, False, "TGANv2 scripts/compute_inception_score.py (10 loops, splits 1)"
    ),
    "tgan": ISPreset(10000, 1, 1, 1e-20, None, True, "TGAN (Saito et al. 2017): 10,000 samples, 1 split"),
}


@dataclass
class ProtocolConfig:
    """The evaluation protocol.

    Args:
        num_real: real videos (one clip each) for FVD/KVD; fewer if the shards hold fewer long-enough videos.
        num_fake: generated clips for FVD/KVD.
        frames: frames per clip for FVD and KVD (16: ``fvd2048_16f``).
        stride: frame stride of real clips (StyleGAN-V's ``subsample_factor``).
        long_frames: frames per clip for FVD_128 (``fvd2048_128f``).
        resolution: clip size; null = the model's (``--run``) or the fake videos' frame size.
        seed: seeds the real clips' start frames and the generated samples.
        is_preset: the Inception Score protocol, one of :data:`IS_PRESETS`.
        is_samples: generated clips per IS draw; null = the preset's (2,048 or 10,000).
    """

    name: str = "stylegan-v"
    num_real: int = 2048
    num_fake: int = 2048
    frames: int = 16
    stride: int = 1
    long_frames: int = 128
    resolution: int | None = None
    seed: int = 0
    is_preset: Literal["stylegan-v", "tganv2", "tgan"] = "stylegan-v"
    is_samples: int | None = None

    def __post_init__(self) -> None:
        if min(self.num_real, self.num_fake) < 2:
            raise ConfigError(
                "protocol.num_real and protocol.num_fake must be >= 2 (a covariance needs 2 clips)"
            )
        if min(self.frames, self.stride, self.long_frames) < 1:
            raise ConfigError("protocol.frames, protocol.stride and protocol.long_frames must be >= 1")
        if self.is_preset not in IS_PRESETS:
            raise ConfigError(
                f"protocol.is_preset must be one of {sorted(IS_PRESETS)}, got {self.is_preset!r}"
            )

        if self.is_samples is not None and self.is_samples < self.is_spec.splits:
            raise ConfigError(
                f"protocol.is_samples={self.is_samples} is fewer than the {self.is_preset} preset's "
                f"{self.is_spec.splits} splits"
            )

    @property
    def is_spec(self) -> ISPreset:
        """The IS preset, with ``is_samples`` in place of its sample count when given."""
        spec = IS_PRESETS[self.is_preset]
        return spec if self.is_samples is None else replace(spec, num_samples=self.is_samples)
