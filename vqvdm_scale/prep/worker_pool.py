"""Offline jobs on worker processes that may die: a killed worker costs a retry, then the input it was on.

The out-of-memory killer ends a worker with SIGKILL, and a ``multiprocessing.Pool`` then waits forever
for the task it lost. :func:`run_watched` runs the jobs on a ``concurrent.futures.ProcessPoolExecutor``
instead, which notices a dead worker (BrokenProcessPool), and gives each job a :class:`Watch`: the job
says which of its inputs it is on (:meth:`Watch.enter`), so the parent knows the input a worker died on.

After a death, the jobs that had started are run again one at a time, alone in a fresh worker (a death
there is theirs alone); the ones that had not started go back to the pool. An input that a worker dies
on twice - once anywhere, once again alone - is given to the job as skipped (:meth:`Watch.skipped`, with
the reason the caller counts), and the job runs once more without it. So the input in flight is retried
once, then skipped, and every job finishes. A job that kills its worker twice before its first input, or
workers that die while no job runs, stop the run with a :class:`~vqvdm_scale.config.UserError`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, TypeVar

from vqvdm_scale.config.core import UserError

__all__ = ["DIED_TWICE", "Watch", "run_watched"]

DIED_TWICE = (
    "a worker process died on it twice (killed, e.g. by the out-of-memory killer, or crashed); "
    "it was retried once, then skipped"
)
_STARTED = -1  # the watch position of a job that started but has not reached its first input
_IDLE_DEATHS = 3  # pools that broke with no job started, before the run gives up


@dataclass(frozen=True)
class Watch:
    """What a job and the parent tell each other: the input the job is on, and the inputs it must skip.

    ``path`` is a small local file the worker writes its position to (empty: inline, nothing is written).
    """

    path: str = ""
    skip: Mapping[int, str] = field(default_factory=dict)

    def enter(self, position: int) -> None:
        """The job is now on its input number ``position`` (one fixed-width write: a kill cannot tear it)."""
        if not self.path:
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, f"{position:+020d}".encode(), 0)
        finally:
            os.close(fd)

    def skipped(self, position: int) -> Optional[str]:
        """Why input ``position`` must be skipped (a worker died on it twice), or None to process it."""
        return self.skip.get(position)

    def position(self) -> Optional[int]:
        """Parent side: the last position the job entered, ``-1`` before its first input, None if it never started."""
        try:
            with open(self.path, "rb") as f:
                return int(f.read())
        except (OSError, ValueError):
            return None


class _Job(Protocol):
    index: int

    @property
    def name(self) -> str:
        """The job's output, for messages."""
        ...


J = TypeVar("J", bound=_Job)


def _executor(workers: int) -> ProcessPoolExecutor:
    # imported here, not at the top: a worker imports this module to run _call, and shard_io pulls in
    # webdataset and torch, which only the job itself should pay for
    from vqvdm_scale.formats.shard_io import mp_context

    return ProcessPoolExecutor(workers, mp_context=mp_context())


Write = Callable[[Any, Watch], dict[str, Any]]


def _call(write: Write, job: Any, watch: Watch) -> dict[str, Any]:
    """Worker side: mark the job started, then run it."""
    watch.enter(_STARTED)
    return write(job, watch)


class _Book:
    """The parent's record of each job's deaths: positions seen at a death, and the inputs to skip."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.seen: dict[int, set[int]] = {}
        self.skip: dict[int, dict[int, str]] = {}

    def watch(self, job: _Job) -> Watch:
        """A fresh watch for the next run of ``job``."""
        path = os.path.join(self.folder, f"{job.index}.at")
        if os.path.exists(path):
            os.remove(path)
        return Watch(path, dict(self.skip.get(job.index, {})))

    def died(self, job: _Job, watch: Watch) -> None:
        """``job``'s worker died: a position seen at an earlier death is skipped from now on."""
        position = watch.position()
        if position is None:
            position = _STARTED
        seen = self.seen.setdefault(job.index, set())
        if position not in seen:
            seen.add(position)
            return
        if position == _STARTED:
            raise UserError(
                f"a worker process died twice before {job.name} read its first input (out of memory at start-up?); "
                "run with workers=0 to see the error, or give the job more memory"
            )
        self.skip.setdefault(job.index, {})[position] = DIED_TWICE


def _alone(job: J, write: Write, book: _Book) -> dict[str, Any]:
    """Run ``job`` alone in a fresh worker until it finishes, skipping each input that kills it twice."""
    while True:
        watch = book.watch(job)
        with _executor(1) as executor:
            try:
                return executor.submit(_call, write, job, watch).result()
            except BrokenProcessPool:
                pass
        book.died(job, watch)


def _run_pool(
    queue: Sequence[J], write: Write, workers: int, book: _Book
) -> Generator[tuple[J, dict[str, Any]], None, tuple[list[J], list[J]]]:
    """Run ``queue`` on one pool, yielding each job as it finishes.

    Returns the jobs the pool lost when a worker died: (those that had started, those that had not).
    """
    executor = _executor(min(workers, len(queue)))
    watches = {job.index: book.watch(job) for job in queue}
    futures: dict[Future[dict[str, Any]], J] = {
        executor.submit(_call, write, job, watches[job.index]): job for job in queue
    }
    pending = set(futures)
    yielded: set[int] = set()
    try:
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            errors = [f.exception() for f in finished]
            for future, error in zip(finished, errors, strict=True):
                if error is None:
                    yielded.add(futures[future].index)
                    yield futures[future], future.result()
                elif not isinstance(error, BrokenProcessPool):
                    raise error
            if any(isinstance(e, BrokenProcessPool) for e in errors):
                break
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    started: list[J] = []
    unstarted: list[J] = []
    for future, job in futures.items():
        if job.index in yielded:
            continue
        if future.done() and not future.cancelled() and future.exception() is None:
            yield job, future.result()  # finished while the pool was breaking
        elif watches[job.index].position() is not None:
            book.died(job, watches[job.index])
            started.append(job)
        else:
            unstarted.append(job)
    return started, unstarted


def run_watched(todo: Sequence[J], write: Write, workers: int) -> Iterator[tuple[J, dict[str, Any]]]:
    """``write(job, watch)`` of every job on ``workers`` processes, yielded as each finishes; dead workers
    cost a retry and then the input they died on (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="vqvdm-watch-") as folder:
        book = _Book(folder)
        queue = list(todo)
        idle_deaths = 0
        while queue:
            started, queue = yield from _run_pool(queue, write, workers, book)
            if queue and not started:
                idle_deaths += 1
                if idle_deaths >= _IDLE_DEATHS:
                    raise UserError(
                        f"worker processes died {idle_deaths} times while no job was running (out of memory?); "
                        "run with fewer workers or workers=0"
                    )
            for job in started:
                yield job, _alone(job, write, book)
