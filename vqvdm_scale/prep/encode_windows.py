"""The decode side of encode_latents: which windows of a video to encode, decoded and centre-cropped,
in a process pool where a crashing decoder costs one video instead of the job."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Optional

import numpy as np
import torch

from vqvdm_scale.data.clips import crop_clip, decode_frames, eval_windows
from vqvdm_scale.formats.shard_io import mp_context
from vqvdm_scale.prep.worker_pool import DIED_TWICE


def window_starts(num_frames: int, frames: int, stride: int, windows: Optional[int]) -> list[int]:
    """First frames of the windows of a ``num_frames`` video: all non-overlapping (None) or N evenly spaced."""
    span = (frames - 1) * stride + 1
    if num_frames < span:
        return []
    if windows is None:
        return eval_windows(num_frames, frames, stride)
    last = num_frames - span
    if windows == 1:
        return [last // 2]  # the clip loader's centred eval window
    # round(i * last / (N - 1)) in integers (half up), deduplicated for videos with fewer positions than N
    return sorted({(2 * i * last + windows - 1) // (2 * (windows - 1)) for i in range(windows)})


def video_windows(
    sample: dict[str, Any], frames: int, strides: Sequence[int], resolution: int, windows: Optional[int]
) -> tuple[dict[str, Any], float, list[tuple[int, int, int, torch.Tensor]]]:
    """Decode one video shard sample into ``(meta, fps, [(stride, window, start, clip [3, T, S, S]), ...])``,
    the windows of every frame stride in ``strides`` cut from one decode.

    The resize (in the decoder for mp4, then bilinear with antialias) and the centre crop are the clip
    loader's eval path, so a cached latent is the encoding of exactly the clip an eval loader would make.
    """
    meta = json.loads(sample["json"])
    size = meta.get("size")
    resize_in_decoder = resolution if resolution % 2 == 0 and size and min(size) != resolution else None
    video, container_fps = decode_frames(sample, max_frames=None, resolution=resize_in_decoder)
    out: list[tuple[int, int, int, torch.Tensor]] = []
    for stride in strides:
        for window, start in enumerate(window_starts(video.shape[0], frames, stride, windows)):
            out.append(
                (stride, window, start, crop_clip(video[start + stride * np.arange(frames)], resolution))
            )
    fps = float(meta.get("fps", container_fps if container_fps is not None else 0.0))
    return meta, fps, out


def prepare_job(job: tuple[dict[str, Any], int, tuple[int, ...], int, Optional[int]]) -> tuple[str, Any]:
    """Worker-side :func:`video_windows` that reports failures instead of raising (keeps the pool alive).

    Returns ``("ok", (meta, fps, windows))`` or ``("corrupt", detail)``.
    """
    sample, frames, strides, resolution, windows = job
    try:
        return "ok", video_windows(sample, frames, strides, resolution, windows)
    except Exception as e:  # noqa: BLE001 - a corrupt member is counted, never stops the job
        return "corrupt", f"{type(e).__name__}: {e}"


class DecodePool:
    """Ordered video decoding in worker processes; a worker that dies (a decoder crash, the out-of-memory
    killer) costs its video a retry alone, then the video is skipped with reason ``worker_died``.

    ``prepare`` is the worker-side function (:func:`prepare_job`; tests give one that kills its worker).
    """

    def __init__(self, workers: int, prepare: Callable[[Any], tuple[str, Any]] = prepare_job) -> None:
        self.workers = workers
        self.prepare = prepare
        self.executor = self._new()

    def _new(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.workers, mp_context=mp_context(), initializer=torch.set_num_threads, initargs=(1,)
        )

    def _restart(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.executor = self._new()

    def map(self, jobs: list[Any]) -> list[tuple[str, Any]]:
        """``prepare`` of every job, in order: ``("ok", windows)`` or ``(reason, detail)`` of a skipped video."""
        try:
            return list(self.executor.map(self.prepare, jobs))
        except BrokenProcessPool:
            self._restart()
        out: list[tuple[str, Any]] = []
        for job in jobs:  # one at a time: a second death is the video's own
            try:
                out.append(self.executor.submit(self.prepare, job).result())
            except BrokenProcessPool:
                self._restart()
                out.append(("worker_died", DIED_TWICE))
        return out

    def close(self) -> None:
        """Stop the workers."""
        self.executor.shutdown()
