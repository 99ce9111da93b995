"""The resumable job runner both offline jobs share (make_shards, encode_latents).

A job writes one output shard plus a JSON sidecar, atomically (:mod:`vqvdm_scale.formats.shard_io`:
tmp tar -> sidecar -> rename). A re-run of the same command keeps every shard whose sidecar matches
the job's plan hash (everything that changes its bytes) and whose sha256 still checks out, and redoes
the rest; the per-item skip report lives in the sidecars and is merged into the manifest.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Optional, Protocol, TypeVar

import fsspec

from vqvdm_scale.formats.shard_io import finished_sidecar, remove_tmps
from vqvdm_scale.monitor.progress import JobProgress
from vqvdm_scale.prep.worker_pool import Watch, run_watched

__all__ = ["Job", "count_reasons", "plan_hash", "progress_bar", "remove_strays", "run_jobs", "split_finished"]


class Job(Protocol):
    """One output shard of an offline job."""

    index: int
    plan: str

    @property
    def name(self) -> str:
        """The output shard's file name."""
        ...

    @property
    def sidecar(self) -> str:
        """Its sidecar's file name."""
        ...


J = TypeVar("J", bound=Job)


def plan_hash(plan: Mapping[str, Any]) -> str:
    """A short hash of everything that changes an output shard's bytes."""
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]


def count_reasons(skipped: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Skipped items counted by their ``reason``, sorted by reason."""
    return dict(sorted(Counter(str(s["reason"]) for s in skipped).items()))


def finished(
    fs: fsspec.AbstractFileSystem,
    root: str,
    job: Job,
    same: Callable[[dict[str, Any]], bool] = lambda side: True,
) -> Optional[dict[str, Any]]:
    """The sidecar of ``job``'s whole shard written under its plan (and ``same``), or None to redo it."""
    return finished_sidecar(
        fs, root, job.name, job.sidecar, lambda side: side.get("plan") == job.plan and same(side)
    )


def split_finished(
    fs: fsspec.AbstractFileSystem,
    root: str,
    jobs: Sequence[J],
    same: Callable[[J, dict[str, Any]], bool] = lambda job, side: True,
) -> tuple[dict[int, dict[str, Any]], list[J]]:
    """(sidecars of the jobs already done by index, the jobs still to run), in job order."""
    done: dict[int, dict[str, Any]] = {}
    todo: list[J] = []
    for job in jobs:
        side = finished(fs, root, job, functools.partial(same, job))
        if side is None:
            todo.append(job)
        else:
            done[job.index] = side
    return done, todo


def run_jobs(
    todo: Sequence[J], write: Callable[[J, Watch], dict[str, Any]], workers: int = 0
) -> Iterator[tuple[J, dict[str, Any]]]:
    """Run ``write(job, watch)`` on every job: inline, or on ``workers`` > 1 processes (as each finishes).

    On processes, a worker that dies (the out-of-memory killer) costs a retry, then the input it was on
    (:func:`~vqvdm_scale.prep.worker_pool.run_watched`); inline, the watch skips nothing.
    """
    if workers > 1 and len(todo) > 1:
        yield from run_watched(todo, write, workers)
    else:
        for job in todo:
            yield job, write(job, Watch())


def remove_strays(fs: fsspec.AbstractFileSystem, root: str, jobs: Iterable[Job]) -> None:
    """Delete the temporaries a killed run left for ``jobs`` (their shards and sidecars)."""
    remove_tmps(fs, root, [name for job in jobs for name in (job.name, job.sidecar)])


def progress_bar(
    total: Optional[int], desc: str, enabled: bool, unit: str = "video", position: int = 0
) -> JobProgress:
    """The jobs' progress: a bar on a terminal, a line a minute in a log (off with progress=false)."""
    return JobProgress(total, desc, enabled, unit=unit, position=position)
