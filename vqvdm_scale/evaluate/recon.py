"""Tokenizer reconstruction on real clips: PSNR, SSIM, LPIPS (all frames) and rFVD.

rFVD is the Fréchet distance between I3D features of the real clips and of their reconstructions, on the
same clips the FVD protocol takes (one per video, seeded start), so it is comparable across tokenizers.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Optional

import numpy as np
import torch

from vqvdm_scale.engine.env import gather_objects
from vqvdm_scale.losses.perceptual import PerceptualLoss
from vqvdm_scale.metrics.detectors import Detector
from vqvdm_scale.metrics.features import gather_rows
from vqvdm_scale.metrics.protocol import ProtocolConfig
from vqvdm_scale.metrics.real_clips import RealSource, real_clips
from vqvdm_scale.metrics.recon import psnr, ssim
from vqvdm_scale.metrics.stats import frechet_distance, gaussian_stats
from vqvdm_scale.models.tokenizer import VQTokenizer
from vqvdm_scale.monitor.media import to_uint8
from vqvdm_scale.monitor.progress import JobProgress

__all__ = ["recon_pass"]


@torch.no_grad()
def recon_pass(
    tokenizer: VQTokenizer,
    det: Detector,
    lpips: Optional[PerceptualLoss],
    real: RealSource,
    protocol: ProtocolConfig,
    *,
    resolution: int,
    batch_size: int,
    device: torch.device,
    rank: int,
    world: int,
    progress: bool,
) -> dict[str, Any]:
    """Reconstruction metrics over the protocol's real clips (means over clips; rFVD over all of them)."""
    skipped: Counter[str] = Counter()
    clips = real_clips(
        real.urls,
        num_videos=protocol.num_real,
        frames=protocol.frames,
        stride=protocol.stride,
        resolution=resolution,
        seed=protocol.seed,
        rank=rank,
        world=world,
        skipped=skipped,
    )
    bar = JobProgress(None, f"reconstructions rank {rank}", progress and rank == 0, unit="clip")
    sums = np.zeros(4)  # clips, psnr, ssim, lpips (each weighted by clips)
    real_rows: dict[int, np.ndarray] = {}
    rec_rows: dict[int, np.ndarray] = {}
    batch: list[Any] = []

    def flush() -> None:
        u8 = torch.stack([c.clip for c in batch])
        x = u8.to(device).float() / 127.5 - 1.0
        rec, _ = tokenizer(x)
        rec = rec.float().clamp(-1, 1)
        n = len(batch)
        lp = float(lpips(x, rec)) if lpips is not None else float("nan")
        sums[:] += [n, psnr(x, rec) * n, ssim(x, rec) * n, lp * n]
        rec_u8 = torch.from_numpy(to_uint8(rec)).permute(0, 4, 1, 2, 3)
        for c, a, b in zip(batch, det(u8), det(rec_u8), strict=True):
            real_rows[c.index], rec_rows[c.index] = a, b
        bar.update(n)
        batch.clear()

    for clip in clips:
        batch.append(clip)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    bar.close()
    total = sum(gather_objects(sums))
    _, real_f = gather_rows(real_rows)
    _, rec_f = gather_rows(rec_rows)
    n = int(total[0])
    if n < 2:
        return {"clips": n, "error": "fewer than 2 real clips"}
    return {
        "clips": n,
        "psnr": float(total[1] / n),
        "ssim": float(total[2] / n),
        "lpips": float(total[3] / n) if lpips is not None else None,
        "rfvd": frechet_distance(*gaussian_stats(real_f), *gaussian_stats(rec_f)),
        "frames": protocol.frames,
        "resolution": resolution,
    }
