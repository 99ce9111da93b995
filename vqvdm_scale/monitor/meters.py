"""Throughput, data-wait, peak memory and MFU meters."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import torch


class StepTimer:
    """Splits wall time into data-wait and compute over a logging window."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start a new window."""
        self.t0 = time.perf_counter()
        self.data_s = 0.0
        self.items = 0
        self.steps = 0

    def add_data_wait(self, seconds: float) -> None:
        """Time spent waiting for the loader."""
        self.data_s += seconds

    def add_step(self, items: int) -> None:
        """One optimiser step that consumed ``items`` samples (on this rank)."""
        self.items += items
        self.steps += 1

    def summary(self, world_size: int) -> dict[str, float]:
        """samples/s (all ranks), s/step and data-wait % over the window."""
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        return {
            "perf/samples_per_s": self.items * world_size / elapsed,
            "perf/s_per_step": elapsed / max(self.steps, 1),
            "perf/data_wait_pct": 100.0 * self.data_s / elapsed,
        }


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (forward and backward if it runs both), by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def mfu(flops_per_step: float, seconds_per_step: float, world_size: int, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s per device over the configured peak."""
    if seconds_per_step <= 0 or peak_tflops <= 0:
        return 0.0
    return flops_per_step / seconds_per_step / world_size / (peak_tflops * 1e12)
