"""The ``run:`` section both training stages share: where a run lives and how often it reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from vqvdm_scale.config.core import ConfigError


@dataclass
class RunConfig:
    """Where a run lives and how often it reports.

    Args:
        dir: run directory (config dump, checkpoints/, tb/, exports). Re-running with the same dir resumes.
        seed: global seed; each rank derives its own from it.
        device: "auto" (CUDA when present), "cpu" or "cuda".
        backend: process-group backend; "auto" = NCCL on GPU, gloo on CPU.
        log_every: console + TensorBoard scalars every N optimiser steps.
        ckpt_every: checkpoint every N steps (and always at the end).
        keep_last: how many checkpoints to keep.
        media_every: reconstruction/sample videos in TensorBoard every N steps (0 = off).
        max_nonfinite: stop after this many non-finite losses in a row.
        restart: train from step 0 even though run.dir holds checkpoints none of which is complete
            (without it such a run dir is refused rather than silently restarted).
        save_on_interrupt: a first Ctrl-C finishes the step, saves and leaves (false: stop at once, unsaved).
        start_timeout_s: bound on collectives until the first step is done (start-up may wait for a JIT
            op build or a slow first load on another rank).
        step_timeout_s: bound on every collective after the first step: a rank whose peer died exits
            with an error within this time instead of waiting for ever.
        nccl_async_error_handling: TORCH_NCCL_ASYNC_ERROR_HANDLING (null = torch's default, 3: a failed
            or timed-out collective tears the rank down).
        nccl_trace_buffer: TORCH_FR_BUFFER_SIZE, the flight recorder's size in collectives (0 = off); with
            it on, a timeout dumps each rank's last collectives to <run.dir>/nccl_trace/rank_<r>.
    """

    dir: str = "runs/default"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    log_every: int = 10
    ckpt_every: int = 500
    keep_last: int = 3
    media_every: int = 500
    max_nonfinite: int = 5
    progress: bool = True
    stop_after: Optional[int] = None
    save_on_interrupt: bool = True
    restart: bool = False
    start_timeout_s: float = 1800.0
    step_timeout_s: float = 600.0
    nccl_async_error_handling: Optional[int] = None
    nccl_trace_buffer: int = 2000

    # stop_after: leave after this many steps in this invocation (checkpointing first) while keeping
    # the schedule of train.max_steps; for time-sliced jobs, and how resume is tested.

    def __post_init__(self) -> None:
        for name in ("log_every", "ckpt_every", "keep_last", "max_nonfinite"):
            if getattr(self, name) < 1:
                raise ConfigError(f"run.{name} must be >= 1, got {getattr(self, name)}")
        if self.stop_after is not None and self.stop_after < 1:
            raise ConfigError(f"run.stop_after must be >= 1 or null, got {self.stop_after}")
        if self.nccl_async_error_handling not in (None, 0, 1, 2, 3):
            raise ConfigError(
                f"run.nccl_async_error_handling: 0-3 or null, got {self.nccl_async_error_handling}"
            )
        if self.nccl_trace_buffer < 0:
            raise ConfigError(f"run.nccl_trace_buffer must be >= 0, got {self.nccl_trace_buffer}")
        if self.start_timeout_s <= 0 or self.step_timeout_s <= 0:
            raise ConfigError("run.start_timeout_s and run.step_timeout_s must be > 0 seconds")
        if self.media_every < 0:
            raise ConfigError(f"run.media_every must be >= 0 (0 turns media off), got {self.media_every}")
