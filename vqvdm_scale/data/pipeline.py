"""Raw tar samples for one reader of one rank: the shard-source half of the clip and latent loaders.

One reader = one DataLoader worker of one rank; its stream, after open_clip's layout:

    shard list -> seeded shuffle by (seed, epoch) | ResampledShards   (same order on every rank)
      -> split by rank (explicit rank/world_size, not read from torch.distributed)
      -> split by worker -> fsspec open (-> sha256 checked against the manifest's) -> tar samples
         (bad data counted, never raised; network faults retried from the shard's start, then
         StorageUnreachable: see data.shard_open)
      -> sample shuffle buffer (train) -> number samples, skip the ones a resumed run already used

Every seed is :func:`mix_seed` of (seed, epoch, ...), so the stream is a pure function of the layout.
The decode (video clips, latents) is the caller's; this module imports neither PyAV nor the decoders.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import random
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any, Optional

import webdataset as wds
from torch.utils.data import get_worker_info
from webdataset.tariterators import group_by_keys

from vqvdm_scale.config.text import plural, redact
from vqvdm_scale.data.shard_open import ShardChecksumError, open_tar_files

log = logging.getLogger(__name__)

__all__ = [
    "ErrorCounter",
    "ShardChecksumError",
    "check_enough_shards",
    "mix_seed",
    "reader_identity",
    "shard_sample_pipeline",
    "split_by_rank",
]


def mix_seed(*values: int) -> int:
    """A 63-bit seed depending on every value; stable across processes and Python versions."""
    h = hashlib.blake2b(digest_size=8)
    for v in values:
        h.update(int(v).to_bytes(16, "little", signed=True))
    return int.from_bytes(h.digest(), "little") >> 1


class ErrorCounter:
    """A non-throwing webdataset handler: counts the exceptions it swallows and logs the first few."""

    def __init__(self, where: str = "", max_logged: int = 5) -> None:
        self.where = where
        self.max_logged = max_logged
        self.count = 0
        self.network = 0  # network faults (retried, not skipped), and the retries they cost
        self.retries = 0

    def __call__(self, exn: BaseException) -> bool:
        """Record ``exn`` and tell webdataset to continue with the next item."""
        self.count += 1
        if self.count <= self.max_logged:
            where = f" ({self.where})" if self.where else ""
            log.warning("skipping bad shard data%s: %s", redact(where), redact(repr(exn)))
        return True


def split_by_rank(src: Iterable[Any], rank: int, world_size: int) -> Iterator[Any]:
    """Every ``world_size``-th item starting at ``rank`` (wds.split_by_node with explicit rank)."""
    yield from islice(src, rank, None, world_size)


def _drop_consumed(
    src: Iterable[dict[str, Any]], exclude: frozenset[tuple[str, str]]
) -> Iterator[dict[str, Any]]:
    """Drop the samples an earlier layout of this epoch already used (``(__url__, __key__)`` pairs)."""
    for sample in src:
        if (sample.get("__url__"), sample.get("__key__")) not in exclude:
            yield sample


def _number_and_skip(src: Iterable[dict[str, Any]], skip: int) -> Iterator[dict[str, Any]]:
    """Tag samples with their position ``__index__`` in the reader's stream; drop the first ``skip``."""
    for i, sample in enumerate(src):
        if i >= skip:
            sample["__index__"] = i
            yield sample


class _ConstSeed:
    """Picklable ``worker_seed`` callable for wds.ResampledShards (our rank/worker, not torch.distributed's)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __call__(self) -> int:
        return self.value


def _seeded_shards(
    urls: Sequence[str], rank: int, world_size: int, worker: int, num_workers: int, shuffle: Optional[int]
) -> list[Any]:
    """Pipeline stages giving one reader's shards: all shards shuffled by ``shuffle``, split by rank, by worker."""
    return [
        wds.SimpleShardList(list(urls), seed=shuffle),
        functools.partial(split_by_rank, rank=rank, world_size=world_size),
        functools.partial(split_by_rank, rank=worker, world_size=num_workers),
    ]


def reader_shards(
    urls: Sequence[str],
    *,
    rank: int,
    world_size: int,
    worker: int = 0,
    num_workers: int = 1,
    seed: int,
    epoch: int,
) -> list[str]:
    """The shards a reader of a seeded training epoch reads, in order (``num_workers=1``: its rank's)."""
    stages = _seeded_shards(urls, rank, world_size, worker, num_workers, mix_seed(seed, epoch))
    return [item["url"] for item in wds.DataPipeline(*stages)]


def shard_sample_pipeline(
    urls: Sequence[str],
    *,
    rank: int,
    world_size: int,
    worker: int = 0,
    num_workers: int = 1,
    seed: int = 0,
    epoch: int = 0,
    resampled: bool = False,
    shuffle_shards: bool = True,
    shuffle_buffer: int = 0,
    reseed: int = 0,
    skip: int = 0,
    handler: Optional[Callable[[BaseException], bool]] = None,
    exclude: frozenset[tuple[str, str]] = frozenset(),
    checksums: Optional[Mapping[str, str]] = None,
    shards_ahead: int = 0,
) -> wds.DataPipeline:
    """Raw tar samples (dicts of bytes + ``__key__``, ``__url__``, ``__index__``) for one reader.

    The reader is logical worker ``worker`` of ``num_workers`` on ``rank`` of ``world_size``. Seeded
    mode: shards shuffled by (seed, epoch) identically on every rank, then split by rank and worker.
    Resampled mode: shards drawn with replacement from all shards by an RNG of (seed, epoch, reseed,
    rank, worker). ``exclude`` drops samples before the shuffle buffer (what the ranks of an earlier
    world size used this epoch), ``skip`` drops the first samples after it (resume). Tar and open
    errors, and shards that do not hash to their sha256 in ``checksums`` (URL -> sha256; a URL not in
    it is not checked), go to ``handler`` (default: an :class:`ErrorCounter`); network faults are
    retried from the shard's start (:func:`~vqvdm_scale.data.shard_open.open_tar_files`), which also
    downloads ``shards_ahead`` shards in front of the one read. A latent loader continues this pipeline
    with its own decode.
    """
    if not urls:
        raise ValueError("shard_sample_pipeline needs at least one shard URL")
    handler = handler if handler is not None else ErrorCounter(f"rank {rank} worker {worker}")
    stages: list[Any] = []
    if resampled:
        stages.append(
            wds.ResampledShards(
                list(urls),
                seed=mix_seed(seed, epoch, reseed),
                worker_seed=_ConstSeed(mix_seed(rank, worker)),
                deterministic=True,
            )
        )
    else:
        shuffle = mix_seed(seed, epoch) if shuffle_shards else None
        stages += _seeded_shards(urls, rank, world_size, worker, num_workers, shuffle)
    faults = handler if isinstance(handler, ErrorCounter) else ErrorCounter()
    stages += [
        functools.partial(
            open_tar_files, handler=handler, faults=faults, checksums=checksums, ahead=shards_ahead
        ),
        functools.partial(group_by_keys, handler=handler),
    ]
    if exclude:
        stages.append(functools.partial(_drop_consumed, exclude=exclude))
    if shuffle_buffer > 1:
        rng = random.Random(mix_seed(seed, epoch, reseed, rank, worker, 1))
        stages.append(wds.shuffle(shuffle_buffer, initial=shuffle_buffer, rng=rng))
    stages.append(functools.partial(_number_and_skip, skip=skip))
    return wds.DataPipeline(*stages)


def consumed_samples(
    urls: Sequence[str],
    layouts: Sequence[dict[str, Any]],
    *,
    seed: int,
    epoch: int,
    shuffle_buffer: int,
    checksums: Optional[Mapping[str, str]] = None,
    within: Optional[Collection[str]] = None,
) -> frozenset[tuple[str, str]]:
    """``(url, key)`` of every sample the readers of earlier layouts of this epoch used, in order.

    Each layout is ``{"world_size", "num_workers", "cursors": [[per-worker cursor] per rank]}``, as
    :meth:`~vqvdm_scale.data.loader.LoaderState.resplit` records it (a cursor None: the whole stream).
    Replaying a reader's stream (no decoding) to its cursor gives exactly the samples it used, since the
    stream is a function of the seed, epoch and layout (and of the layouts before it, whose samples it
    did not hold). With ``within`` (shard URLs) only the samples of those shards are wanted, so only the
    readers whose streams decide them are replayed: the readers that share a shard with ``within``, and,
    layout by layout backwards, the earlier readers that share a shard with those.
    """
    plans = [
        [(r, w) for r in range(int(lay["world_size"])) for w in range(int(lay["num_workers"]))]
        for lay in layouts
    ]
    if within is not None:
        relevant = set(within)
        for i in reversed(range(len(layouts))):
            world, workers = int(layouts[i]["world_size"]), int(layouts[i]["num_workers"])
            shards = {
                (r, w): reader_shards(urls, rank=r, world_size=world, worker=w, num_workers=workers, seed=seed, epoch=epoch)
                for r, w in plans[i]
            }  # fmt: skip
            plans[i] = [rw for rw in plans[i] if relevant.intersection(shards[rw])]
            relevant.update(url for rw in plans[i] for url in shards[rw])
    used: set[tuple[str, str]] = set()
    for layout, readers in zip(layouts, plans, strict=True):
        before = frozenset(used)
        world, workers = int(layout["world_size"]), int(layout["num_workers"])
        for rank, worker in readers:
            stream = shard_sample_pipeline(
                urls, rank=rank, world_size=world, worker=worker, num_workers=workers, seed=seed,
                epoch=epoch, shuffle_buffer=shuffle_buffer, exclude=before, checksums=checksums,
                handler=ErrorCounter(f"replay rank {rank} worker {worker}"),
            )  # fmt: skip
            cursor = layout["cursors"][rank][worker]  # None: the reader's whole share
            for sample in islice(stream, None if cursor is None else int(cursor)):
                used.add((sample["__url__"], sample["__key__"]))
    wanted = None if within is None else set(within)
    return frozenset(u for u in used if wanted is None or u[0] in wanted)


def reader_identity(worker_offset: int = 0) -> tuple[int, int]:
    """(logical worker, workers) of the calling DataLoader worker; worker ``i`` plays ``(i + offset) % n``."""
    info = get_worker_info()
    if info is None:
        return 0, 1
    return (info.id + worker_offset) % info.num_workers, info.num_workers


def check_enough_shards(num_shards: int, world_size: int, num_workers: int) -> None:
    """ValueError if the seeded-shuffle split would leave a reader with no shard (it would hang DDP)."""
    readers = world_size * max(1, num_workers)
    if num_shards < readers:
        raise ValueError(
            f"{plural(num_shards, 'shard')} cannot feed {plural(world_size, 'rank')} x "
            f"{plural(max(1, num_workers), 'worker')} = {readers} "
            "readers without repetition: write more shards (--shard-size smaller) or set data.resampled=true"
        )
