"""Rank helpers that work with or without torch.distributed, and process-group start-up from env.

Every launcher works: torchrun and deepspeed set RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT;
under Slurm (submitit, a straight ``srun``) :mod:`vqvdm_scale.engine.cluster` maps SLURM_PROCID,
SLURM_NTASKS, SLURM_LOCALID and the node list to them; a plain ``python`` run is a one-rank group.
"""

from __future__ import annotations

import datetime
import os
import random
import socket
import sys
import threading
import time
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist

from vqvdm_scale.engine.cluster import Launch, export_torch_env, node_name

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
    """Start the process group of whatever launcher started this process; return (rank, world).

    ``timeout_s`` bounds every collective until :func:`set_collective_timeout` shortens it (start-up
    may wait minutes for a JIT op build on another rank; a step should not).
    """
    launch = export_torch_env()
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1 and "MASTER_PORT" not in os.environ:
        # A plain `python script.py` run: a one-rank group on a free port, so DeepSpeed finds it up.
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
        if get_world_size() > 1:
            watch_parent(launch)
    return get_rank(), get_world_size()


def describe_rank(device: torch.device) -> str:
    """One line per rank for the start of a job: host, rank, local rank, world size, device, launcher."""
    launch = export_torch_env()
    job = f", slurm job {launch.job_id}" if launch.job_id else ""
    return (
        f"rank {get_rank()}/{get_world_size()} on {node_name()}: local rank {get_local_rank()}, "
        f"device {device}, launched by {launch.launcher}{job}"
    )


def set_collective_timeout(seconds: float) -> None:
    """Bound every later collective of the default group by ``seconds`` (a dead peer ends the job)."""
    if is_dist():
        dist.set_timeout(datetime.timedelta(seconds=seconds))


def watch_parent(launch: Launch, every_s: float = 2.0) -> None:
    """Exit this rank when its launcher dies (it is re-parented), rather than train on as an orphan.

    Only for launched ranks (torchrun, deepspeed, srun, submitit): a plain ``python`` run may
    outlive its shell on purpose (nohup).
    """
    if launch.launcher == "python":
        return
    parent = os.getppid()

    def check() -> None:
        while True:
            time.sleep(every_s)
            if os.getppid() != parent:
                sys.stderr.write(
                    f"rank {get_rank()}: its launcher (pid {parent}) is gone; exiting instead of training on\n"
                )
                sys.stderr.flush()
                os._exit(1)

    threading.Thread(target=check, name="watch-parent", daemon=True).start()


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


def max_over_ranks(value: int) -> int:
    """The largest ``value`` of all ranks, on every rank (one small all-reduce)."""
    if not is_dist():
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def gather_floats(values: list[float]) -> list[list[float]]:
    """Every rank's ``values`` (same length on all), by rank, on every rank (one small all-gather)."""
    if not is_dist():
        return [list(values)]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    mine = torch.tensor(values, dtype=torch.float64, device=device)
    out = [torch.empty_like(mine) for _ in range(get_world_size())]
    dist.all_gather(out, mine)
    return [t.tolist() for t in out]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, by rank, on every rank (``all_gather_object``; for small results)."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_tensors(tensors: list[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s, in place (same shapes everywhere; with NCCL
    they must be on this rank's GPU)."""
    if not is_dist():
        return
    for t in tensors:
        dist.broadcast(t, src=src)


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
