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
``not_a_video``, ``decode_error``, ``too_short``, ``too_large``, ``error``). A decode error part-way through a
video skips it (the frames before the error may already be concealment garbage) unless ``keep_partial`` is
set, in which case a prefix of at least ``min_frames`` frames is kept and listed under ``partial``.

Every planned shard file is written, even one whose videos were all skipped (an empty tar), so shard
numbering is stable across re-runs; ``manifest.json`` lists only the non-empty shards. When every input was
skipped, the job fails instead (:class:`~vqvdm_scale.config.UserError`): the empty shards and their sidecars
are removed and ``manifest.json`` is left as the skip report, listing each input with its reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal, Optional

import fsspec
import numpy as np
from fsspec.core import url_to_fs
from tqdm import tqdm

from vqvdm_scale.config import ConfigError, UserError, to_dict
from vqvdm_scale.config.text import plural
from vqvdm_scale.data.video_io import (
    DEFAULT_CRF,
    DEFAULT_PRESET,
    DecodedVideo,
    VideoReadError,
    decode_frames_dir,
    decode_video,
    encode_mp4,
)
from vqvdm_scale.formats.shard_io import (  # MANIFEST_NAME, TAR_*: re-exported, this module was their home
    MANIFEST_NAME,
    TAR_MTIME,
    TAR_USER,
    HashingWriter,
    finished_sidecar,
    join_url,
    mp_context,
    publish_shard,
    remove_tmps,
    tar_writer,
    tmp_name,
    write_json,
)
from vqvdm_scale.prep.layouts import VIDEO_EXTENSIONS, VideoItem, list_items

__all__ = [
    "FORMAT",
    "MANIFEST_NAME",
    "TAR_MTIME",
    "TAR_USER",
    "ShardsConfig",
    "SkipVideo",
    "main",
    "make_sample",
    "sample_key",
    "shard_name",
]

FORMAT = "vqvdm-video-shards/1"
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


def shard_name(index: int) -> str:
    """File name of shard ``index``."""
    return f"shard-{index:06d}.tar"


def sample_key(index: int, rel: str) -> str:
    """The sample's ``__key__``: global index + the relative source path with only [A-Za-z0-9_-] kept."""
    return f"{index:08d}_{re.sub(r'[^A-Za-z0-9_-]', '_', rel)}"


def _plan_hash(cfg: ShardsConfig) -> str:
    plan = {name: getattr(cfg, name) for name in _PLAN_FIELDS}
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]


def _sidecar_name(index: int) -> str:
    return f"shard-{index:06d}.json"


def _load(item: VideoItem, cfg: ShardsConfig) -> DecodedVideo:
    if item.kind == "frames_dir":
        return decode_frames_dir(item.source, cfg.resolution, cfg.max_frames, cfg.frames_fps)
    return decode_video(item.source, cfg.resolution, cfg.max_frames)


def make_sample(index: int, item: VideoItem, cfg: ShardsConfig) -> tuple[dict[str, Any], str | None]:
    """Decode, check and encode one video into a shard sample; returns (sample, partial-decode note or None).

    Raises SkipVideo with the reason when the video cannot be used.
    """
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


def _complete_sidecar(fs: fsspec.AbstractFileSystem, root: str, task: _ShardTask) -> dict[str, Any] | None:
    """The sidecar of a finished shard that matches this plan, or None when the shard must be (re)written."""
    sources = [it.rel for it in task.items]
    return finished_sidecar(
        fs,
        root,
        shard_name(task.index),
        _sidecar_name(task.index),
        lambda side: side.get("plan") == task.plan and side.get("sources") == sources,
    )


def _write_shard(task: _ShardTask) -> dict[str, Any]:
    """Write one shard (tmp tar -> sidecar -> rename); runs in a worker process. Returns the sidecar."""
    cfg = task.cfg
    fs, root = url_to_fs(cfg.output)
    name = shard_name(task.index)
    tmp = join_url(root, tmp_name(name))
    skipped: list[dict[str, str]] = []
    partial: list[dict[str, Any]] = []
    count = 0
    with fs.open(tmp, "wb") as raw:
        out = HashingWriter(raw)
        writer = tar_writer(out)
        for offset, item in enumerate(task.items):
            try:
                sample, note = make_sample(task.first + offset, item, cfg)
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
        writer.close()
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
    publish_shard(fs, root, name, _sidecar_name(task.index), sidecar)
    return sidecar


def _is_memory(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "memory" in protocol


def _remove_shards(fs: fsspec.AbstractFileSystem, root: str, tasks: list[_ShardTask]) -> None:
    """Delete the (empty) shards of ``tasks`` and their sidecars: a job that kept no video leaves no shard."""
    for task in tasks:
        for name in (shard_name(task.index), _sidecar_name(task.index)):
            path = join_url(root, name)
            if fs.exists(path):
                fs.rm(path)


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
    fs, root = url_to_fs(cfg.output)
    fs.makedirs(root, exist_ok=True)
    plan = _plan_hash(cfg)
    size = cfg.shard_size
    tasks = [
        _ShardTask(i, i * size, listing.items[i * size : (i + 1) * size], cfg, plan)
        for i in range((len(listing.items) + size - 1) // size)
    ]
    sidecars: dict[int, dict[str, Any]] = {}
    todo: list[_ShardTask] = []
    for task in tasks:
        done = _complete_sidecar(fs, root, task)
        if done is None:
            todo.append(task)
        else:
            sidecars[task.index] = done
    workers = min(cfg.workers, len(todo))
    if workers > 1 and _is_memory(fs):
        print("make_shards: memory:// lives in one process; writing inline instead of with worker processes")
        workers = 0
    bar = tqdm(total=len(listing.items), unit="video", desc="make_shards", disable=not cfg.progress)
    bar.update(sum(len(tasks[i].items) for i in sidecars))
    if workers > 1:
        with mp_context().Pool(workers) as pool:
            for sidecar in pool.imap_unordered(_write_shard, todo):
                index = int(sidecar["name"][len("shard-") : -len(".tar")])
                sidecars[index] = sidecar
                bar.update(len(tasks[index].items))
    else:
        for task in todo:
            sidecars[task.index] = _write_shard(task)
            bar.update(len(task.items))
    bar.close()
    # stray temporaries of a killed run (the re-run above overwrote or finished them)
    remove_tmps(fs, root, [name for t in tasks for name in (shard_name(t.index), _sidecar_name(t.index))])

    ordered = [sidecars[t.index] for t in tasks]
    skipped = [
        {"source": s["source"], "reason": s["reason"], "detail": s["detail"]}
        for side in ordered
        for s in side["skipped"]
    ]
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "num_samples": sum(s["count"] for s in ordered),
        "shards": [
            {"name": s["name"], "count": s["count"], "sha256": s["sha256"]} for s in ordered if s["count"]
        ],
        "classes": listing.classes,
        "params": to_dict(cfg),
        "skipped": skipped,
        "skip_counts": dict(sorted(Counter(s["reason"] for s in skipped).items())),
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
            f"is in {join_url(cfg.output, MANIFEST_NAME)}"
        )
    print(
        f"make_shards: wrote {plural(manifest['num_samples'], 'video')} in {plural(len(manifest['shards']), 'shard')} "
        f"to {cfg.output} ({len(tasks) - len(todo)} of {plural(len(tasks), 'shard')} already complete); skipped "
        f"{len(skipped)} ({reasons}); {time.time() - start:.1f}s",
        flush=True,
    )
    return manifest
