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

Trust: each manifest is checked in itself (store, dtype, shapes, finite statistics with std > 0) and
against the first sample of one of its shards (a dtype or shape the shards do not hold), when read. With
``data.verify`` (the default) every shard is checked against the sha256 its manifest records when a
reader opens it, not at startup: hashing a whole cache up front would read every byte of a possibly huge
object-store cache once more on every rank, while a reader reads its shards anyway, so checking them as
they are opened costs only the hashing, spread over all readers. An altered shard is named in a warning,
counted among the loader's errors and skipped (as a broken tar is), before any of its samples is used.

PVDM pairs: a cache encoded with ``--context previous`` stores, with every window after a video's first,
the window before it (``prev.npy``, the same format). Batches from such a cache also hold ``"context"``
``[B, D, t, h, w]`` (normalised like the latent; zeros for a video's first window) and ``"context_valid"``
``[B]`` (1 where a predecessor exists), which ``diffusion.context_mode=previous_clip`` trains on. Storing the
predecessor beside each window keeps every sample self-contained, so shuffling, sharding and exact resume
work unchanged; the price is the stored latent bytes, doubled (README: Latent cache).
"""

from __future__ import annotations

import dataclasses
import io
import json
import posixpath
import random
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vqvdm_scale.config.core import ConfigError, UserError
from vqvdm_scale.data.loader import LoaderState, ResumableLoader
from vqvdm_scale.data.reader import ReaderSpec, SampleDecode, StreamConfig
from vqvdm_scale.data.urls import resolve_shards
from vqvdm_scale.formats.fs import MANIFEST_NAME, join_url, open_url, read_manifest
from vqvdm_scale.formats.labels import check_label
from vqvdm_scale.formats.latent_shards import (
    LATENT_FORMAT,
    REENCODE,
    LatentStats,
    check_fingerprint,
    check_latent_manifest,
    codebook_sha256,
    merge_manifests,
)

__all__ = [
    "LatentDecode",
    "LatentLoader",
    "LatentLoaderConfig",
    "build_latent_loader",
    "read_latent_manifest",
    "shard_checksums",
]


# ----------------------------------------------------------------------------------------------- config


@dataclass
class LatentLoaderConfig(StreamConfig):
    """Where the latent shards are (stage 2's data config), plus the shared stream options."""

    train_latents: str = ""  # latent dir with manifest.json, brace pattern, or comma-separated list
    verify: bool = True  # check each shard against its manifest's sha256 when a reader opens it


# ------------------------------------------------------------------------------------- manifest helpers


def _dir_of(url: str) -> str:
    return posixpath.dirname(url) or "."


def _cache_manifests(spec: str | Sequence[str]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The shard URLs of ``spec`` and the checked manifest of each folder they lie in."""
    urls = resolve_shards(spec)
    manifests: dict[str, dict[str, Any]] = {}
    for d in dict.fromkeys(_dir_of(u) for u in urls):
        m = read_manifest(d)
        if m.get("format") != LATENT_FORMAT:
            raise ValueError(
                f"{d}/manifest.json has format {m.get('format')!r}, not {LATENT_FORMAT!r}: these are not latent "
                "shards (video shards go to the clip loader; encode them with data_prep/encode_latents.py)"
            )
        check_latent_manifest(m, join_url(d, MANIFEST_NAME))
        _check_shards_hold(m, [u for u in urls if _dir_of(u) == d])
        manifests[d] = m
    return urls, manifests


def _check_shards_hold(manifest: dict[str, Any], urls: Sequence[str], tries: int = 3) -> None:
    """UserError unless the first readable sample of the cache's shards has the manifest's dtype and shape.

    Reads one member of one shard (a few KB); unreadable shards are left to the loader, which counts them.
    """
    want = (np.dtype(str(manifest["dtype"])), tuple(int(s) for s in manifest["sample_shape"]))
    for url in urls[:tries]:
        try:
            with open_url(url, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
                member = next(m for m in tar if m.isfile() and m.name.endswith(".npy"))
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception:  # noqa: BLE001 - a broken shard is the loader's to count; try the next
            continue
        if (arr.dtype, tuple(arr.shape)) != want:
            raise UserError(
                f"latent shard {url} holds {arr.dtype} {list(arr.shape)} samples, but its manifest says store "
                f"{manifest['store']!r} as {want[0]} {list(want[1])}: the manifest does not belong to these "
                f"shards; {REENCODE}"
            )
        return


def read_latent_manifest(spec: str | Sequence[str]) -> dict[str, Any]:
    """The latent manifest of a shard spec (dir, brace pattern, list); several caches are merged.

    Shards named by pattern or list are matched to the ``manifest.json`` beside them. Caches from several
    directories must agree on tokenizer, store and shape; their statistics are pooled from the sums.
    Each manifest is checked in itself and against one sample of its shards (UserError naming it).
    """
    _, manifests = _cache_manifests(spec)
    return merge_manifests(list(manifests.values()), list(manifests))


def shard_checksums(urls: Sequence[str], manifests: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Shard URL -> the sha256 its folder's manifest records; UserError for a shard the manifest lacks."""
    recorded = {
        join_url(d, str(e["name"])): str(e["sha256"])
        for d, m in manifests.items()
        for e in m["shards"]
        if isinstance(e, dict) and "name" in e and e.get("sha256")
    }
    out = {}
    for url in urls:
        key = join_url(_dir_of(url), posixpath.basename(url))
        if key not in recorded:
            raise UserError(
                f"latent shard {url} is not listed with a sha256 in {join_url(_dir_of(url), MANIFEST_NAME)}, so it "
                "cannot be checked: give the cache folder instead of its files, or set data.verify=false"
            )
        out[url] = recorded[key]
    return out


# ------------------------------------------------------------------------------------------- the decode


class LatentDecode:
    """The latent loader's :data:`~vqvdm_scale.data.loader.SampleDecode`: npy -> normalised ``[D, t, h, w]``.

    A label that is missing or not one of the cache's classes is a bad sample (LabelError, counted by the reader).
    """

    def __init__(self, manifest: dict[str, Any], codebook: Optional[Tensor]) -> None:
        self.store = str(manifest["store"])
        self.sample_shape = tuple(int(s) for s in manifest["sample_shape"])
        self.dtype = np.dtype(str(manifest["dtype"]))
        self.codebook = None if codebook is None else codebook.detach().to("cpu", torch.float32).contiguous()
        self.stats = LatentStats.from_manifest(manifest)
        self.classes = tuple(str(c) for c in manifest.get("classes") or ())
        self.previous = manifest.get("context") == "previous"

    def __call__(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        key = sample.get("__key__", "?")
        meta = json.loads(sample["json"])
        label = check_label(meta.get("label"), self.classes, str(key))  # outside the classes: a bad sample
        z = self._latent(sample["npy"], str(key))
        out: dict[str, Any] = {
            "latent": self.stats.normalize(z).contiguous(),
            "label": label,
            "fps": float(meta["fps"]),
            "key": str(key),
        }
        if self.previous:
            prev = sample.get("prev.npy")
            ctx = self.stats.normalize(self._latent(prev, f"{key} (prev)")) if prev is not None else None
            out["context"] = ctx.contiguous() if ctx is not None else torch.zeros_like(out["latent"])
            out["context_valid"] = torch.tensor(1.0 if ctx is not None else 0.0)
        return out

    def _latent(self, data: bytes, key: str) -> Tensor:
        """Raw ``[D, t, h, w]`` latents of one stored npy (code indices looked up in the codebook)."""
        arr = np.load(io.BytesIO(data), allow_pickle=False)
        if arr.dtype != self.dtype or tuple(arr.shape) != self.sample_shape:
            raise ValueError(
                f"latent sample {key}: npy is {arr.dtype} {arr.shape}, manifest says {self.dtype} {self.sample_shape}"
            )
        if self.store == "indices":
            assert self.codebook is not None  # checked when the loader was built
            idx = torch.from_numpy(arr.astype(np.int64))
            if int(idx.min()) < 0 or int(idx.max()) >= self.codebook.shape[0]:
                raise ValueError(f"latent sample {key}: code index outside [0, {self.codebook.shape[0]})")
            return F.embedding(idx, self.codebook).permute(3, 0, 1, 2)  # [t, h, w, D] -> [D, t, h, w]
        return torch.from_numpy(arr).float()


class LatentLoader(ResumableLoader):
    """The resumable loader over a latent cache, which also carries the cache's :attr:`manifest`.

    Batches: ``{"latent": [B, D, t, h, w] float32 normalised, "label": [B] int64, "fps": [B] float32,
    "key": list[str]}``; ``stats["errors"]`` counts corrupt samples/shards.
    """

    label = "latents "

    def __init__(
        self,
        cfg: LatentLoaderConfig,
        urls: list[str],
        decode: SampleDecode,
        *,
        manifest: dict[str, Any],
        checksums: dict[str, str],
        **kw: Any,
    ) -> None:
        super().__init__(cfg, urls, decode, **kw)
        self.manifest = manifest
        self.checksums = checksums  # shard URL -> sha256; empty: shards are not checked (data.verify=false)

    def _reader(self) -> ReaderSpec:
        """The readers' description, with the shards' sha256 for them to check."""
        return dataclasses.replace(super()._reader(), checksums=self.checksums)


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
    urls, manifests = _cache_manifests(cfg.train_latents)
    manifest = merge_manifests(list(manifests.values()), list(manifests))
    checksums = shard_checksums(urls, manifests) if cfg.verify else {}
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
    return LatentLoader(
        cfg,
        urls,
        LatentDecode(manifest, codebook),
        manifest=manifest,
        checksums=checksums,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        train=train,
        state=state,
    )
