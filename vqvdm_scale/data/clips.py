"""Video clip batches from WebDataset shards over fsspec, with exact resume for the seeded-shuffle mode.

Pipeline per reader (one reader = one DataLoader worker of one rank), after open_clip's layout; the
stages up to the numbered samples are :func:`~vqvdm_scale.data.pipeline.shard_sample_pipeline`:

    shard list -> seeded shuffle by (seed, epoch) | ResampledShards   (same order on every rank)
      -> split by rank (explicit rank/world_size, not read from torch.distributed)
      -> split by worker -> fsspec open -> tar samples (errors counted, never raised)
      -> sample shuffle buffer (train) -> number samples, skip the ones a resumed run already used
      -> decode (npy, or mp4 via video_io; PyAV imported only here) -> clip window -> crop/flip
      -> [-1, 1] float, [C, T, H, W] -> batch {"video", "label", "fps", "key"}

Guarantees (see :class:`ClipLoader`):

* seeded-shuffle mode (``resampled=false``): within one epoch each sample of the shard set is read by
  exactly one (rank, worker); with ``drop_last=false`` every sample that decodes and is long enough
  is yielded exactly once (``drop_last=true`` drops each reader's last partial batch). The order is a
  pure function of (seed, epoch, rank, num_workers, world_size). Resuming from
  :meth:`ClipLoader.state_dict` with the same layout yields exactly the batches an uninterrupted loader
  would have yielded next, and replays nothing; skipped samples are re-read from the tar stream but
  not decoded. With a different layout (workers, ranks) the interrupted epoch's rest is dropped and
  the next epoch starts (nothing replays; some samples of that epoch are not seen).
* resampled mode: shards are drawn with replacement, per (rank, worker) RNG. A resumed run reseeds
  with (seed, epoch, samples consumed), so it continues with new randomness instead of repeating the
  stream it already used; it is not a bit-exact continuation.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from typing import Any, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F

from vqvdm_scale.config.core import ConfigError
from vqvdm_scale.data.loader import LoaderState, ResumableLoader
from vqvdm_scale.data.reader import SkipSample, StreamConfig
from vqvdm_scale.data.urls import resolve_shards
from vqvdm_scale.formats.labels import check_label
from vqvdm_scale.formats.video_shards import shard_entries

__all__ = [
    "ClipDecode",
    "ClipLoaderConfig",
    "build_clip_loader",
    "crop_clip",
    "decode_frames",
    "eval_windows",
    "make_clip",
    "resize_short_side",
]


# ----------------------------------------------------------------------------------------------- config


@dataclass
class ClipLoaderConfig(StreamConfig):
    """Where the video shards are and how clips are cut and augmented (plus the shared stream options)."""

    train_shards: str = ""  # manifest dir, brace pattern, or comma-separated list (see data.urls)
    eval_shards: Optional[str] = None
    frames: int = 16  # T, frames per clip
    frame_stride: int = 1  # take every k-th source frame; the batch's fps is source fps / k
    resolution: int = 128  # square crop size; videos are first resized so their short side is this
    random_crop: bool = True  # train: random crop position along the long side (eval: always centred)
    random_flip: bool = True  # train: horizontal flip with p=0.5 (eval: never)
    short_videos: Literal["skip", "loop"] = "skip"  # < (T-1)*stride+1 frames: drop and count, or wrap

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("frames", "frame_stride", "resolution"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.short_videos not in ("skip", "loop"):
            raise ConfigError(f"data.short_videos must be 'skip' or 'loop', got {self.short_videos!r}")

    @property
    def clip_span(self) -> int:
        """Source frames one clip covers: (T - 1) * stride + 1."""
        return (self.frames - 1) * self.frame_stride + 1


# ------------------------------------------------------------------------------------- decode and clips


def eval_windows(num_frames: int, frames: int, stride: int = 1) -> list[int]:
    """Start frames of all non-overlapping clip windows, back to back on the stride grid.

    Windows start at multiples of ``frames * stride`` so consecutive windows continue the same
    stride-``stride`` frame grid (concatenated they form one long clip); a window needs
    ``(frames - 1) * stride + 1`` source frames. Returns ``[]`` if the video is too short.
    """
    if frames < 1 or stride < 1:
        raise ValueError(f"frames and stride must be >= 1, got frames={frames} stride={stride}")
    span = (frames - 1) * stride + 1
    return list(range(0, max(0, num_frames - span + 1), frames * stride))


def decode_frames(
    sample: dict[str, Any], max_frames: Optional[int] = None, resolution: Optional[int] = None
) -> tuple[np.ndarray, Optional[float]]:
    """uint8 ``[T, H, W, 3]`` frames of a shard sample (``npy`` or ``mp4``) and the container fps if known.

    For mp4, ``max_frames`` stops decoding early and an even ``resolution`` resizes (short side) inside
    the decoder; npy samples are returned as stored.
    """
    key = sample.get("__key__", "?")
    if "npy" in sample:
        frames = np.load(io.BytesIO(sample["npy"]), allow_pickle=False)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(
                f"sample {key}: npy must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}"
            )
        return frames, None
    if "mp4" in sample:
        from vqvdm_scale.data.video_io import decode_mp4_bytes  # lazy: PyAV only where mp4s are read

        frames, fps = decode_mp4_bytes(sample["mp4"], resolution=resolution, max_frames=max_frames)
        return frames, float(fps)
    raise ValueError(f"sample {key} has neither 'mp4' nor 'npy' (members: {sorted(sample)})")


class _TooShort(SkipSample):
    """The video has fewer frames than one clip needs (counted as skipped, not as an error)."""


def resize_short_side(video: torch.Tensor, size: int) -> torch.Tensor:
    """[T, 3, H, W] float -> short side ``size`` (bilinear with antialias, aspect kept)."""
    h, w = video.shape[-2:]
    scale = size / min(h, w)
    new = (max(size, round(h * scale)), max(size, round(w * scale)))
    return F.interpolate(video, size=new, mode="bilinear", antialias=True, align_corners=False)


def crop_clip(
    frames: np.ndarray,
    size: int,
    rng: Optional[random.Random] = None,
    *,
    random_crop: bool = False,
    random_flip: bool = False,
) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` frames -> ``[3, T, size, size]`` float in [-1, 1]: short side resized, square crop.

    The crop is centred unless ``random_crop`` (position drawn from ``rng`` along both axes); with
    ``random_flip`` the clip is mirrored horizontally with p=0.5 (drawn from ``rng`` after the crop). The
    clip loader and encode_latents both cut clips here, so a cached latent encodes an eval loader's clip.
    """
    if (random_crop or random_flip) and rng is None:
        raise ValueError("crop_clip: random_crop / random_flip need an rng")
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # [T, 3, H, W] uint8
    if min(video.shape[-2:]) != size:
        video = resize_short_side(video.float(), size).clamp_(0, 255)  # [T, 3, H', W']
    h, w = video.shape[-2:]
    if random_crop:
        assert rng is not None
        top, left = rng.randint(0, h - size), rng.randint(0, w - size)
    else:
        top, left = (h - size) // 2, (w - size) // 2
    video = video[:, :, top : top + size, left : left + size]
    if random_flip:
        assert rng is not None
        if rng.random() < 0.5:
            video = video.flip(-1)
    return video.permute(1, 0, 2, 3).float().div_(127.5).sub_(1.0).contiguous()  # [3, T, S, S]


def _window_start(num_frames: int, span: int, train: bool, rng: random.Random) -> int:
    """First frame of the clip window: uniform at random for training, centred for evaluation."""
    return rng.randint(0, num_frames - span) if train else (num_frames - span) // 2


@dataclass(frozen=True)
class ClipDecode:
    """The clip loader's :data:`~vqvdm_scale.data.loader.SampleDecode`: one shard sample -> one clip."""

    frames: int
    stride: int
    resolution: int
    train: bool
    random_crop: bool
    random_flip: bool
    short_videos: str
    classes: tuple[str, ...] = ()  # the shards' class list (from their manifests); empty: unknown

    def __call__(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        return make_clip(sample, self, rng)


def make_clip(sample: dict[str, Any], spec: ClipDecode, rng: random.Random) -> dict[str, Any]:
    """Decode one shard sample into ``{"video": [3, T, S, S] float in [-1, 1], "label", "fps", "key"}``.

    A label that is missing or not one of ``spec.classes`` is a bad sample (LabelError, counted by the reader).
    """
    meta = json.loads(sample["json"])
    label = check_label(meta.get("label"), spec.classes, str(sample.get("__key__")))  # before any decoding
    span = (spec.frames - 1) * spec.stride + 1
    # pick the window from the sample json's frame count first, so an mp4 is decoded only up to its end
    listed = int(meta.get("num_frames", 0))
    planned = _window_start(listed, span, spec.train, rng) if listed >= span else None
    size = meta.get("size")
    resize_in_decoder = (
        spec.resolution if spec.resolution % 2 == 0 and size and min(size) != spec.resolution else None
    )
    frames, container_fps = decode_frames(
        sample, max_frames=None if planned is None else planned + span, resolution=resize_in_decoder
    )
    n = frames.shape[0]
    if planned is not None and n >= planned + span:
        idx = planned + spec.stride * np.arange(spec.frames)
    elif n >= span:  # the metadata was wrong about the length: choose again on the real frames
        idx = _window_start(n, span, spec.train, rng) + spec.stride * np.arange(spec.frames)
    elif spec.short_videos == "skip":
        raise _TooShort(sample.get("__key__"))
    elif n == 0:
        raise ValueError(f"sample {sample.get('__key__')} decoded to no frames")
    else:
        idx = (np.arange(spec.frames) * spec.stride) % n  # loop the video to fill the clip
    video = crop_clip(
        frames[idx],  # [T, H, W, 3] uint8
        spec.resolution,
        rng,
        random_crop=spec.train and spec.random_crop,
        random_flip=spec.train and spec.random_flip,
    )
    fps = float(meta.get("fps", container_fps if container_fps is not None else 0.0))
    return {
        "video": video,
        "label": label,
        "fps": fps / spec.stride,  # the clip's own frame rate
        "key": str(sample.get("__key__")),
    }


def build_clip_loader(
    cfg: ClipLoaderConfig,
    *,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    train: bool = True,
    state: Optional[LoaderState] = None,
) -> ResumableLoader:
    """The clip loader of one rank over ``cfg.train_shards`` (train) or ``cfg.eval_shards`` (eval).

    Train mode iterates forever, epoch after epoch; eval mode iterates one pass. Batches: ``{"video":
    [B, 3, T, S, S] float32 in [-1, 1], "label": [B] int64, "fps": [B] float32, "key": list[str]}`` where
    fps is the clip's rate (source fps / frame_stride). Epochs, state and exact resume are
    :class:`~vqvdm_scale.data.loader.ResumableLoader`'s.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    spec = cfg.train_shards if train else cfg.eval_shards
    if not spec:
        which = "train_shards" if train else "eval_shards"
        raise ValueError(f"data.{which} is not set: give a shard directory, brace pattern or list")
    urls = resolve_shards(spec)
    _, classes = shard_entries(urls)
    decode = ClipDecode(
        frames=cfg.frames,
        stride=cfg.frame_stride,
        resolution=cfg.resolution,
        train=train,
        random_crop=cfg.random_crop,
        random_flip=cfg.random_flip,
        short_videos=cfg.short_videos,
        classes=tuple(classes),
    )
    return ResumableLoader(
        cfg, urls, decode, batch_size=batch_size, rank=rank, world_size=world_size, train=train, state=state
    )
