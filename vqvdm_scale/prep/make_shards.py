"""Raw videos -> WebDataset tar shards (local / s3:// / gs:// / memory:// via fsspec), resumable and reproducible.

Plan: the layout's ordered video list is cut into fixed groups (shard ``i`` = videos ``[i*S, (i+1)*S)``), so a
shard's content depends only on the input list and the parameters, never on the number of workers. Each
shard is written by one worker to ``.shard-XXXXXX.tar.tmp``, its sidecar ``shard-XXXXXX.json`` (count,
sha256, skipped videos, the sources and a hash of the parameters) is written, and only then is the tar
renamed to ``shard-XXXXXX.tar``: a shard is visible under its final name only once it is whole. Tar members
carry fixed mtime/uid/gid/uname and the H.264 encode is reproducible, so a killed run that is re-run yields
byte-identical shards to an uninterrupted one. A re-run skips every shard whose tar exists and whose sha256
and plan match its sidecar, and redoes the rest.

Bad inputs never stop the job: each video is skipped with a counted reason (``missing``, ``zero_byte``,
``not_a_video``, ``decode_error``, ``too_short``, ``too_large``, ``bad_label``, ``error``, ``worker_died``: a
worker process died on it twice, e.g. killed by the out-of-memory killer; see
:mod:`~vqvdm_scale.prep.worker_pool`). A decode error part-way through a video skips it (the frames before
the error may already be concealment garbage) unless ``keep_partial`` is set, in which case a prefix of at
least ``min_frames`` frames is kept and listed under ``partial``.

Every planned shard file is written, even one whose videos were all skipped (an empty tar), so shard
numbering is stable across re-runs; ``manifest.json`` lists only the non-empty shards. When every input was
skipped, the job fails instead (:class:`~vqvdm_scale.config.UserError`): the empty shards and their sidecars
are removed and ``manifest.json`` is left as the skip report, listing each input with its reason.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import fsspec
import numpy as np
from fsspec.core import url_to_fs

from vqvdm_scale.config import ConfigError, UserError, to_dict
from vqvdm_scale.config.text import plural, redact
from vqvdm_scale.data.video_io import (
    DEFAULT_CRF,
    DEFAULT_PRESET,
    DecodedVideo,
    VideoReadError,
    decode_frames_dir,
    decode_video,
    encode_mp4,
)
from vqvdm_scale.formats.faults import storage_errors
from vqvdm_scale.formats.labels import LabelError, check_label
from vqvdm_scale.formats.object_store import ObjectStoreConfig, apply_object_store
from vqvdm_scale.formats.shard_io import MANIFEST_NAME, join_url, publish_shard, shard_writer, write_json
from vqvdm_scale.formats.video_shards import VIDEO_FORMAT, sample_key, shard_name
from vqvdm_scale.prep.layouts import VIDEO_EXTENSIONS, VideoItem, list_items
from vqvdm_scale.prep.runner import (
    count_reasons,
    plan_hash,
    progress_bar,
    remove_strays,
    run_jobs,
    split_finished,
)
from vqvdm_scale.prep.worker_pool import Watch

__all__ = [
    "ShardsConfig",
    "SkipVideo",
    "class_summary",
    "main",
    "make_sample",
]

_LISTED_CLASSES = 20  # the summary names this many classes, then "... and N more"

# Parameters that change shard bytes; a shard written under different values is redone on a re-run.
_PLAN_FIELDS = (
    "layout",
    "resolution",
    "shard_size",
    "storage",
    "min_frames",
    "max_frames",
    "keep_partial",
    "frames_fps",
    "crf",
    "preset",
)


@dataclass
class ShardsConfig:
    """Options of make_shards (CLI: data_prep/make_shards.py)."""

    input: str = ""  # dataset folder, or the .csv/.jsonl file for layout=manifest
    output: str = ""  # output folder: local path or fsspec URL (s3://, gs://, memory://)
    layout: Literal["folder", "ucf101", "sky", "manifest"] = "folder"
    split_file: Optional[str] = None  # ucf101: trainlist0N.txt / testlist0N.txt
    resolution: int = 128  # short side of the stored frames (even: yuv420p)
    shard_size: int = 64  # videos per shard
    workers: int = 0  # processes; 0 or 1 = inline
    storage: Literal["mp4", "npy"] = (
        "mp4"  # mp4: H.264 re-encode (small); npy: raw uint8 frames (fast to read)
    )
    min_frames: int = 16  # videos shorter than one clip are skipped
    max_frames: Optional[int] = None  # keep at most this many leading frames (bounds memory on long videos)
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS
    keep_partial: bool = False  # keep the decoded prefix of a video that fails part-way
    frames_fps: float = 25.0  # frame rate given to image-folder clips (sky layout), which carry none
    crf: int = DEFAULT_CRF  # x264 constant rate factor (lower = better quality, bigger)
    preset: str = DEFAULT_PRESET  # x264 preset
    progress: bool = True  # tqdm progress bar
    synthetic: bool = False  # entry script: first write the built-in synthetic dataset into ``input``
    synthetic_classes: int = 4  # classes of that synthetic dataset
    object_store: ObjectStoreConfig = field(default_factory=ObjectStoreConfig)  # s3:// / gs:// options

    def __post_init__(self) -> None:
        if self.synthetic_classes < 1:
            raise ConfigError(f"synthetic_classes: must be >= 1, got {self.synthetic_classes}")
        if self.resolution < 2 or self.resolution % 2:
            raise ConfigError(f"resolution: must be an even number >= 2 (yuv420p), got {self.resolution}")
        if self.shard_size < 1:
            raise ConfigError(f"shard_size: must be >= 1, got {self.shard_size}")
        if self.workers < 0:
            raise ConfigError(f"workers: must be >= 0, got {self.workers}")
        if self.min_frames < 1:
            raise ConfigError(f"min_frames: must be >= 1, got {self.min_frames}")
        if self.max_frames is not None and self.max_frames < self.min_frames:
            raise ConfigError(f"max_frames: {self.max_frames} is below min_frames={self.min_frames}")
        if not 0 <= self.crf <= 51:
            raise ConfigError(f"crf: x264 accepts 0..51, got {self.crf}")
        if self.frames_fps <= 0:
            raise ConfigError(f"frames_fps: must be > 0, got {self.frames_fps}")
        if self.layout == "ucf101" or self.split_file is None:
            return
        raise ConfigError(f"split_file: only the ucf101 layout reads a split file (layout={self.layout!r})")


class SkipVideo(Exception):
    """A video that is not written to a shard, with the reason counted in the manifest."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class _ShardTask:
    index: int
    first: int  # global index of the shard's first video
    items: list[VideoItem]
    cfg: ShardsConfig
    plan: str
    classes: list[str]

    @property
    def name(self) -> str:
        """The shard's file name."""
        return shard_name(self.index)

    @property
    def sidecar(self) -> str:
        """Its sidecar's file name."""
        return f"shard-{self.index:06d}.json"


def _load(item: VideoItem, cfg: ShardsConfig) -> DecodedVideo:
    if item.kind == "frames_dir":
        return decode_frames_dir(item.source, cfg.resolution, cfg.max_frames, cfg.frames_fps)
    return decode_video(item.source, cfg.resolution, cfg.max_frames)


def make_sample(
    index: int, item: VideoItem, cfg: ShardsConfig, classes: Sequence[str] = ()
) -> tuple[dict[str, Any], str | None]:
    """Decode, check and encode one video into a shard sample; returns (sample, partial-decode note or None).

    Raises SkipVideo with the reason when the video cannot be used (``bad_label``: its label is not one of
    ``classes``, the class list the manifest records).
    """
    try:
        check_label(item.label, classes, item.rel)
    except LabelError as e:
        raise SkipVideo("bad_label", str(e)) from e
    try:
        video = _load(item, cfg)
    except VideoReadError as e:
        raise SkipVideo(e.reason, str(e)) from e
    except MemoryError as e:
        raise SkipVideo("too_large", f"out of memory decoding {item.rel}; set max_frames") from e
    if video.error is not None and (not cfg.keep_partial or video.num_frames < cfg.min_frames):
        raise SkipVideo("decode_error", video.error)
    if video.num_frames < cfg.min_frames:
        raise SkipVideo("too_short", f"{plural(video.num_frames, 'frame')} < min_frames={cfg.min_frames}")
    meta = {
        "label": item.label,
        "class_name": item.class_name,
        "fps": float(video.fps),
        "num_frames": video.num_frames,
        "source": item.rel,
        "orig_size": list(video.orig_size),
        "size": [int(video.frames.shape[1]), int(video.frames.shape[2])],
    }
    sample: dict[str, Any] = {"__key__": sample_key(index, item.rel)}
    if cfg.storage == "mp4":
        sample["mp4"] = encode_mp4(video.frames, video.fps, crf=cfg.crf, preset=cfg.preset)
    else:
        buffer = io.BytesIO()
        np.save(buffer, video.frames, allow_pickle=False)
        sample["npy"] = buffer.getvalue()
    sample["json"] = json.dumps(meta, sort_keys=True).encode()
    return sample, video.error


def _write_shard(task: _ShardTask, watch: Watch) -> dict[str, Any]:
    """Write one shard (tmp tar -> sidecar -> rename); runs in a worker process. Returns the sidecar.

    ``watch`` is told which video the worker is on, and names the videos a dead worker was on twice.
    """
    cfg = task.cfg
    fs, root = url_to_fs(cfg.output)
    name = task.name
    skipped: list[dict[str, str]] = []
    partial: list[dict[str, Any]] = []
    count = 0
    with shard_writer(fs, root, name) as (writer, out):
        for offset, item in enumerate(task.items):
            watch.enter(offset)
            died = watch.skipped(offset)
            if died is not None:
                skipped.append({"source": item.rel, "reason": "worker_died", "detail": died})
                continue
            try:
                sample, note = make_sample(task.first + offset, item, cfg, task.classes)
            except SkipVideo as e:
                skipped.append({"source": item.rel, "reason": e.reason, "detail": e.detail})
                continue
            except Exception as e:  # noqa: BLE001 - one bad input must never stop the job
                skipped.append({"source": item.rel, "reason": "error", "detail": f"{type(e).__name__}: {e}"})
                continue
            writer.write(sample)
            count += 1
            if note is not None:
                partial.append(
                    {
                        "source": item.rel,
                        "num_frames": json.loads(sample["json"])["num_frames"],
                        "detail": note,
                    }
                )
    sidecar = {
        "name": name,
        "count": count,
        "sha256": out.sha.hexdigest(),
        "bytes": out.size,
        "skipped": skipped,
        "partial": partial,
        "sources": [it.rel for it in task.items],
        "plan": task.plan,
    }
    publish_shard(fs, root, name, task.sidecar, sidecar)
    return sidecar


def _is_memory(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "memory" in protocol


def _remove_shards(fs: fsspec.AbstractFileSystem, root: str, tasks: list[_ShardTask]) -> None:
    """Delete the (empty) shards of ``tasks`` and their sidecars: a job that kept no video leaves no shard."""
    for task in tasks:
        for name in (task.name, task.sidecar):
            path = join_url(root, name)
            if fs.exists(path):
                fs.rm(path)


def class_summary(classes: Sequence[str], counts: Counter[str], flat_folder: bool) -> list[str]:
    """The summary's class lines: how many classes, then ``label name: videos`` (20 at most, then the rest).

    ``counts`` are the videos written per class name. ``flat_folder``: every video sat directly in the
    input folder, so the folder layout made one class of them, named after the folder.
    """
    if flat_folder and len(classes) == 1:
        return [
            f"make_shards: one class: videos are in a flat folder; put them in <class>/ subfolders for "
            f"class-conditional training (class 0 {classes[0]!r}: {plural(counts[classes[0]], 'video')})"
        ]
    width = max(len(c) for c in classes[:_LISTED_CLASSES]) if classes else 0
    lines = [f"make_shards: {plural(len(classes), 'class', 'classes')} (label, name, videos written):"]
    lines += [f"  {i:>3} {c:<{width}} {counts[c]}" for i, c in enumerate(classes[:_LISTED_CLASSES])]
    if len(classes) > _LISTED_CLASSES:
        rest = classes[_LISTED_CLASSES:]
        lines.append(f"  ... and {len(rest)} more ({sum(counts[c] for c in rest)} videos)")
    return lines


def main(cfg: ShardsConfig) -> dict[str, Any]:
    """Shard the videos of ``cfg.input`` into ``cfg.output``; returns the manifest (also written as manifest.json)."""
    start = time.time()
    if not cfg.input:
        raise ConfigError("input: give the dataset folder (or the manifest file for layout=manifest)")
    if not cfg.output:
        raise ConfigError("output: give the output folder or URL (local path, s3://, gs://, memory://)")
    listing = list_items(cfg.layout, cfg.input, cfg.split_file, cfg.extensions)
    if not listing.items:
        raise UserError(
            f"no videos found in {cfg.input!r} for layout {cfg.layout!r} (extensions {', '.join(cfg.extensions)})"
        )
    apply_object_store(cfg.object_store)
    with storage_errors(cfg.output):  # an unreachable store is one line, before any video is read
        fs, root = url_to_fs(cfg.output)
        fs.makedirs(root, exist_ok=True)
    plan = plan_hash({name: getattr(cfg, name) for name in _PLAN_FIELDS})
    size = cfg.shard_size
    tasks = [
        _ShardTask(i, i * size, listing.items[i * size : (i + 1) * size], cfg, plan, listing.classes)
        for i in range((len(listing.items) + size - 1) // size)
    ]
    sidecars, todo = split_finished(
        fs, root, tasks, lambda task, side: side.get("sources") == [it.rel for it in task.items]
    )
    workers = cfg.workers
    if workers > 1 and len(todo) > 1 and _is_memory(fs):
        print("make_shards: memory:// lives in one process; writing inline instead of with worker processes")
        workers = 0
    bar = progress_bar(len(listing.items), "make_shards", cfg.progress)
    bar.skip(sum(len(tasks[i].items) for i in sidecars))  # done by an earlier run
    for task, sidecar in run_jobs(todo, _write_shard, workers):
        sidecars[task.index] = sidecar
        bar.update(len(task.items))
    bar.close()
    remove_strays(fs, root, tasks)  # a killed run's temporaries (the re-run above redid their shards)

    ordered = [sidecars[t.index] for t in tasks]
    skipped = [
        {"source": s["source"], "reason": s["reason"], "detail": s["detail"]}
        for side in ordered
        for s in side["skipped"]
    ]
    manifest: dict[str, Any] = {
        "format": VIDEO_FORMAT,
        "num_samples": sum(s["count"] for s in ordered),
        "shards": [
            {"name": s["name"], "count": s["count"], "sha256": s["sha256"]} for s in ordered if s["count"]
        ],
        "classes": listing.classes,
        "params": to_dict(cfg),
        "skipped": skipped,
        "skip_counts": count_reasons(skipped),
        "partial": [p for side in ordered for p in side["partial"]],
    }
    if manifest["num_samples"] == 0:
        _remove_shards(fs, root, tasks)
    write_json(fs, root, MANIFEST_NAME, manifest)
    reasons = ", ".join(f"{k}={v}" for k, v in manifest["skip_counts"].items()) or "none"
    if manifest["num_samples"] == 0:
        which = f"all {len(skipped)} inputs were" if len(skipped) != 1 else "the only input was"
        raise UserError(
            f"make_shards: {which} skipped ({reasons}), so no shard was written; the reason for each input "
            f"is in {redact(join_url(cfg.output, MANIFEST_NAME))}"
        )
    elapsed, read = time.time() - start, sum(len(task.items) for task in todo)  # read by this run
    print(
        f"make_shards: wrote {plural(manifest['num_samples'], 'video')} in {plural(len(manifest['shards']), 'shard')} "
        f"to {redact(cfg.output)} ({len(tasks) - len(todo)} of {plural(len(tasks), 'shard')} already complete); skipped "
        f"{len(skipped)} ({reasons}); {elapsed:.1f}s, {read / max(elapsed, 1e-9):.1f} videos/s",
        flush=True,
    )
    dropped = {s["source"] for s in skipped}
    counts = Counter(it.class_name for it in listing.items if it.rel not in dropped)
    flat = cfg.layout == "folder" and all("/" not in it.rel for it in listing.items)
    print("\n".join(class_summary(listing.classes, counts, flat)), flush=True)
    return manifest
