"""Generated videos for evaluation, in batches on each rank: read from lossless files, or sampled on the fly.

Both sources yield :class:`FakeBatch` es of uint8 ``[B, 3, T, H, W]`` videos with their global indices. The
work is split by batch: global batch k (videos ``[k*B, (k+1)*B)``) belongs to rank ``k % world``, and a
sampled batch is seeded from ``(seed, its first index)``, so every video, and therefore every metric, is
the same on any number of ranks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Optional

import numpy as np
import torch

from vqvdm_scale.config.core import UserError
from vqvdm_scale.formats.frames import find_videos, read_frames
from vqvdm_scale.formats.ldm_export import SamplingModel
from vqvdm_scale.models.tokenizer import VQTokenizer
from vqvdm_scale.monitor.media import to_uint8
from vqvdm_scale.sample.api import SampleConfig, decode_latents, generate_latents

__all__ = ["DirFakes", "FakeBatch", "ModelFakes", "my_batches"]

_CLASS = re.compile(r"class(\d+)")


@dataclass
class FakeBatch:
    indices: list[int]
    videos: torch.Tensor  # uint8 [B, 3, T, H, W]
    labels: list[int]
    latents: Optional[torch.Tensor] = None  # normalised latents [B, C, n, h, w] of sampled videos


def my_batches(count: int, batch_size: int, rank: int, world: int) -> list[list[int]]:
    """The global batches ``[k*B, (k+1)*B)`` of ``count`` videos that belong to ``rank`` (``k % world``)."""
    starts = range(0, count, batch_size)
    return [list(range(s, min(s + batch_size, count))) for k, s in enumerate(starts) if k % world == rank]


class DirFakes:
    """Generated videos stored as ``.npy`` files or PNG folders (``sample.py --format npy|png``)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.files = find_videos(folder)
        first = read_frames(self.files[0])
        self.frames, self.resolution = int(first.shape[0]), int(first.shape[1])

    def __len__(self) -> int:
        return len(self.files)

    def batches(self, count: int, frames: int, batch_size: int, rank: int, world: int) -> Iterator[FakeBatch]:
        """The first ``count`` videos, cut to their first ``frames`` frames."""
        if count > len(self.files):
            raise UserError(
                f"--fake {self.folder} holds {len(self.files)} videos, the protocol needs {count}: sample more, "
                f"or pass --num-samples {len(self.files)} to score fewer (results.json records the count)"
            )
        for idx in my_batches(count, batch_size, rank, world):
            clips, labels = [], []
            for i in idx:
                f = read_frames(self.files[i])
                if f.shape[0] < frames:
                    raise UserError(f"{self.files[i]} has {f.shape[0]} frames, the metric needs {frames}")
                if f.shape[1:3] != (self.resolution, self.resolution):
                    raise UserError(
                        f"{self.files[i]} is {f.shape[2]}x{f.shape[1]}, the first video is "
                        f"{self.resolution}x{self.resolution}: generated videos must be square and of one size"
                    )
                clips.append(torch.from_numpy(np.ascontiguousarray(f[:frames])).permute(3, 0, 1, 2))
                m = _CLASS.search(self.files[i].name)
                labels.append(int(m.group(1)) if m else -1)
            yield FakeBatch(idx, torch.stack(clips), labels)

    def record(self) -> dict[str, Any]:
        return {"source": "files", "folder": self.folder, "videos": len(self.files)}


class ModelFakes:
    """Videos sampled from a trained latent U-Net and decoded by its tokenizer, class-balanced."""

    def __init__(
        self,
        model: SamplingModel,
        tokenizer: VQTokenizer,
        sample: SampleConfig,
        device: torch.device,
        source: str = "",
        progress: bool = False,
    ) -> None:
        self.model, self.tokenizer, self.sample, self.device = model, tokenizer, sample, device
        self.source, self.progress = source, progress
        self.num_classes = int(model.net.config.num_classes)
        self.clip_frames = int(model.spec.shape[1] * tokenizer.cfg.downsample[0])
        self.resolution = int(model.spec.shape[2] * tokenizer.cfg.downsample[1])

    def with_guidance(self, guidance: float) -> ModelFakes:
        return ModelFakes(
            self.model, self.tokenizer, replace(self.sample, guidance=guidance), self.device, self.source
        )

    def labels(self, idx: list[int]) -> list[int]:
        """Class-balanced labels: video i shows class ``i % num_classes`` (0 for an unconditional model)."""
        return [i % self.num_classes if self.num_classes > 0 else 0 for i in idx]

    def batches(self, count: int, frames: int, batch_size: int, rank: int, world: int) -> Iterator[FakeBatch]:
        """``count`` videos of at least ``frames`` frames (extended by whole clips, PVDM-style, as needed)."""
        num_clips = max(1, -(-frames // self.clip_frames))
        cfg = replace(self.sample, num_clips=max(num_clips, self.sample.num_clips))
        for idx in my_batches(count, batch_size, rank, world):
            labels = self.labels(idx)
            g = torch.Generator(device=self.device).manual_seed(cfg.seed * 1_000_003 + idx[0])
            y = torch.tensor(labels, device=self.device)
            spec = self.model.spec
            z = generate_latents(self.model.net, self.model.diffusion, spec, y, cfg, generator=g)
            video = decode_latents(self.tokenizer, z, spec, cfg.quantize, cfg.precision)
            u8 = torch.from_numpy(to_uint8(video[:, :, :frames])).permute(0, 4, 1, 2, 3)  # [B, 3, T, H, W]
            yield FakeBatch(idx, u8.contiguous(), labels, z.float().cpu())

    def record(self) -> dict[str, Any]:
        s = self.sample
        return {
            "source": "model",
            "checkpoint": self.source,
            "step": self.model.step,
            "weights": "ema",
            "sampler": s.sampler,
            "steps": s.steps,
            "eta": s.eta,
            "guidance": s.guidance,
            "overlap": s.overlap,
            "later_steps": s.later_steps,
            "reconstruction_guidance": s.reconstruction_guidance,
            "context_mode": self.model.diffusion.config.context_mode,
            "quantize": s.quantize,
            "seed": s.seed,
            "class_balanced": self.num_classes > 0,
            "num_classes": self.num_classes,
            "clip_frames": self.clip_frames,
        }
