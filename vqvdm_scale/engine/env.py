"""Rank helpers that work with or without torch.distributed, and process-group start-up from env.

The launcher sets the environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT (deepspeed's
launcher and torchrun do; a plain ``python`` run becomes a one-rank group). Slurm's own variables
(srun, submitit) are not read yet.
"""

from __future__ import annotations

import datetime
import os
import random
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist

Backend = Literal["auto", "nccl", "gloo"]


def is_dist() -> bool:
    """True when a process group is up."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Global rank (0 without a process group)."""
    return dist.get_rank() if is_dist() else int(os.environ.get("RANK", 0))


def get_world_size() -> int:
    """World size (1 without a process group)."""
    return dist.get_world_size() if is_dist() else int(os.environ.get("WORLD_SIZE", 1))


def get_local_rank() -> int:
    """Rank on this node."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """True on global rank 0."""
    return get_rank() == 0


def print0(*args: Any, **kwargs: Any) -> None:
    """print on rank 0 only."""
    if is_main():
        print(*args, **kwargs, flush=True)


def barrier() -> None:
    """dist.barrier when a group is up, else nothing."""
    if is_dist():
        dist.barrier()


def pick_device(device: str = "auto") -> torch.device:
    """'auto' -> this rank's CUDA device when there is one, else CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.set_device(get_local_rank())
        return torch.device("cuda", get_local_rank())
    return torch.device(device)


def init_distributed(backend: Backend = "auto", timeout_s: float = 1800.0) -> tuple[int, int]:
    """Start the process group when the launcher asked for more than one rank; return (rank, world)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1 and "MASTER_PORT" not in os.environ:
        # A plain `python script.py` run: a one-rank group on a free port, so DeepSpeed finds it up.
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1"
        )
    if not is_dist():
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(get_local_rank())
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return get_rank(), get_world_size()


def any_rank_true(flag: bool, device: torch.device | None = None) -> bool:
    """True on every rank if ``flag`` is True on any rank (used to skip a NaN step everywhere)."""
    if not is_dist():
        return flag
    if device is None:
        device = (
            torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend() == "nccl"
            else torch.device("cpu")
        )
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """This rank's RNG states, as tensors and plain values (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
