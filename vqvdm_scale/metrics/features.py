"""Detector features of indexed clips on each rank, gathered in index order; the real-feature cache.

Each rank passes its own clips through the detector; :func:`gather_rows` collects every rank's rows on
every rank and orders them by the clips' global indices, so the statistics are the same as one process
would compute. Real features are cached on disk under a key of everything that determines them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from vqvdm_scale.engine.env import gather_objects
from vqvdm_scale.monitor.progress import JobProgress

__all__ = ["cache_key", "extract", "gather_rows", "load_cached", "save_cached"]


def extract(
    detector: Callable[[torch.Tensor], np.ndarray],
    clips: Iterable[tuple[int, torch.Tensor]],
    batch_size: int,
    bar: Optional[JobProgress] = None,
) -> dict[int, np.ndarray]:
    """``{index: detector row}`` for ``(index, uint8 [3, T, H, W])`` clips, ``batch_size`` at a time."""
    out: dict[int, np.ndarray] = {}
    batch: list[tuple[int, torch.Tensor]] = []

    def flush() -> None:
        rows = detector(torch.stack([c for _, c in batch]))
        for (i, _), r in zip(batch, rows, strict=True):
            out[i] = r
        if bar is not None:
            bar.update(len(batch))
        batch.clear()

    for item in clips:
        batch.append(item)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return out


def gather_rows(local: dict[int, np.ndarray]) -> tuple[list[int], np.ndarray]:
    """All ranks' ``{index: row}`` merged, as (sorted indices, ``[N, D]`` float64 rows), on every rank."""
    merged: dict[int, np.ndarray] = {}
    for part in gather_objects(local):
        overlap = merged.keys() & part.keys()
        if overlap:
            raise RuntimeError(f"two ranks computed features of the same clips {sorted(overlap)[:5]}")
        merged.update(part)
    if not merged:
        return [], np.zeros((0, 0))
    order = sorted(merged)
    return order, np.stack([merged[i] for i in order]).astype(np.float64)


def cache_key(fields: dict[str, Any]) -> str:
    """A short hash of the JSON of ``fields`` (everything that decides the real features)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


def load_cached(cache_dir: Path, key: str) -> Optional[np.ndarray]:
    """The cached ``[N, D]`` features under ``key``, or None if absent or unreadable."""
    p = cache_dir / f"real_{key}.npz"
    try:
        with np.load(p, allow_pickle=False) as z:
            return np.asarray(z["features"], dtype=np.float64)
    except (OSError, KeyError, ValueError):
        return None


def save_cached(cache_dir: Path, key: str, features: np.ndarray, fields: dict[str, Any]) -> Path:
    """Write the features and the fields they were computed under, through a temporary name."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    p = cache_dir / f"real_{key}.npz"
    tmp = cache_dir / f".real_{key}.{os.getpid()}.npz"
    np.savez(tmp, features=features, fields=np.array(json.dumps(fields, sort_keys=True)))
    tmp.replace(p)
    return p
