"""The resumable loader both stage loaders share: per-rank epochs, worker cursors, exact resume.

A loader owns one :class:`LoaderState` per rank. Its DataLoader workers are the readers of
:func:`~vqvdm_scale.data.pipeline.shard_sample_pipeline`; every batch a reader yields carries a ``_meta``
dict (worker, cursor = raw samples used, error and skip counts) from which the state is advanced as the
batch is handed out, so ``state_dict()`` always describes exactly what was yielded. Worker ``i`` of a
resumed loader plays logical worker ``(i + next_worker) % n``, which makes the DataLoader's round robin
continue where the interrupted run stopped (see :mod:`vqvdm_scale.data.clips` for the guarantees).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, IterableDataset

from vqvdm_scale.config.core import ConfigError
from vqvdm_scale.config.text import plural
from vqvdm_scale.data.pipeline import consumed_samples, mix_seed, reader_shards
from vqvdm_scale.data.reader import Batch, ReaderDataset, ReaderSpec, SampleDecode, StreamConfig, plan_workers

__all__ = ["LoaderState", "ResumableLoader"]

_COUNTS = ("errors", "skipped", "network", "retries")  # what each reader reports in its batches' _meta


@dataclass
class LoaderState:
    """Where one rank's loader stands: enough to resume without replaying what it already yielded.

    ``samples_consumed`` / ``batches_consumed`` count what this rank yielded in the current epoch;
    ``worker_cursors[w]`` is how many raw (pre-decode) samples logical worker ``w`` used this epoch;
    ``next_worker`` is the logical worker whose batch comes next; ``num_workers``, ``world_size`` and
    ``rank`` record the layout the cursors refer to; ``reseed`` is the resampled mode's stream salt.
    The state is per rank: a trainer saves every rank's state (e.g. gathered into the checkpoint).
    """

    epoch: int = 0
    seed: int = 0
    samples_consumed: int = 0
    batches_consumed: int = 0
    worker_cursors: list[int] = field(default_factory=list)
    next_worker: int = 0
    num_workers: int = 1
    world_size: int = 1
    rank: int = 0
    resampled: bool = False
    reseed: int = 0
    # what the ranks of earlier layouts (world size, workers) used this epoch, oldest first (see resplit),
    # and what those ranks already used of the next epoch (it becomes that epoch's ``consumed``)
    consumed: list[dict[str, Any]] = field(default_factory=list)
    ahead: list[dict[str, Any]] = field(default_factory=list)
    # on resume only, never saved: every rank's state at the checkpoint, for a re-split on a new layout
    peers: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (goes into checkpoint client_state)."""
        out = dataclasses.asdict(self)
        del out["peers"]
        return out

    def resplit(self) -> Optional[LoaderState]:
        """A fresh state on a new layout that continues the old ranks' oldest epoch without what they used.

        Needs every old rank's state (``peers``, one layout, at most one epoch apart): the samples they
        used of that epoch are recorded as one more ``consumed`` layout, a rank already in the next epoch
        counting as having used its whole share (cursor None); what such ranks used of the next epoch is
        recorded in ``ahead``. The new readers split the rest among themselves. None when it cannot be
        exact (a rank's state missing, resampled mode, ranks two epochs apart).
        """
        peers = sorted((LoaderState.from_dict(p) for p in self.peers), key=lambda p: p.rank)
        if not peers or len({(p.seed, p.num_workers, p.world_size, p.resampled) for p in peers}) != 1:
            return None
        seed, world, workers = peers[0].seed, peers[0].world_size, peers[0].num_workers
        if peers[0].resampled or [p.rank for p in peers] != list(range(world)):
            return None
        epoch = min(p.epoch for p in peers)
        behind = [p for p in peers if p.epoch == epoch]
        ahead = [p for p in peers if p.epoch == epoch + 1]
        # every rank must have recorded the same earlier layouts of both epochs (else: not one job's states)
        if len(behind) + len(ahead) != len(peers) or len({json.dumps(p.consumed) for p in behind}) != 1:
            return None
        if len({json.dumps(p.ahead) for p in behind} | {json.dumps(p.consumed) for p in ahead}) != 1:
            return None

        def layout(cursors: list[Any]) -> dict[str, Any]:
            return {"world_size": world, "num_workers": workers, "cursors": cursors}

        this = layout([list(p.worker_cursors) if p.epoch == epoch else [None] * workers for p in peers])
        nxt = list(behind[0].ahead)
        if ahead:
            nxt.append(layout([list(p.worker_cursors) if p.epoch > epoch else [0] * workers for p in peers]))
        return LoaderState(epoch=epoch, seed=seed, consumed=[*behind[0].consumed, this], ahead=nxt)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoaderState:
        """Inverse of :meth:`to_dict`; ValueError on unknown keys (a state from another loader)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"loader state has unknown keys {sorted(unknown)}; it is not a ClipLoader state")
        out = cls(**data)
        out.worker_cursors = [int(c) for c in out.worker_cursors]
        out.consumed = [dict(c) for c in out.consumed]
        out.ahead = [dict(c) for c in out.ahead]
        return out


class ResumableLoader:
    """Iterable of batches for one rank, tracking :class:`LoaderState` as batches are yielded.

    The one loader of both stages: ``decode`` (a :data:`SampleDecode`) turns a raw shard sample into a
    training sample (clips: :class:`~vqvdm_scale.data.clips.ClipDecode`; latents:
    :class:`~vqvdm_scale.data.latents.LatentDecode`). Train mode iterates forever, epoch after epoch (the epoch
    advances when every reader of this rank ran out, or after ``epoch_samples`` samples in resampled
    mode); eval mode iterates one pass. Ranks whose shards hold different sample counts reach their
    epoch ends at different steps; training is step-based and each rank keeps yielding, so no rank
    waits. ``state_dict()`` describes everything yielded so far; corrupt samples and short videos are
    counted in :attr:`stats` (as of each worker's latest batch or end of stream).
    """

    label = ""  # names this loader's readers in error counts

    def __init__(
        self,
        cfg: StreamConfig,
        urls: list[str],
        decode: SampleDecode,
        *,
        batch_size: int,
        rank: int,
        world_size: int,
        train: bool,
        state: Optional[LoaderState],
    ) -> None:
        self.cfg = cfg
        self.urls = urls
        self.decode = decode
        self.rank, self.world_size = rank, world_size
        self.train = train
        self.num_workers = plan_workers(len(urls), world_size, cfg, train)
        self.readers = max(1, self.num_workers)
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        if cfg.epoch_samples is not None and cfg.epoch_samples < batch_size:
            raise ConfigError(
                f"data.epoch_samples={cfg.epoch_samples} is smaller than the batch size {batch_size}"
            )
        self.batch_size = batch_size
        self.epoch_batches: Optional[int] = (
            cfg.epoch_samples // batch_size if (train and cfg.resampled and cfg.epoch_samples) else None
        )
        self._state = self._adopt(state)
        # per count: the finished epochs' total, and this epoch's per worker (as of its latest batch)
        self._totals = dict.fromkeys(_COUNTS, 0)
        self._epoch: dict[str, dict[int, int]] = {name: {} for name in _COUNTS}

    # state ---------------------------------------------------------------------------------------

    def _fresh(self, epoch: int, seed: int) -> LoaderState:
        return LoaderState(
            epoch=epoch,
            seed=seed,
            worker_cursors=[0] * self.readers,
            num_workers=self.readers,
            world_size=self.world_size,
            rank=self.rank,
            resampled=self.cfg.resampled,
        )

    def _adopt(self, state: Optional[LoaderState]) -> LoaderState:
        if state is None:
            return self._fresh(0, self.cfg.seed)
        if not self.train:
            raise ValueError("an eval loader is one deterministic pass; it takes no resume state")
        if state.seed != self.cfg.seed:
            warnings.warn(
                f"resuming loader with the checkpoint's seed {state.seed} (config says {self.cfg.seed}) so the "
                "interrupted epoch's order is kept",
                stacklevel=3,
            )
        if state.resampled != self.cfg.resampled:
            warnings.warn("data.resampled changed since the checkpoint; starting a new epoch", stacklevel=3)
            return self._fresh(state.epoch + 1, state.seed)
        if self.cfg.resampled:
            if (state.num_workers, state.world_size) != (self.readers, self.world_size):
                warnings.warn(
                    "data.resampled draws shards with replacement, so there is no epoch order to re-split on "
                    f"the new layout (workers, world_size: {(state.num_workers, state.world_size)} -> "
                    f"{(self.readers, self.world_size)}); every rank continues with fresh random streams",
                    stacklevel=3,
                )
            out = dataclasses.replace(state, worker_cursors=[0] * self.readers, next_worker=0)
            out.num_workers, out.world_size, out.rank = self.readers, self.world_size, self.rank
            if state.samples_consumed or state.batches_consumed:
                # new randomness rather than the stream the checkpointed run already consumed
                out.reseed = mix_seed(state.reseed, state.samples_consumed, state.batches_consumed)
            return out
        layout = (state.num_workers, state.world_size, state.rank, len(state.worker_cursors))
        if layout[:2] != (self.readers, self.world_size):
            resplit = state.resplit() if state.peers else None
            if resplit is not None:
                out = self._fresh(resplit.epoch, resplit.seed)
                out.consumed, out.ahead = resplit.consumed, resplit.ahead
                return out
        if layout != (self.readers, self.world_size, self.rank, self.readers):
            nxt = max([state.epoch, *(int(p.get("epoch", 0)) for p in state.peers)]) + 1  # one for every rank
            warnings.warn(
                f"loader layout changed since the checkpoint (workers, world_size, rank: "
                f"{layout[:3]} -> {(self.readers, self.world_size, self.rank)}) and the old ranks' states do "
                f"not allow a re-split (one missing, or ranks two epochs apart); epoch {state.epoch} cannot "
                f"continue exactly, so epoch {nxt} starts (nothing replays)",
                stacklevel=3,
            )
            return self._fresh(nxt, state.seed)
        return dataclasses.replace(state, worker_cursors=list(state.worker_cursors))

    @property
    def state(self) -> LoaderState:
        """A copy of the current state (what has been yielded so far)."""
        return dataclasses.replace(self._state, worker_cursors=list(self._state.worker_cursors))

    def state_dict(self) -> dict[str, Any]:
        """The current :class:`LoaderState` as a dict, for the checkpoint's client_state."""
        return self._state.to_dict()

    @property
    def stats(self) -> dict[str, int]:
        """Counters: epoch, corrupt samples/shards skipped (``errors``), too-short videos (``skipped``),
        network faults reading shards (``network``) and the shard re-opens they cost (``retries``)."""
        out = {"epoch": self._state.epoch}
        out.update({name: self._totals[name] + sum(self._epoch[name].values()) for name in _COUNTS})
        return out

    # iteration -----------------------------------------------------------------------------------

    def _reader(self) -> ReaderSpec:
        """The readers' description for the current state (what the readers are built on)."""
        st = self._state
        return ReaderSpec(
            urls=self.urls,
            rank=self.rank,
            world_size=self.world_size,
            seed=st.seed,
            epoch=st.epoch,
            train=self.train,
            resampled=self.cfg.resampled and self.train,
            shuffle_buffer=self.cfg.shuffle_buffer,
            batch_size=self.batch_size,
            drop_last=self.cfg.drop_last and self.train,
            reseed=st.reseed,
            cursors=list(st.worker_cursors),
            worker_offset=st.next_worker,
            consumed=st.consumed,
            shards_ahead=self.cfg.shards_ahead,
        )

    def _dataset(self) -> IterableDataset:
        """This rank's dataset for the current state."""
        spec = self._reader()
        if spec.consumed:
            # what earlier layouts used, replayed once here for all of this rank's readers (not once in
            # each) and only as far as this rank's shards need it
            mine = reader_shards(
                spec.urls, rank=self.rank, world_size=self.world_size, seed=spec.seed, epoch=spec.epoch
            )
            exclude = consumed_samples(
                spec.urls, spec.consumed, seed=spec.seed, epoch=spec.epoch, shuffle_buffer=spec.shuffle_buffer,
                checksums=spec.checksums, within=mine,
            )  # fmt: skip
            spec = dataclasses.replace(spec, consumed=[], exclude=exclude)
        return ReaderDataset(spec, self.decode, self.label)

    def _dataloader(self) -> DataLoader:
        st = self._state
        dataset = self._dataset()
        extra: dict[str, Any] = {}
        if self.num_workers > 0:
            extra["prefetch_factor"] = self.cfg.prefetch_factor
            if self.cfg.worker_start_method is not None:
                extra["multiprocessing_context"] = self.cfg.worker_start_method
        # DataLoader draws its workers' base seed from the generator it is given, or else from the
        # global RNG; a private one keeps a resumed run's global RNG stream identical to an
        # uninterrupted run's (the pipeline's own randomness is seeded from (seed, epoch, rank)).
        generator = torch.Generator().manual_seed(mix_seed(st.seed, st.epoch, self.rank))
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.cfg.pin_memory,
            generator=generator,
            **extra,
        )

    def _end_epoch(self) -> None:
        for name in _COUNTS:
            self._totals[name] += sum(self._epoch[name].values())
            self._epoch[name] = {}
        ahead = self._state.ahead  # what ranks of an earlier layout already used of the next epoch
        self._state = self._fresh(self._state.epoch + 1, self._state.seed)
        self._state.consumed = ahead

    def epoch_iter(self) -> Iterator[Batch]:
        """The rest of the current epoch's batches; the epoch advances once it is exhausted."""
        st = self._state
        fresh = st.batches_consumed == 0 and not any(st.worker_cursors) and not st.consumed
        produced = 0
        it = iter(self._dataloader())
        try:
            for batch in it:
                meta = batch.pop("_meta")
                w = int(meta["worker"])
                st.worker_cursors[w] = int(meta["cursor"])
                st.next_worker = (w + 1) % self.readers
                for name in _COUNTS:
                    self._epoch[name][w] = int(meta[name])
                if not batch:  # a reader's tail item: counts only
                    continue
                st.batches_consumed += 1
                st.samples_consumed += len(batch["key"])
                produced += 1
                yield batch
                if self.epoch_batches is not None and st.batches_consumed >= self.epoch_batches:
                    break
        finally:
            del it  # shuts the worker processes down, also when the consumer stops early
        if produced == 0 and fresh:
            stats = self.stats
            raise ValueError(
                f"rank {self.rank} got no clips from {plural(len(self.urls), 'shard')} ({self.urls[0]} ...): "
                f"{stats['errors']} corrupt samples/shards, {plural(stats['skipped'], 'video')} shorter than "
                f"{plural(self.cfg.clip_span, 'frame')}, batch size {self.batch_size}; check the shards, lower "
                "data.frames/frame_stride, set data.short_videos=loop, or use data.drop_last=false"
            )
        self._end_epoch()

    def __iter__(self) -> Iterator[Batch]:
        if not self.train:
            yield from self.epoch_iter()
            return
        while True:
            yield from self.epoch_iter()
