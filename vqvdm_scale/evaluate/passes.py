"""The passes of an evaluation: real features (cached), generated videos through the detectors, and the
tokenizer's reconstructions of real clips. Each rank does its share; rows are gathered in index order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from vqvdm_scale.config.core import UserError
from vqvdm_scale.engine.env import gather_objects, is_main
from vqvdm_scale.evaluate.fakes import FakeBatch
from vqvdm_scale.metrics.detectors import Detector
from vqvdm_scale.metrics.features import cache_key, extract, gather_rows, load_cached, save_cached
from vqvdm_scale.metrics.protocol import ProtocolConfig
from vqvdm_scale.metrics.real_clips import RealSource, real_clips
from vqvdm_scale.monitor.progress import JobProgress

__all__ = ["FakeFeatures", "RealFeatures", "fake_pass", "real_features", "tgan_crop"]


class FakeSource(Protocol):
    def batches(
        self, count: int, frames: int, batch_size: int, rank: int, world: int
    ) -> Iterator[FakeBatch]: ...


@dataclass
class RealFeatures:
    features: np.ndarray  # [N, 400] in video order
    skipped: dict[str, int]
    cache: str
    cached: bool


def real_features(
    det: Detector,
    real: RealSource,
    protocol: ProtocolConfig,
    *,
    frames: int,
    stride: int,
    resolution: int,
    cache_dir: Path,
    batch_size: int,
    rank: int,
    world: int,
    progress: bool,
) -> RealFeatures:
    """I3D features of the protocol's real clips, from the cache when an identical set was computed before."""
    fields = {
        "format": "vqvdm-real-features/1",
        "manifest_sha256": real.manifest_sha256,
        "split": real.split,
        "num_real": protocol.num_real,
        "frames": frames,
        "stride": stride,
        "resolution": resolution,
        "seed": protocol.seed,
        "detector_sha256": det.sha256,
    }
    key = cache_key(fields)
    cached = load_cached(cache_dir, key)
    if cached is not None:
        return RealFeatures(cached, {}, str(cache_dir / f"real_{key}.npz"), True)
    skipped: Counter[str] = Counter()
    bar = JobProgress(None, f"real {frames}f features rank {rank}", progress and rank == 0, unit="clip")
    clips = real_clips(
        real.urls,
        num_videos=protocol.num_real,
        frames=frames,
        stride=stride,
        resolution=resolution,
        seed=protocol.seed,
        rank=rank,
        world=world,
        skipped=skipped,
    )
    local = extract(det, ((c.index, c.clip) for c in clips), batch_size, bar)
    bar.close()
    _, feats = gather_rows(local)
    total: Counter[str] = Counter()
    for part in gather_objects(dict(skipped)):
        total.update(part)
    if feats.shape[0] < 2:
        raise UserError(
            f"--real {real.urls[0]}...: fewer than 2 videos have {frames * stride} frames ({dict(total)}); "
            "give real shards with longer videos, or a shorter protocol.frames or protocol.long_frames"
        )
    path = cache_dir / f"real_{key}.npz"
    if is_main():
        save_cached(cache_dir, key, feats, fields)
    return RealFeatures(feats, dict(total), str(path), False)


def tgan_crop(clips: torch.Tensor) -> torch.Tensor:
    """TGAN's IS input: frames resized so the short side is 128 (bilinear), then the centre 112 x 112."""
    b, c, t, h, w = clips.shape
    x = clips.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w).float()
    s = 128 / min(h, w)
    x = F.interpolate(
        x, size=[max(128, round(h * s)), max(128, round(w * s))], mode="bilinear", align_corners=False
    )
    top, left = (x.shape[2] - 112) // 2, (x.shape[3] - 112) // 2
    x = x[:, :, top : top + 112, left : left + 112].round().clamp(0, 255).to(torch.uint8)
    return x.reshape(b, t, c, 112, 112).permute(0, 2, 1, 3, 4)


@dataclass
class Sink:
    """Rows of one detector on one view of each generated video, for the first ``limit`` videos."""

    det: Detector
    view: Callable[[FakeBatch], torch.Tensor]
    limit: int
    rows: dict[int, np.ndarray] = field(default_factory=dict)

    def add(self, batch: FakeBatch) -> None:
        keep = [k for k, i in enumerate(batch.indices) if i < self.limit]
        if not keep:
            return
        sub = FakeBatch([batch.indices[k] for k in keep], batch.videos[keep], [batch.labels[k] for k in keep])
        clips = self.view(sub)
        for i, r in zip(sub.indices, self.det(clips), strict=True):
            self.rows[i] = r


@dataclass
class FakeFeatures:
    rows: dict[str, np.ndarray]  # sink name -> [N, D] in video order
    latent_stats: list[dict[str, float]]  # per extension step, over all videos
    labels: list[int]


def fake_pass(
    source: FakeSource,
    sinks: dict[str, Sink],
    *,
    count: int,
    frames: int,
    batch_size: int,
    rank: int,
    world: int,
    progress: bool,
    latent_steps: int = 0,
) -> FakeFeatures:
    """Run ``count`` generated videos of ``frames`` frames through every sink; gather the rows on all ranks.

    With ``latent_steps`` > 0 the sampled latents are split into that many equal steps along time, and each
    step's latent mean and std (over all videos) is returned: the drift curve's latent statistics.
    """
    bar = JobProgress(count, f"generated {frames}f videos rank {rank}", progress and rank == 0)
    sums = np.zeros((max(latent_steps, 1), 3))  # per step: count, sum, sum of squares
    labels: dict[int, int] = {}
    for batch in source.batches(count, frames, batch_size, rank, world):
        for sink in sinks.values():
            sink.add(batch)
        labels.update(zip(batch.indices, batch.labels, strict=True))
        if latent_steps and batch.latents is not None:
            for k, z in enumerate(batch.latents.chunk(latent_steps, dim=2)):
                sums[k] += [z.numel(), float(z.sum()), float((z.double() ** 2).sum())]
        bar.update(len(batch.indices))
    bar.close()
    rows = {name: gather_rows(s.rows)[1] for name, s in sinks.items()}
    total = sum(gather_objects(sums))
    stats = []
    for k in range(latent_steps):
        n, s1, s2 = total[k]
        if n:
            mean = s1 / n
            stats.append(
                {"step": k, "latent_mean": mean, "latent_std": float(np.sqrt(max(s2 / n - mean**2, 0.0)))}
            )
    merged: dict[int, int] = {}
    for part in gather_objects(labels):
        merged.update(part)
    return FakeFeatures(rows, stats, [merged[i] for i in sorted(merged)])
