"""Real clips for FVD, KVD and rFVD: one clip per video from the first N long-enough videos of the shards.

The shards are read in manifest order on every rank; video j (counted over the videos that are long enough)
goes to rank ``j % world``, which alone decodes it. Its start frame is drawn from a generator seeded by
``(seed, j)``, so the clip set is the same for any number of ranks (see :mod:`vqvdm_scale.metrics.protocol`).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from vqvdm_scale.config.core import UserError
from vqvdm_scale.data.clips import crop_clip, decode_frames
from vqvdm_scale.data.pipeline import ErrorCounter, mix_seed, shard_sample_pipeline
from vqvdm_scale.data.urls import resolve_shards
from vqvdm_scale.formats.fs import MANIFEST_NAME, join_url, open_url

__all__ = ["RealClip", "RealSource", "open_real", "real_clips"]


@dataclass
class RealSource:
    """The resolved real shards and what identifies them: the manifests' sha256 and split."""

    urls: list[str]
    manifest_sha256: str
    split: Optional[str]
    split_file: Optional[str]
    classes: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {
            "shards": len(self.urls),
            "manifest_sha256": self.manifest_sha256,
            "split": self.split,
            "split_file": self.split_file,
        }


def open_real(spec: str, split: Optional[str] = None) -> RealSource:
    """Resolve ``--real`` and hash its manifests; ``split`` must agree with the split file they were made from."""
    urls = resolve_shards(spec)
    h = hashlib.sha256()
    split_files: list[str] = []
    classes: list[str] = []
    dirs = list(dict.fromkeys(posixpath.dirname(u) or "." for u in urls))
    for d in dirs:
        try:
            with open_url(join_url(d, MANIFEST_NAME)) as f:
                raw = f.read()
        except FileNotFoundError:
            raw = b""
        h.update(d.encode() + b"\0" + hashlib.sha256(raw).digest())
        if raw:
            manifest = json.loads(raw)
            sf = (manifest.get("params") or {}).get("split_file")
            if sf:
                split_files.append(posixpath.basename(str(sf)))
            classes = classes or [str(c) for c in manifest.get("classes") or []]
    h.update("\n".join(urls).encode())
    split_file = ",".join(split_files) or None
    if split and split_files and not all(split.lower() in s.lower() for s in split_files):
        raise UserError(
            f"--split {split}: the real shards were made from {split_file}, not a {split} split; "
            f"point --real at shards made with the {split} list, or pass the matching --split"
        )
    return RealSource(urls, h.hexdigest(), split, split_file, classes)


@dataclass
class RealClip:
    index: int  # position among the long-enough videos
    clip: torch.Tensor  # uint8 [3, T, S, S]
    label: int


def _meta(sample: dict[str, Any]) -> dict[str, Any]:
    """The sample's json (frame count, label), or {} when it is missing or unreadable."""
    try:
        meta = json.loads(sample["json"])
    except (KeyError, ValueError, TypeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def real_clips(
    urls: Sequence[str],
    *,
    num_videos: int,
    frames: int,
    stride: int,
    resolution: int,
    seed: int,
    rank: int = 0,
    world: int = 1,
    skipped: Optional[Counter[str]] = None,
) -> Iterator[RealClip]:
    """This rank's clips of the first ``num_videos`` videos with at least ``frames * stride`` frames.

    A video whose decode fails or yields fewer frames than its metadata said is counted in ``skipped``
    (by reason) and gives no clip; the others keep their indices.
    """
    skipped = skipped if skipped is not None else Counter()
    errors = ErrorCounter("real shards")
    span = (frames - 1) * stride + 1
    j = 0
    for sample in shard_sample_pipeline(urls, rank=0, world_size=1, shuffle_shards=False, handler=errors):
        if j >= num_videos:
            break
        meta = _meta(sample)
        try:
            n = int(meta.get("num_frames", 0))
        except (ValueError, TypeError):
            n = 0
        if n < frames * stride:  # StyleGAN-V's discard_short_videos
            skipped["too_short"] += 1
            continue
        index, j = j, j + 1
        if index % world != rank:
            continue
        start = random.Random(mix_seed(seed, index)).randint(0, n - span)
        try:
            video, _ = decode_frames(sample, max_frames=start + span)
        except Exception:  # noqa: BLE001 - a corrupt video is counted, not fatal
            skipped["corrupt"] += 1
            continue
        if video.shape[0] < start + span:
            skipped["shorter_than_listed"] += 1
            continue
        idx = start + stride * np.arange(frames)
        clip = crop_clip(video[idx], resolution)  # [3, T, S, S] in [-1, 1]
        u8 = ((clip + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        label = meta.get("label", -1)
        yield RealClip(index, u8, int(label) if isinstance(label, int) else -1)
    skipped["tar_errors"] += errors.count
