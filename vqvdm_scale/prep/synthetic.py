"""The built-in synthetic dataset as shards: write its videos to a temporary folder, then run make_shards."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

from vqvdm_scale.data.synthetic import write_synthetic_dataset
from vqvdm_scale.prep.make_shards import ShardsConfig, main


def make_synthetic_shards(
    output_url: str,
    num_classes: int = 4,
    videos_per_class: int = 8,
    num_frames: int = 24,
    size: int = 64,
    resolution: int = 64,
    shard_size: int = 16,
    seed: int = 0,
    storage: Literal["mp4", "npy"] = "mp4",
    workers: int = 0,
) -> dict[str, Any]:
    """Write the synthetic dataset to a temporary folder and shard it with make_shards; returns the manifest."""
    with tempfile.TemporaryDirectory(prefix="vqvdm_synthetic_") as tmp:
        root = write_synthetic_dataset(
            Path(tmp) / "synthetic", num_classes, videos_per_class, num_frames, size, seed
        )
        cfg = ShardsConfig(
            input=str(root),
            output=output_url,
            layout="folder",
            resolution=resolution,
            shard_size=shard_size,
            workers=workers,
            storage=storage,
            min_frames=min(16, num_frames),
            progress=False,
        )
        return main(cfg)
