"""What a loader's readers do: the stream options, one reader's shard pipeline, decoding and batching.

A reader is one DataLoader worker of one rank. :class:`ReaderSpec` opens its sample stream
(:func:`~vqvdm_scale.data.pipeline.shard_sample_pipeline`), a :data:`SampleDecode` turns each raw sample
into a training sample, and every batch carries a ``_meta`` dict (worker, cursor = raw samples used,
error and skip counts) from which :class:`~vqvdm_scale.data.loader.ResumableLoader` advances its state.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import torch
from torch.utils.data import IterableDataset

from vqvdm_scale.config.core import ConfigError
from vqvdm_scale.config.text import plural
from vqvdm_scale.data.pipeline import (
    ErrorCounter,
    check_enough_shards,
    consumed_samples,
    mix_seed,
    reader_identity,
    shard_sample_pipeline,
)

__all__ = [
    "Batch",
    "ReaderDataset",
    "ReaderSpec",
    "SampleDecode",
    "SkipSample",
    "StreamConfig",
    "collate_batch",
    "plan_workers",
]

Batch = dict[str, Any]


@dataclass
class StreamConfig:
    """How a loader reads its shards: shuffling, workers, epochs (the options both loaders share).

    The batch size is not here: a loader is built with it (trainers pass ``train.micro_batch_size``).
    """

    num_workers: int = 2
    resampled: bool = False  # True: infinite sampling of shards with replacement (open_clip style)
    shuffle_buffer: int = 256  # samples held for shuffling within a reader (train); 0/1 = off
    seed: int = 0
    epoch_samples: Optional[int] = None  # resampled mode: samples per rank that make one epoch
    drop_last: bool = True  # train: drop each reader's last partial batch (eval keeps it)
    prefetch_factor: int = 2
    # shards each reader downloads whole, in the background, in front of the one it reads (for object
    # storage: the store's latency is paid beside the decode); each is held in memory until read
    shards_ahead: int = 0
    pin_memory: bool = False
    # how DataLoader workers start; None = Python's default (fork on Linux up to 3.13). memory:// shards
    # are only visible to forked workers
    worker_start_method: Optional[Literal["fork", "spawn", "forkserver"]] = None

    def __post_init__(self) -> None:
        if self.prefetch_factor < 1:
            raise ConfigError(f"data.prefetch_factor must be >= 1, got {self.prefetch_factor}")
        if self.shards_ahead < 0:
            raise ConfigError(f"data.shards_ahead must be >= 0, got {self.shards_ahead}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.shuffle_buffer < 0:
            raise ConfigError(f"data.shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        if self.epoch_samples is not None and not self.resampled:
            raise ConfigError(
                "data.epoch_samples only applies with data.resampled=true (a seeded-shuffle epoch is "
                "one pass over the shards); unset it or set data.resampled=true"
            )

    @property
    def clip_span(self) -> int:
        """Source frames one sample covers (1 for pre-cut samples; clips override it)."""
        return 1


@dataclass
class ReaderSpec:
    """What every reader (one DataLoader worker of one rank) of an epoch needs to open its sample stream."""

    urls: list[str]
    rank: int
    world_size: int
    seed: int
    epoch: int
    train: bool
    resampled: bool
    shuffle_buffer: int
    batch_size: int
    drop_last: bool
    reseed: int
    cursors: list[int]
    worker_offset: int
    consumed: list[dict[str, Any]] = field(default_factory=list)  # earlier layouts of this epoch
    exclude: frozenset[tuple[str, str]] = frozenset()  # what they used, if the loader replayed them already
    checksums: dict[str, str] = field(default_factory=dict)  # shard URL -> sha256 checked on open
    shards_ahead: int = 0  # shards downloaded in front of the one being read

    def open(self, label: str) -> tuple[int, ErrorCounter, Iterator[dict[str, Any]]]:
        """(worker index, its error counter, its raw samples) for the DataLoader worker this runs in."""
        worker, num_workers = reader_identity(self.worker_offset)
        if num_workers != len(self.cursors):
            raise RuntimeError(
                f"loader built for {plural(len(self.cursors), 'worker')} runs with {num_workers}"
            )
        counter = ErrorCounter(f"{label}rank {self.rank} worker {worker}")
        exclude = self.exclude
        if self.consumed:  # not replayed by the loader: replay them here
            exclude = consumed_samples(
                self.urls,
                self.consumed,
                seed=self.seed,
                epoch=self.epoch,
                shuffle_buffer=self.shuffle_buffer,
                checksums=self.checksums,
            )
        samples = shard_sample_pipeline(
            self.urls,
            rank=self.rank,
            world_size=self.world_size,
            worker=worker,
            num_workers=num_workers,
            seed=self.seed,
            epoch=self.epoch,
            resampled=self.resampled,
            shuffle_shards=self.train,
            shuffle_buffer=self.shuffle_buffer if self.train else 0,
            reseed=self.reseed,
            skip=self.cursors[worker],
            handler=counter,
            exclude=exclude,
            checksums=self.checksums,
            shards_ahead=self.shards_ahead,
        )
        return worker, counter, iter(samples)


def _meta(worker: int, cursor: int, counter: ErrorCounter, skipped: int) -> dict[str, int]:
    """What a reader reports with each batch: its cursor, and its bad-data, short-video and network counts."""
    return dict(
        worker=worker,
        cursor=cursor,
        errors=counter.count,
        skipped=skipped,
        network=counter.network,
        retries=counter.retries,
    )


def collate_batch(samples: list[dict[str, Any]], meta: dict[str, int]) -> Batch:
    """Stack a reader's decoded samples into a batch, with the reader's ``_meta`` (worker, cursor, counts).

    Tensors are stacked; ``label`` becomes int64, ``fps`` float32, and ``key`` a list of strings.
    """
    out: Batch = {}
    for name, value in samples[0].items():
        column = [c[name] for c in samples]
        if torch.is_tensor(value):
            out[name] = torch.stack(column)
        elif name == "label":
            out[name] = torch.tensor(column, dtype=torch.int64)
        elif name == "fps":
            out[name] = torch.tensor(column, dtype=torch.float32)
        else:
            out[name] = column
    out["_meta"] = meta
    return out


class SkipSample(Exception):
    """Raised by a decode function for a sound sample it cannot use (a video too short): counted, skipped."""


# decode(raw shard sample, rng) -> {"<tensor key>": Tensor, "label": int, "fps": float, "key": str}. The rng
# is a function of the sample's stream position, so a resumed reader that skips samples without decoding
# them still draws the same augmentation for every later sample.
SampleDecode = Callable[[dict[str, Any], random.Random], dict[str, Any]]


class ReaderDataset(IterableDataset):
    """One epoch of batches for one rank; each DataLoader worker opens its reader and decodes its samples."""

    def __init__(self, reader: ReaderSpec, decode: SampleDecode, label: str) -> None:
        super().__init__()
        self.reader, self.decode, self.label = reader, decode, label

    def __iter__(self) -> Iterator[Batch]:
        r = self.reader
        worker, counter, samples = r.open(self.label)
        sample_seed = mix_seed(r.seed, r.epoch, r.reseed, r.rank, worker, 2)
        batch: list[dict[str, Any]] = []
        skipped = 0
        cursor = r.cursors[worker]
        for sample in samples:
            cursor = sample["__index__"] + 1
            try:
                batch.append(self.decode(sample, random.Random(mix_seed(sample_seed, cursor))))
            except SkipSample:
                skipped += 1
                continue
            except Exception as exn:  # noqa: BLE001 - a corrupt sample is counted and skipped
                exn.args = (*exn.args, sample.get("__key__"), sample.get("__url__"))
                counter(exn)
                continue
            if len(batch) == r.batch_size:
                yield collate_batch(batch, _meta(worker, cursor, counter, skipped))
                batch = []
        meta = _meta(worker, cursor, counter, skipped)
        if batch and not r.drop_last:
            yield collate_batch(batch, meta)
        # a sample-less tail item reports the counts of errors after this reader's last batch; it takes a
        # turn in the DataLoader's worker round robin only when the reader has no batch left, so the
        # order of real batches (and hence exact resume) does not depend on it
        yield {"_meta": meta}


def plan_workers(num_shards: int, world_size: int, cfg: StreamConfig, train: bool) -> int:
    """DataLoader workers per rank for ``num_shards``: checks a training split, caps an eval pass's workers."""
    if train and not cfg.resampled:
        check_enough_shards(num_shards, world_size, cfg.num_workers)
        return cfg.num_workers
    if train:
        return cfg.num_workers
    if num_shards < world_size:
        raise ValueError(
            f"{plural(num_shards, 'eval shard')} cannot be split over {plural(world_size, 'rank')}: "
            "write more eval shards"
        )
    return min(cfg.num_workers, num_shards // world_size)  # an idle eval worker only costs a start
