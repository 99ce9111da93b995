"""The shared distributed test helper itself: results come back by rank and failures surface."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from tests.helpers import run_on_ranks


def _allreduce(rank: int, world: int) -> float:
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    return float(t.item())


def _fail(rank: int, world: int) -> None:
    if rank == 1:
        raise ValueError("boom on rank 1")


def test_run_on_ranks_allreduce() -> None:
    assert run_on_ranks(_allreduce, 2, timeout=60) == [3.0, 3.0]


def test_run_on_ranks_reports_errors() -> None:
    with pytest.raises(RuntimeError, match="boom on rank 1"):
        run_on_ranks(_fail, 2, timeout=60)
