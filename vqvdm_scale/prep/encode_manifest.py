"""The end of an encode: check every latent shard is whole and merge the sidecars into manifest.json.

A plain run's rank 0 writes the manifest after a barrier; in a job array (``shards=start:stop`` per task)
the task that finds every shard complete writes it, so the array needs no final job.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from vqvdm_scale.config import to_dict
from vqvdm_scale.config.text import plural, redact
from vqvdm_scale.formats.latent_shards import codebook_sha256, latent_manifest
from vqvdm_scale.formats.shard_io import MANIFEST_NAME, join_url, write_json
from vqvdm_scale.models.tokenizer.vqgan import VQTokenizer
from vqvdm_scale.prep.runner import finished


def write_manifest(
    cfg: Any,
    tasks: Sequence[Any],
    sidecars: dict[int, dict[str, Any]],
    fs: Any,
    root: str,
    model: VQTokenizer,
    fingerprint: str,
    classes: list[str],
    world: int,
) -> dict[str, Any]:
    """Rank 0: check every shard is whole, merge the sidecars and write manifest.json."""
    ordered = []
    for task in tasks:
        side = sidecars.get(task.index) or finished(fs, root, task)
        if side is None:
            raise RuntimeError(
                f"latent shard {task.name} (rank {task.index % world}) is missing or does not match its "
                "sidecar after every rank finished; re-run the same command to redo it"
            )
        ordered.append(side)
    manifest = latent_manifest(
        ordered,
        list(model.cfg.latent_shape(cfg.frames, cfg.resolution, cfg.resolution)),
        model.cfg.codebook_size,
        codebook_sha256(model.quantizer.codes()),
        store=cfg.store,
        extra={
            "fingerprint": fingerprint,
            "tokenizer_path": cfg.tokenizer,
            "clip": {
                "frames": cfg.frames,
                "stride": cfg.stride,
                **({"strides": cfg.all_strides} if cfg.strides else {}),
                "resolution": cfg.resolution,
                "windows": cfg.windows,
            },
            "context": cfg.context,
            "classes": classes,
            "source": cfg.input,
            # which process encoded which shards is not part of the cache: an array's manifest equals a
            # single process's
            "params": {k: v for k, v in to_dict(cfg).items() if k != "shards"},
        },
    )
    write_json(fs, root, MANIFEST_NAME, manifest)
    reasons = ", ".join(f"{k}={v}" for k, v in manifest["counts"]["skip_counts"].items()) or "none"
    print(
        f"encode_latents: {plural(manifest['num_samples'], 'latent sample')} ({cfg.store}, {manifest['dtype']} "
        f"{manifest['sample_shape']}) of {plural(manifest['counts']['videos'], 'video')} in "
        f"{plural(len(manifest['shards']), 'shard')} at {redact(cfg.output)}; skipped {manifest['counts']['skipped']} "
        f"({reasons})",
        flush=True,
    )
    return manifest


def finish_range(
    cfg: Any,
    tasks: Sequence[Any],
    sidecars: dict[int, dict[str, Any]],
    fs: Any,
    root: str,
    model: VQTokenizer,
    fingerprint: str,
    classes: list[str],
    rank: int,
) -> dict[str, Any]:
    """One array task's end: the task that finds every shard complete writes the manifest."""
    if rank != 0:
        return {}
    missing = [t.name for t in tasks if t.index not in sidecars and finished(fs, root, t) is None]
    if missing:
        print(
            f"encode_latents: shards {cfg.shards} done; {len(tasks) - len(missing)} of {len(tasks)} input shards "
            "complete; the task that completes the last one writes manifest.json",
            flush=True,
        )
        return {}
    try:
        return write_manifest(cfg, tasks, sidecars, fs, root, model, fingerprint, classes, 1)
    except FileNotFoundError:  # another task finishing at the same moment renamed the same manifest
        with fs.open(join_url(root, MANIFEST_NAME), "rb") as f:
            return dict(json.loads(f.read()))
