"""Stop a run whose object store stayed unreachable: agree on every rank, checkpoint, one line (resume = re-run).

The loaders retry a shard through their budget (:mod:`vqvdm_scale.data.shard_open`) and then raise
:class:`~vqvdm_scale.formats.faults.StorageUnreachable` on the rank that reads it. That rank alone cannot
save (a DeepSpeed save needs every rank), so the ranks agree after each batch fetch, as they do on stop
signals, and every rank saves the last finished step with the loader state of that step's start: the
re-run continues at the exact sample, never with a changed epoch. A step reads all its micro-batches
before it computes any (:meth:`~vqvdm_scale.train.loop.Trainer.fit`), so with gradient accumulation too
the store is lost between steps, not half-way through one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, NoReturn

from vqvdm_scale.engine.checkpoint import latest_checkpoint
from vqvdm_scale.engine.env import any_rank_true, barrier, print0
from vqvdm_scale.formats.faults import StorageUnreachable
from vqvdm_scale.monitor.meters import StepTimer

__all__ = ["StorageUnreachable", "next_batch", "stop_on_lost_store"]


def next_batch(trainer: Any, batches: Iterator[Any], micro_steps_done: int, timer: StepTimer) -> Any:
    """The next batch; :class:`StorageUnreachable` on every rank when any rank's loader lost the store.

    At a step's first micro-batch the loader state is kept: it is the one a lost store saves. Only this
    rank's own wait for its loader goes to ``timer``, not the agreement after it, where a rank waits
    for a slower peer: that would hide which rank's storage is slow.
    """
    if micro_steps_done == 0 and trainer.loader is not None:
        trainer.step_loader_state = trainer.loader.state_dict()
    lost: StorageUnreachable | None = None
    batch = None
    t0 = time.perf_counter()
    try:
        batch = next(batches)
    except StorageUnreachable as e:
        lost = e
    timer.add_data_wait(time.perf_counter() - t0)
    if trainer.world_size > 1:
        if any_rank_true(lost is not None):
            raise lost or StorageUnreachable(
                "storage unreachable: another rank lost the store (see its line); re-run the same command to resume"
            )
    elif lost is not None:
        raise lost
    return batch


def stop_on_lost_store(trainer: Any, lost: StorageUnreachable) -> NoReturn:
    """Checkpoint the last finished step (every rank) unless it is saved already; raise the one line."""
    latest = latest_checkpoint(trainer.ckpt_dir)
    if trainer.loader is not None and (latest is None or latest.name != f"step_{trainer.step:08d}"):
        trainer.save(loader_state=getattr(trainer, "step_loader_state", None))
    print0(f"[{trainer.stage}] storage lost at step {trainer.step}; checkpoint in {trainer.ckpt_dir}")
    trainer.logger.close()
    barrier()
    raise StorageUnreachable(lost.line) from None
