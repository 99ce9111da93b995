"""Stage-2 batches from latent shards (written by data_prep/encode_latents.py); no pixel is decoded here.

The pipeline is the clip loader's (:func:`~vqvdm_scale.data.pipeline.shard_sample_pipeline`: seeded
shuffle or resampled shards, explicit rank/worker split, counted-not-raised tar errors, shuffle buffer,
exact resume through :class:`~vqvdm_scale.data.loader.LoaderState`) with a latent decode in place of
the video decode:

    npy (codebook indices int16/int32 [t, h, w]  |  quantised latents fp16 [D, t, h, w])
      -> indices: look up the codebook [K, D] (the tokenizer's ``quantizer.codes()``) -> z_q [D, t, h, w]
      -> (z_q - mean) / std per channel (the manifest's statistics over the whole cache, EDM2-style:
         raw latents are stored, normalisation happens at load)
      -> batch {"latent": [B, D, t, h, w] float32, "label": [B] int64, "fps": [B] float32, "key": list[str]}

Why a codebook tensor and not a ``lookup`` callable: a tensor pickles into spawn/forkserver workers and
can be checked against the cache (the manifest records the sha256 of the codes it was encoded with, so
passing ``quantizer.codebook`` instead of the l2-normalised ``quantizer.codes()`` is caught).

The latent manifest's tokenizer fingerprint must equal the fingerprint of the tokenizer the run decodes
with, else :func:`build_latent_loader` raises. This module imports neither PyAV nor the video decoder.

Not implemented: a ``previous_clip`` context (the previous window of the same video) - it needs a
key-addressed lookup across shards, which a streaming tar pipeline does not give cheaply.
"""

from __future__ import annotations

import io
import json
import posixpath
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vqvdm_scale.config.core import ConfigError
from vqvdm_scale.data.loader import LoaderState, ResumableLoader
from vqvdm_scale.data.reader import StreamConfig
from vqvdm_scale.data.urls import resolve_shards
from vqvdm_scale.formats.fs import read_manifest
from vqvdm_scale.formats.latent_shards import (
    LATENT_FORMAT,
    LatentStats,
    check_fingerprint,
    codebook_sha256,
    merge_manifests,
)

__all__ = [
    "LatentDecode",
    "LatentLoader",
    "LatentLoaderConfig",
    "build_latent_loader",
    "read_latent_manifest",
]


# ----------------------------------------------------------------------------------------------- config


@dataclass
class LatentLoaderConfig(StreamConfig):
    """Where the latent shards are (stage 2's data config), plus the shared stream options."""

    train_latents: str = ""  # latent dir with manifest.json, brace pattern, or comma-separated list


# ------------------------------------------------------------------------------------- manifest helpers


def read_latent_manifest(spec: str | Sequence[str]) -> dict[str, Any]:
    """The latent manifest of a shard spec (dir, brace pattern, list); several caches are merged.

    Shards named by pattern or list are matched to the ``manifest.json`` beside them. Caches from several
    directories must agree on tokenizer, store and shape; their statistics are pooled from the sums.
    """
    urls = resolve_shards(spec)
    dirs = list(dict.fromkeys(posixpath.dirname(u) or "." for u in urls))
    manifests = []
    for d in dirs:
        m = read_manifest(d)
        if m.get("format") != LATENT_FORMAT:
            raise ValueError(
                f"{d}/manifest.json has format {m.get('format')!r}, not {LATENT_FORMAT!r}: these are not latent "
                "shards (video shards go to the clip loader; encode them with data_prep/encode_latents.py)"
            )
        manifests.append(m)
    return merge_manifests(manifests, dirs)


# ------------------------------------------------------------------------------------------- the decode


class LatentDecode:
    """The latent loader's :data:`~vqvdm_scale.data.loader.SampleDecode`: npy -> normalised ``[D, t, h, w]``."""

    def __init__(self, manifest: dict[str, Any], codebook: Optional[Tensor]) -> None:
        self.store = str(manifest["store"])
        self.sample_shape = tuple(int(s) for s in manifest["sample_shape"])
        self.dtype = np.dtype(str(manifest["dtype"]))
        self.codebook = None if codebook is None else codebook.detach().to("cpu", torch.float32).contiguous()
        self.stats = LatentStats.from_manifest(manifest)

    def __call__(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        key = sample.get("__key__", "?")
        arr = np.load(io.BytesIO(sample["npy"]), allow_pickle=False)
        if arr.dtype != self.dtype or tuple(arr.shape) != self.sample_shape:
            raise ValueError(
                f"latent sample {key}: npy is {arr.dtype} {arr.shape}, manifest says {self.dtype} {self.sample_shape}"
            )
        if self.store == "indices":
            assert self.codebook is not None  # checked when the loader was built
            idx = torch.from_numpy(arr.astype(np.int64))
            if int(idx.min()) < 0 or int(idx.max()) >= self.codebook.shape[0]:
                raise ValueError(f"latent sample {key}: code index outside [0, {self.codebook.shape[0]})")
            z = F.embedding(idx, self.codebook).permute(3, 0, 1, 2)  # [t, h, w, D] -> [D, t, h, w]
        else:
            z = torch.from_numpy(arr).float()
        meta = json.loads(sample["json"])
        return {
            "latent": self.stats.normalize(z).contiguous(),
            "label": int(meta["label"]),
            "fps": float(meta["fps"]),
            "key": str(key),
        }


class LatentLoader(ResumableLoader):
    """The resumable loader over a latent cache, which also carries the cache's :attr:`manifest`.

    Batches: ``{"latent": [B, D, t, h, w] float32 normalised, "label": [B] int64, "fps": [B] float32,
    "key": list[str]}``; ``stats["errors"]`` counts corrupt samples/shards.
    """

    manifest: dict[str, Any]
    label = "latents "


def build_latent_loader(
    cfg: LatentLoaderConfig,
    *,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    tokenizer_fingerprint: Optional[str],
    codebook: Optional[Tensor],
    state: Optional[LoaderState] = None,
    train: bool = True,
) -> LatentLoader:
    """The latent loader of one rank over ``cfg.train_latents``; refuses a cache made by another tokenizer.

    ``tokenizer_fingerprint``: the fingerprint of the tokenizer this run decodes with (``load_tokenizer``'s
    third value); ``None`` skips the check with a warning. ``codebook``: ``tokenizer.quantizer.codes()``
    ``[K, D]``, needed when the cache stores code indices (ignored for stored latents).
    ``train=False`` gives one unshuffled pass.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    if not cfg.train_latents:
        raise ConfigError(
            "data.train_latents is not set: give the latent shard directory (with manifest.json)"
        )
    urls = resolve_shards(cfg.train_latents)
    manifest = read_latent_manifest(cfg.train_latents)
    check_fingerprint(manifest, tokenizer_fingerprint, where=cfg.train_latents)
    if manifest["store"] == "indices":
        if codebook is None:
            raise ValueError(
                "this latent cache stores codebook indices: pass codebook=tokenizer.quantizer.codes() "
                "(from load_tokenizer) to build_latent_loader"
            )
        k, d = int(manifest["codebook_size"]), int(manifest["latent_shape"][0])
        if tuple(codebook.shape) != (k, d):
            raise ValueError(f"codebook has shape {tuple(codebook.shape)}, the latent cache needs [{k}, {d}]")
        if codebook_sha256(codebook) != manifest.get("codebook_sha256"):
            raise ValueError(
                "the codebook passed differs from the one the cache was encoded with; pass "
                "tokenizer.quantizer.codes() (l2-normalised when the tokenizer normalises), not the raw buffer"
            )
    decode = LatentDecode(manifest, codebook)
    loader = LatentLoader(
        cfg, urls, decode, batch_size=batch_size, rank=rank, world_size=world_size, train=train, state=state
    )

    loader.manifest = manifest
    return loader
