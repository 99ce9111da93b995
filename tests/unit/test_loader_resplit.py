"""Re-splitting an epoch over a new layout (world size, workers): every sample of an epoch exactly once.

The ranks are simulated in this process: a :class:`ResumableLoader` takes its rank and world size
explicitly, so a "job" is a list of loaders stepped in lockstep, and a "resume" is what
:meth:`~vqvdm_scale.train.loop.Trainer.resume` hands each new rank: its own saved state (rank 0's for a
rank the old job did not have) plus every old rank's state as ``peers``.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
import webdataset as wds

from vqvdm_scale.data import LoaderState, ResumableLoader
from vqvdm_scale.data.reader import StreamConfig


def _decode(sample: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    return {"x": torch.tensor([int(sample["txt"])]), "key": sample["__key__"]}


def _shards(root: Path, counts: list[int]) -> list[str]:
    urls, index = [], 0
    for s, count in enumerate(counts):
        url = str(root / f"shard-{s:06d}.tar")
        with wds.TarWriter(url) as tw:
            for _ in range(count):
                tw.write({"__key__": f"{index:05d}", "txt": str(index)})
                index += 1
        urls.append(url)
    return urls


class Job:
    """``world`` loaders (ranks) stepped together, as a data-parallel job does; records (epoch, key) per rank."""

    def __init__(
        self,
        urls: list[str],
        world: int,
        workers: int,
        old: Optional[list[dict[str, Any]]] = None,
        **cfg: Any,
    ) -> None:
        stream = StreamConfig(num_workers=workers, shuffle_buffer=3, drop_last=False, seed=7, **cfg)
        self.loaders = []
        for rank in range(world):
            state = None
            if old is not None:  # as Trainer.resume: own state (or rank 0's) + every old rank's as peers
                own = json.loads(json.dumps(old[rank] if rank < len(old) else old[0]))  # via JSON, as saved
                state = LoaderState.from_dict({**own, "peers": old})
            self.loaders.append(
                ResumableLoader(stream, urls, _decode, batch_size=2, rank=rank, world_size=world, train=True, state=state)
            )  # fmt: skip
        self.iters: list[Iterator[Any]] = [iter(loader) for loader in self.loaders]
        self.seen: list[tuple[int, str]] = []  # (epoch, key), every rank's
        self.by_rank: list[list[tuple[int, str]]] = [[] for _ in range(world)]

    def steps(self, n: int) -> None:
        """``n`` lockstep steps: one batch from every rank."""
        for _ in range(n):
            for loader, it in zip(self.loaders, self.iters, strict=True):
                keys = next(it)["key"]
                used = [(loader.state.epoch, key) for key in keys]  # the epoch of the batch just yielded
                self.seen += used
                self.by_rank[loader.rank] += used

    def until(self, epoch: int, every: bool = True) -> None:
        """Step until every rank (or, ``every=False``, the first rank) has reached ``epoch``."""
        reached = min if every else max
        while reached(loader.state.epoch for loader in self.loaders) < epoch:
            self.steps(1)

    def save(self) -> list[dict[str, Any]]:
        """Every rank's state (what each rank_XXXXX.pt holds), then stop the readers."""
        states = [loader.state_dict() for loader in self.loaders]
        for it in self.iters:
            it.close()  # type: ignore[attr-defined]
        return states


def _counts(jobs: list[Job], epoch: int) -> Counter[str]:
    return Counter(key for job in jobs for e, key in job.seen if e == epoch)


def test_two_one_three_two_layouts_see_every_sample_once_per_epoch(tmp_path: Path) -> None:
    # uneven shards: 3 ranks x 2 workers over 8 shards leave ranks with different shares, so the ranks
    # reach the end of an epoch at different steps and a checkpoint can hold ranks in two epochs
    urls = _shards(tmp_path, [5, 6, 4, 6, 5, 3, 6, 5])
    everything = {f"{i:05d}" for i in range(40)}
    a = Job(urls, world=2, workers=2)
    a.steps(3)
    b = Job(urls, world=1, workers=1, old=a.save())  # lost a node, and workers changed too
    b.steps(4)
    c = Job(urls, world=3, workers=2, old=b.save())  # more nodes than at the start
    c.until(1, every=False)
    saved = c.save()
    assert len({s["epoch"] for s in saved}) == 2, "the scenario should leave ranks in two epochs"
    d = Job(urls, world=2, workers=1, old=saved)
    assert [loader.state.epoch for loader in d.loaders] == [0, 0]  # the oldest epoch is finished first
    d.until(2)
    jobs = [a, b, c, d]
    for epoch in (0, 1):
        counts = _counts(jobs, epoch)
        assert set(counts) == everything, f"epoch {epoch} never used {sorted(everything - set(counts))}"
        assert set(counts.values()) == {1}, {k: n for k, n in counts.items() if n > 1}
    # the epoch after a re-split is an ordinary one: each rank reads it in the order of a job that never
    # changed layout
    ref = Job(urls, world=2, workers=1)
    ref.until(2)
    d.steps(3)
    ref.steps(3)
    for rank in range(2):
        ours, theirs = ([k for e, k in job.by_rank[rank] if e == 2] for job in (d, ref))
        n = min(len(ours), len(theirs))
        assert n >= 4 and ours[:n] == theirs[:n]


def test_a_resumed_job_on_the_new_layout_continues_the_resplit_exactly(tmp_path: Path) -> None:
    urls = _shards(tmp_path, [4, 4, 4, 4])
    a = Job(urls, world=2, workers=1)
    a.steps(2)
    old = a.save()
    b = Job(urls, world=1, workers=2, old=old)
    b.steps(2)
    c = Job(urls, world=1, workers=2, old=b.save())  # same layout as b: an ordinary exact resume
    c.until(1)
    straight = Job(urls, world=1, workers=2, old=old)  # b without the interruption
    straight.until(1)
    assert [k for e, k in b.seen + c.seen if e == 0] == [k for e, k in straight.seen if e == 0]
    counts = _counts([a, b, c], 0)
    assert set(counts.values()) == {1} and len(counts) == 16


def test_missing_rank_state_cannot_resplit_and_moves_to_the_next_epoch(tmp_path: Path) -> None:
    urls = _shards(tmp_path, [4, 4, 4, 4])
    a = Job(urls, world=2, workers=1)
    a.steps(2)
    states = a.save()
    with pytest.warns(UserWarning, match="cannot continue exactly"):
        b = Job(urls, world=1, workers=1, old=states[:1])  # rank 1's file is gone
    assert b.loaders[0].state.epoch == 1


def test_resampled_streams_warn_that_there_is_nothing_to_resplit(tmp_path: Path) -> None:
    urls = _shards(tmp_path, [4, 4, 4, 4])
    a = Job(urls, world=2, workers=1, resampled=True, epoch_samples=4)
    a.steps(3)
    with pytest.warns(UserWarning, match="resampled"):
        b = Job(urls, world=1, workers=1, old=a.save(), resampled=True, epoch_samples=4)
    state = b.loaders[0].state
    assert (state.epoch, state.batches_consumed) == (1, 1)  # the epoch's count goes on, with fresh streams
    b.steps(2)


def test_a_rank_replays_only_the_old_readers_that_decide_its_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vqvdm_scale.data import pipeline

    urls = _shards(tmp_path, [3] * 8)
    layouts = [
        {"world_size": 4, "num_workers": 1, "cursors": [[2], [1], [3], [2]]},
        {"world_size": 2, "num_workers": 2, "cursors": [[1, 2], [0, None]]},
    ]

    def used(upto: int, within: Optional[list[str]] = None) -> frozenset[tuple[str, str]]:
        return pipeline.consumed_samples(
            urls, layouts[:upto], seed=3, epoch=1, shuffle_buffer=2, within=within
        )

    def shards(rank: int, world: int) -> list[str]:
        return pipeline.reader_shards(urls, rank=rank, world_size=world, seed=3, epoch=1)

    first, both = used(1), used(2)
    assert len(first) == 8
    replayed: list[int] = []
    original = pipeline.shard_sample_pipeline

    def counted(*args: Any, **kwargs: Any) -> Any:
        replayed.append(kwargs["rank"])
        return original(*args, **kwargs)

    monkeypatch.setattr(pipeline, "shard_sample_pipeline", counted)
    for rank in range(2):  # 4 -> 2 ranks: each new rank's shards were read by 2 of the 4 old readers
        mine = shards(rank, 2)
        assert used(1, mine) == {u for u in first if u[0] in mine}
        assert sorted(replayed) == [rank, rank + 2]
        replayed.clear()
    for rank in range(3):  # on 3 ranks after both layouts: the same samples as a full replay, filtered
        mine = shards(rank, 3)
        assert used(2, mine) == {u for u in both if u[0] in mine}


def test_shards_downloaded_ahead_change_nothing_the_loaders_yield(tmp_path: Path) -> None:
    urls = _shards(tmp_path, [5, 6, 4, 6, 5, 3])
    plain = Job(urls, world=2, workers=2)
    plain.until(2)
    ahead = Job(urls, world=2, workers=2, shards_ahead=2)
    ahead.until(2)
    assert ahead.seen == plain.seen
    first = Job(urls, world=2, workers=2, shards_ahead=2)
    first.steps(3)
    resumed = Job(urls, world=2, workers=2, old=first.save(), shards_ahead=2)
    resumed.until(2)
    both = first.seen + resumed.seen
    assert len(both) >= len(plain.seen) - 4 and both[: len(plain.seen)] == plain.seen[: len(both)]
