"""The latent-shard contract (written by encode_latents, read by the latent loader and sampling).

A latent cache is a folder of tar shards plus ``manifest.json`` (format :data:`LATENT_FORMAT`): the
tokenizer fingerprint, store (code indices or fp16 latents), shapes and dtype, the codebook's sha256,
counts, sha256 per shard, the class list and the windows per label (``label_counts``, checked against the
classes by :func:`~vqvdm_scale.formats.labels.check_label_counts`), and per-channel statistics (count, sums,
sums of squares, mean, std) of the dequantised latents. Raw latents are stored and normalised at load
(EDM2-style) with :class:`LatentStats`, the one place that normalisation is written.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from vqvdm_scale.config.core import UserError
from vqvdm_scale.config.text import redact

LATENT_FORMAT = "vqvdm-latent-shards/1"
STD_FLOOR = 1e-6  # a constant channel (one code used) normalises to 0 instead of dividing by 0

# what several caches read as one must agree on (the classes: a label must name the same class in each)
SAME_KEYS = (
    "fingerprint",
    "classes",
    "store",
    "dtype",
    "latent_shape",
    "sample_shape",
    "codebook_size",
    "codebook_sha256",
    "context",  # a cache with PVDM pairs and one without cannot feed one previous_clip run
)


def stats_from_sums(
    positions: int, sums: Sequence[float], sumsqs: Sequence[float]
) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std) from a count and per-channel sums / sums of squares (population std)."""
    if positions <= 0:
        raise ValueError("no latent positions were encoded: the cache is empty, so it has no statistics")
    mean = [s / positions for s in sums]
    std = [
        max(math.sqrt(max(q / positions - m * m, 0.0)), STD_FLOOR) for q, m in zip(sumsqs, mean, strict=True)
    ]
    return mean, std


def codebook_sha256(codebook: Tensor) -> str:
    """sha256 of a ``[K, D]`` codebook's fp32 bytes (what the cache's indices refer to)."""
    t = codebook.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


@dataclass
class LatentStats:
    """Per-channel mean and std ``[D]`` of a cache's latents: the normalisation stage 2 trains in."""

    mean: Tensor
    std: Tensor

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> LatentStats:
        """The statistics a latent manifest records."""
        stats = manifest.get("stats")
        if not isinstance(stats, dict) or "mean" not in stats or "std" not in stats:
            raise UserError(
                "the latent manifest has no 'stats' with mean/std; re-run data_prep/encode_latents.py"
            )
        return cls(
            torch.tensor(stats["mean"], dtype=torch.float32), torch.tensor(stats["std"], dtype=torch.float32)
        )

    def _view(self, v: Tensor, z: Tensor) -> Tensor:
        # channels sit at dim -4 of both [D, t, h, w] and [B, D, t, h, w]
        return v.to(z.device, z.dtype).view(-1, 1, 1, 1)

    def normalize(self, z: Tensor) -> Tensor:
        """``(z_q - mean) / std`` per channel, for ``[D, t, h, w]`` or ``[B, D, t, h, w]``."""
        # times 1/std, not / std: the two differ in the last bit, and caches were always read this way
        return (z - self._view(self.mean, z)) * self._view(1.0 / self.std, z)

    def denormalize(self, z: Tensor) -> Tensor:
        """``z * std + mean`` per channel: the tokenizer's quantised latent z_q, ready for decoding."""
        return z * self._view(self.std, z) + self._view(self.mean, z)


def merge_manifests(manifests: Sequence[dict[str, Any]], sources: Sequence[str]) -> dict[str, Any]:
    """Several caches read as one: they must agree on :data:`SAME_KEYS`; statistics pool from the sums."""
    first = manifests[0]
    if len(manifests) == 1:
        return first
    for d, m in zip(sources[1:], manifests[1:], strict=True):
        diff = [k for k in SAME_KEYS if m.get(k) != first.get(k)]
        if diff:
            shown = "; ".join(f"{k}: {_short(first.get(k))} and {_short(m.get(k))}" for k in diff)
            raise UserError(
                f"latent caches {redact(sources[0])} and {redact(d)} differ ({shown}), so they cannot be read as "
                "one: encode both with the same tokenizer, options and class list"
            )
    positions = sum(int(m["stats"]["positions"]) for m in manifests)
    sums = [sum(vals) for vals in zip(*(m["stats"]["sum"] for m in manifests), strict=True)]
    sumsqs = [sum(vals) for vals in zip(*(m["stats"]["sumsq"] for m in manifests), strict=True)]
    mean, std = stats_from_sums(positions, sums, sumsqs)
    merged = dict(first)
    merged["stats"] = {"positions": positions, "sum": sums, "sumsq": sumsqs, "mean": mean, "std": std}
    merged["num_samples"] = sum(int(m.get("num_samples", 0)) for m in manifests)
    merged["sources"] = list(sources)
    merged.pop("label_counts", None)
    if all(isinstance(m.get("label_counts"), dict) for m in manifests):
        merged["label_counts"] = _pooled(m["label_counts"] for m in manifests)
    return merged


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _pooled(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Label -> count summed over ``counts``, in label order."""
    total: Counter[str] = Counter()
    for c in counts:
        total.update({str(k): int(v) for k, v in c.items()})
    return dict(sorted(total.items(), key=lambda kv: (len(kv[0]), kv[0])))


def check_fingerprint(
    manifest: dict[str, Any], tokenizer_fingerprint: Optional[str], where: str = ""
) -> None:
    """UserError unless the cache was encoded by the tokenizer with ``tokenizer_fingerprint``."""
    cached = manifest.get("fingerprint")
    if tokenizer_fingerprint is None:
        warnings.warn(
            "no tokenizer fingerprint given: the latent cache is used without checking which tokenizer made it",
            stacklevel=3,
        )
        return
    if cached != tokenizer_fingerprint:
        raise UserError(
            f"latent cache{f' {where}' if where else ''} was encoded with tokenizer fingerprint {str(cached)[:16]}... "
            f"(from {manifest.get('tokenizer_path')!r}) but this run decodes with {tokenizer_fingerprint[:16]}...: "
            "re-run data_prep/encode_latents.py with this tokenizer, or pass the tokenizer the cache was made with"
        )


def latent_manifest(
    sidecars: Sequence[dict[str, Any]],
    latent_shape: list[int],
    codebook_size: int,
    codebook_hash: str,
    store: str,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """A cache's ``manifest.json`` from its shards' sidecars (counts, skip report, pooled statistics).

    ``extra`` carries what the writer records about how the cache was made (tokenizer fingerprint and
    path, clip geometry, classes, source, parameters).
    """
    positions = sum(int(s["stats"]["positions"]) for s in sidecars)
    sums = [sum(v) for v in zip(*(s["stats"]["sum"] for s in sidecars), strict=True)]
    sumsqs = [sum(v) for v in zip(*(s["stats"]["sumsq"] for s in sidecars), strict=True)]
    mean, std = stats_from_sums(positions, sums, sumsqs)
    skipped = [dict(s, shard=side["name"]) for side in sidecars for s in side["skipped"]]
    num_samples = sum(int(s["count"]) for s in sidecars)
    # windows per label; unknown when a shard was written by a version that did not count them
    labels = _pooled(s["labels"] for s in sidecars) if all("labels" in s for s in sidecars) else None
    return {
        **extra,
        "format": LATENT_FORMAT,
        "store": store,
        "dtype": index_dtype(codebook_size) if store == "indices" else "float16",
        "sample_shape": latent_shape[1:] if store == "indices" else latent_shape,
        "latent_shape": latent_shape,
        "codebook_size": codebook_size,
        "codebook_sha256": codebook_hash,
        "stats": {"positions": positions, "sum": sums, "sumsq": sumsqs, "mean": mean, "std": std},
        "num_samples": num_samples,
        "counts": {
            "samples": num_samples,
            "windows": num_samples,
            "videos": sum(int(s["videos"]) for s in sidecars),
            "skipped": len(skipped),
            "skip_counts": dict(sorted(Counter(s["reason"] for s in skipped).items())),
        },
        "skipped": skipped,
        "shards": [
            {"name": s["name"], "count": s["count"], "sha256": s["sha256"], "source": s["source"]}
            for s in sidecars
            if s["count"]
        ],
        **({} if labels is None else {"label_counts": labels}),
    }


REENCODE = "re-run data_prep/encode_latents.py (it rewrites manifest.json from the shards' sidecars)"


def check_latent_manifest(manifest: dict[str, Any], where: str) -> None:
    """UserError naming ``where`` unless the manifest's store, dtype, shapes and statistics agree.

    Catches what an edited or foreign manifest would otherwise turn into NaN losses (a zero std) or into
    every sample being skipped (a dtype the writer never uses for its store).
    """
    store, shape = manifest.get("store"), manifest.get("latent_shape")
    if store not in ("indices", "latents"):
        raise UserError(f"{where}: store is {store!r}, expected 'indices' or 'latents'; {REENCODE}")
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(s, int) and s > 0 for s in shape)):
        raise UserError(
            f"{where}: latent_shape {shape!r} is not four positive sizes [D, t, h, w]; {REENCODE}"
        )
    if store == "indices":
        dtype, sample_shape = index_dtype(int(manifest.get("codebook_size") or 0)), shape[1:]
    else:
        dtype, sample_shape = "float16", shape
    if manifest.get("dtype") != dtype or manifest.get("sample_shape") != sample_shape:
        raise UserError(
            f"{where}: store {store!r} is written as dtype {dtype} {sample_shape}, but the manifest says dtype "
            f"{manifest.get('dtype')!r} {manifest.get('sample_shape')!r}; {REENCODE}"
        )
    stats = manifest.get("stats") if isinstance(manifest.get("stats"), dict) else {}
    for key in ("mean", "std"):
        values = stats.get(key)
        if not isinstance(values, list) or len(values) != shape[0]:
            raise UserError(f"{where}: stats.{key} is not a list of {shape[0]} channel values; {REENCODE}")
        bad = [
            c
            for c, v in enumerate(values)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or (key == "std" and v <= 0)
        ]
        if bad:
            what = "finite and > 0" if key == "std" else "finite"
            raise UserError(
                f"{where}: stats.{key} of channel(s) {bad} is {[values[c] for c in bad]}, must be {what} "
                f"(the loader divides by std); {REENCODE}"
            )


def index_dtype(codebook_size: int) -> str:
    """The numpy dtype code indices are stored in: int16 while K fits, else int32."""
    return "int16" if codebook_size <= 2**15 else "int32"
