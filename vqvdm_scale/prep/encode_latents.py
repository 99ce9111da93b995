"""Video shards -> latent shards: every clip window encoded once by an exported tokenizer (stage 2 reads these).

Plan: input shard ``i`` (in resolved order) is encoded by rank ``i % world_size`` into its own latent shard,
named after it (``shard-000003.tar`` -> ``latents-000003.tar``; by input index when basenames collide), so
ranks never coordinate until rank 0 merges the per-shard sidecars into ``manifest.json`` after a barrier.

Per video (decoded, resized and centre-cropped with the clip loader's eval-mode code): ``windows="all"``
takes every non-overlapping window (:func:`~vqvdm_scale.data.clips.eval_windows`), ``windows="N"``
takes N evenly spaced windows (first and last included; N=1 is the centred eval window). Each window is
encoded by the tokenizer's encoder + quantizer (eval mode, no EMA update) and written as one tar sample:

* ``__key__`` = ``{source key}_w{window:03d}``;
* ``npy`` = code indices int16 ``[t, h, w]`` (int32 when K > 32767) with ``store="indices"``, or the
  quantised latent z_q fp16 ``[D, t, h, w]`` with ``store="latents"`` (z_q, not the pre-quantisation z_e:
  z_q is what the decoder reads and what stage 2 must learn to produce); always ``allow_pickle=False``;
* ``json`` = label, class_name, fps (source fps / stride), window, start frame, source key.

The manifest's per-channel mean/std are over the dequantised latents as the loader sees them
(``codes[indices]``, or the fp16 values for stored latents), pooled from per-shard float64 sums.

Atomic, resumable and reproducible as make_shards: a shard is written to ``.NAME.tmp``, its sidecar
written, then renamed; tar members carry fixed metadata; windows are encoded in fixed batches of
``batch_size`` in stream order within each shard (a batch never spans shards), so a shard's bytes depend
only on its input, the tokenizer and the plan - not on the rank count, worker count or an interruption.
A re-run skips every shard whose sidecar plan and sha256 match the file. CPU kernels may round
differently with another thread count, so keep ``threads`` the same between a run and its re-run.

A corrupt member (undecodable video, bad json), a video whose label is missing or outside the input's
class list, or a short video is skipped with a counted reason (``corrupt``, ``bad_label``, ``too_short``;
``worker_died`` when a decode worker died on it twice). The manifest's ``label_counts`` counts the windows
of each label, so stage 2 can check them against the classes before it trains.
"""

from __future__ import annotations

import functools
import json
import posixpath
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Optional

import torch
import torch.distributed as dist
from fsspec.core import url_to_fs

from vqvdm_scale.config import ConfigError, UserError
from vqvdm_scale.config.text import plural, redact
from vqvdm_scale.data.pipeline import shard_sample_pipeline
from vqvdm_scale.data.urls import resolve_shards
from vqvdm_scale.engine.cluster import export_torch_env
from vqvdm_scale.engine.env import (
    barrier,
    describe_rank,
    get_rank,
    get_world_size,
    init_distributed,
    is_dist,
    pick_device,
)
from vqvdm_scale.formats.faults import storage_errors
from vqvdm_scale.formats.labels import LabelError, check_label
from vqvdm_scale.formats.latent_shards import LATENT_FORMAT
from vqvdm_scale.formats.object_store import apply_object_store
from vqvdm_scale.formats.shard_io import MANIFEST_NAME, join_url, member_key, publish_shard, shard_writer
from vqvdm_scale.formats.tokenizer_export import clip_size, load_tokenizer
from vqvdm_scale.formats.video_shards import shard_entries
from vqvdm_scale.models.tokenizer.vqgan import VQTokenizer
from vqvdm_scale.monitor.progress import JobProgress
from vqvdm_scale.prep.encode_config import EncodeConfig
from vqvdm_scale.prep.encode_manifest import finish_range, write_manifest
from vqvdm_scale.prep.encode_windows import DecodePool, prepare_job
from vqvdm_scale.prep.latent_writer import ErrorLog, ShardEncoder, chunks
from vqvdm_scale.prep.runner import (
    count_reasons,
    plan_hash,
    progress_bar,
    remove_strays,
    run_jobs,
    split_finished,
)
from vqvdm_scale.prep.worker_pool import Watch

__all__ = ["EncodeConfig", "main", "output_names"]

# Generous: a rank that finishes its shards waits at the barrier for the slowest rank.
_BARRIER_TIMEOUT_S = 7 * 24 * 3600.0


# ---------------------------------------------------------------------------------------- shard plans


def output_names(urls: Sequence[str]) -> list[str]:
    """Latent shard names for input shards: ``shard-000003.tar`` -> ``latents-000003.tar`` (by index if ambiguous)."""
    stems = [posixpath.basename(u.rstrip("/")).removesuffix(".tar") for u in urls]
    names = [f"latents-{s.removeprefix('shard-')}.tar" for s in stems]
    if len(set(names)) < len(names) or MANIFEST_NAME in names:
        names = [f"latents-{i:06d}.tar" for i in range(len(urls))]
    return names


@dataclass
class _Task:
    index: int
    url: str
    name: str
    plan: str
    source_sha256: Optional[str]
    source_count: Optional[int]

    @property
    def sidecar(self) -> str:
        """Its sidecar's file name."""
        return self.name.removesuffix(".tar") + ".json"


def _plan_hash(cfg: EncodeConfig, fingerprint: str, source: str) -> str:
    # everything that changes a latent shard's bytes; the input is named by its sha256 when its manifest has it
    plan = {
        "format": LATENT_FORMAT,
        "fingerprint": fingerprint,
        "frames": cfg.frames,
        "stride": cfg.stride,
        **({"strides": cfg.all_strides} if cfg.strides else {}),  # one stride: the plan of older caches
        "resolution": cfg.resolution,
        "windows": cfg.windows,
        "store": cfg.store,
        "context": cfg.context,
        "batch_size": cfg.batch_size,
        "source": source,
    }
    return plan_hash(plan)


def _encode_shard(
    task: _Task,
    watch: Watch,
    *,
    model: VQTokenizer,
    cfg: EncodeConfig,
    fs: Any,
    root: str,
    pool: Optional[DecodePool],
    bar: JobProgress,
    rank: int,
    classes: list[str],
) -> dict[str, Any]:
    """Write one latent shard (tmp tar -> sidecar -> rename) from one input shard; returns the sidecar.

    Runs inline (``watch`` skips nothing): the parallel part is the decode pool, which retries a video whose
    decode worker died once, then skips it. A video whose label is missing or not one of ``classes`` (the
    input manifest's) is skipped as ``bad_label``.
    """
    errors = ErrorLog(task.url)
    skipped: list[dict[str, str]] = []
    labels: Counter[int] = Counter()  # windows per label, for the manifest's label_counts
    videos = 0
    samples = shard_sample_pipeline([task.url], rank=0, world_size=1, shuffle_shards=False, handler=errors)
    strides = tuple(cfg.all_strides)
    jobs = ((s, cfg.frames, strides, cfg.resolution, cfg.num_windows) for s in samples)
    with shard_writer(fs, root, task.name) as (writer, out):
        enc = ShardEncoder(model, writer, cfg.batch_size, cfg.store, previous=cfg.context == "previous")
        # decode a bounded chunk of videos at a time (in order), so memory stays flat on big shards
        for chunk in chunks(jobs, max(1, 2 * cfg.workers)):
            results = pool.map(chunk) if pool is not None else [prepare_job(j) for j in chunk]
            for job, (status, payload) in zip(chunk, results, strict=True):
                key = str(job[0].get("__key__"))
                bar.update(1)
                if status != "ok":  # "corrupt", or "worker_died" (a decode worker died on it twice)
                    skipped.append({"key": key, "reason": status, "detail": payload})
                    continue
                meta, fps, clips = payload
                try:
                    label = check_label(meta.get("label"), classes, key)
                except LabelError as e:
                    skipped.append({"key": key, "reason": "bad_label", "detail": str(e)})
                    continue
                if not clips:
                    skipped.append(
                        {"key": key, "reason": "too_short", "detail": "fewer frames than one clip"}
                    )
                    continue
                videos += 1
                labels[label] += len(clips)
                for stride, window, start, clip in clips:
                    info = {
                        "label": label,
                        "class_name": meta.get("class_name"),
                        "fps": fps / stride,  # the clip's own frame rate: what the fps input means
                        "stride": stride,
                        "window": window,
                        "start": start,
                        "source_key": key,
                    }
                    suffix = f"_s{stride}" if len(strides) > 1 else ""  # one stride: the keys as before
                    enc.add(f"{member_key(key)}{suffix}_w{window:03d}", clip, info)  # no "../" from a source
            del results
        enc.flush()
    skipped += [{"key": "", "reason": "tar_error", "detail": m} for m in errors.messages]
    sidecar = {
        "name": task.name,
        "source": task.url,
        "count": enc.count,
        "sha256": out.sha.hexdigest(),
        "bytes": out.size,
        "videos": videos,
        "skipped": skipped,
        "skip_counts": count_reasons(skipped),
        "labels": {str(k): v for k, v in sorted(labels.items())},
        "stats": {"positions": enc.positions, "sum": enc.sum.tolist(), "sumsq": enc.sumsq.tolist()},
        "plan": task.plan,
        "rank": rank,  # who wrote it (informational; not part of the plan)
    }
    publish_shard(fs, root, task.name, task.sidecar, sidecar)
    return sidecar


# ----------------------------------------------------------------------------------------------- main


def _check_inputs(cfg: EncodeConfig) -> EncodeConfig:
    if not cfg.tokenizer:
        raise ConfigError(
            "tokenizer: give the exported tokenizer file (<run.dir>/tokenizer.safetensors of launchers/train_vqgan.py)"
        )
    if not cfg.input:
        raise ConfigError(
            "input: give the video shards (directory with manifest.json, brace pattern or list)"
        )
    if not cfg.output:
        raise ConfigError("output: give the latent shard folder (local path or fsspec URL)")
    # null frames / resolution: the tokenizer's recorded clip size; another one is refused
    frames, resolution = clip_size(cfg.tokenizer, cfg.frames, cfg.resolution)
    return replace(cfg, frames=frames, resolution=resolution)


def main(cfg: EncodeConfig) -> dict[str, Any]:
    """Encode ``cfg.input`` into latent shards under ``cfg.output``; returns the manifest (every rank)."""
    cfg = _check_inputs(cfg)
    apply_object_store(cfg.object_store)
    resolve_shards(cfg.input)  # an unreachable store or missing bucket: one line, before the model loads
    with storage_errors(cfg.output):
        fs, root = url_to_fs(cfg.output)
        fs.exists(root)
    created = False
    # torchrun/deepspeed export WORLD_SIZE; under srun it comes from Slurm's variables
    if not is_dist() and export_torch_env().world_size > 1:
        init_distributed("gloo", timeout_s=_BARRIER_TIMEOUT_S)  # only barriers: gloo on CPU and GPU alike
        created = True
    try:
        return _run(cfg, get_rank(), get_world_size())
    finally:
        if created:
            dist.destroy_process_group()


def _run(cfg: EncodeConfig, rank: int, world: int) -> dict[str, Any]:
    start = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    if world > 1:
        print(describe_rank(device), flush=True)
    if device.type == "cuda":  # re-runs must reproduce bytes: no autotuned / nondeterministic conv kernels
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    model, tcfg, fingerprint = load_tokenizer(cfg.tokenizer, device)
    try:
        tcfg.latent_shape(cfg.frames, cfg.resolution, cfg.resolution)
    except ValueError as e:
        raise UserError(f"{e} (set --frames / --resolution accordingly)") from e
    urls = resolve_shards(cfg.input)
    entries, classes = shard_entries(urls)
    names = output_names(urls)
    tasks = []
    for i, (url, name) in enumerate(zip(urls, names, strict=True)):
        entry = entries.get(url, {})
        sha = entry.get("sha256")
        count = entry.get("count")
        tasks.append(
            _Task(
                i,
                url,
                name,
                _plan_hash(cfg, fingerprint, sha or url),
                sha,
                None if count is None else int(count),
            )
        )
    fs, root = url_to_fs(cfg.output)
    fs.makedirs(root, exist_ok=True)
    if rank == 0 and fs.exists(join_url(root, MANIFEST_NAME)):
        # a manifest only ever describes a finished cache: drop the old one until this run has merged
        fs.rm(join_url(root, MANIFEST_NAME))

    span = cfg.shard_range or (0, len(tasks))
    if span[1] > len(tasks):
        raise UserError(
            f"shards={cfg.shards} reaches past the {plural(len(tasks), 'input shard')} of {cfg.input}"
        )
    mine = [t for t in tasks if span[0] <= t.index < span[1] and t.index % world == rank]
    sidecars, todo = split_finished(fs, root, mine)
    known = [t.source_count for t in todo]
    total = sum(c for c in known if c is not None) if all(c is not None for c in known) else None
    bar = progress_bar(total, f"encode_latents rank {rank}", cfg.progress, position=rank)
    pool: Optional[DecodePool] = None
    if cfg.workers > 1 and todo:
        pool = DecodePool(cfg.workers)
    try:
        write = functools.partial(
            _encode_shard,
            model=model,
            cfg=cfg,
            fs=fs,
            root=root,
            pool=pool,
            bar=bar,
            rank=rank,
            classes=classes,
        )
        for task, sidecar in run_jobs(todo, write):  # inline: the parallel part is the decode pool
            sidecars[task.index] = sidecar
    finally:
        if pool is not None:
            pool.close()
        bar.close()
    remove_strays(fs, root, mine)  # a killed run's temporaries
    written = [sidecars[t.index] for t in todo]
    encoded = sum(s["count"] for s in written)
    elapsed = time.time() - start
    print(
        f"encode_latents rank {rank}/{world}: {plural(encoded, 'window')} of "
        f"{plural(sum(s['videos'] for s in written), 'video')} in {plural(len(todo), 'shard')} "
        f"({len(mine) - len(todo)} of {len(mine)} already complete); skipped "
        f"{sum(len(s['skipped']) for s in written)}; {encoded / max(elapsed, 1e-9):.1f} clips/s, {elapsed:.1f}s",
        flush=True,
    )

    barrier()
    if cfg.shard_range is not None:
        return finish_range(cfg, tasks, sidecars, fs, root, model, fingerprint, classes, rank)
    failure: Optional[BaseException] = None
    if rank == 0:
        try:
            manifest = write_manifest(cfg, tasks, sidecars, fs, root, model, fingerprint, classes, world)
        except Exception as e:  # noqa: BLE001 - re-raised after the barrier, so other ranks do not hang
            failure = e
    barrier()
    if failure is not None:
        raise failure
    if rank != 0:
        try:
            with fs.open(join_url(root, MANIFEST_NAME), "rb") as f:
                manifest = json.loads(f.read())
        except FileNotFoundError as e:
            raise RuntimeError(
                f"rank 0 wrote no {MANIFEST_NAME} in {redact(cfg.output)}; see rank 0's error"
            ) from e
    return manifest
