"""Which launcher started this process, and the torch.distributed variables it implies.

torchrun and ``deepspeed`` (one node, or ``--num_nodes N`` with a hostfile) export RANK, WORLD_SIZE,
LOCAL_RANK and MASTER_ADDR/PORT themselves. Slurm does not: a submitit task or a straight
``srun -n 8 python ...`` has only SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and a compressed node list.
:func:`export_torch_env` maps those to the torch variables, through submitit's own Slurm job
environment (its node-list parser and its per-job master port), so every launcher forms one world.

A batch script that runs ``python ...`` itself, outside ``srun``, is one process even when the job
asked for many tasks: Slurm sets SLURM_NTASKS there too, but no SLURM_STEP_ID, and it is treated as a
single-rank run.
"""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass
from typing import Optional

_TORCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_PORTS = (20000, 60000)  # submitit's range for a job-derived master port
_exported: dict[str, Launch] = {}


def node_name() -> str:
    """This node's name: Slurm's (SLURMD_NODENAME) when there is one, else the host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


@dataclass(frozen=True)
class Launch:
    """What started this process: ``launcher`` and the world it implies."""

    launcher: str  # "torchrun/deepspeed", "submitit", "srun" or "python"
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: Optional[int]
    job_id: Optional[str] = None


def slurm_job_id() -> Optional[str]:
    """This process's Slurm job id (``<array job>_<task>`` in an array), or None outside Slurm."""
    if "SLURM_JOB_ID" not in os.environ:
        return None
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ["SLURM_JOB_ID"]


def _in_srun_step() -> bool:
    return "SLURM_STEP_ID" in os.environ and "SLURM_PROCID" in os.environ


def detect() -> Launch:
    """The launch this process is part of (nothing is exported; see :func:`export_torch_env`)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return Launch(
            "torchrun/deepspeed",
            int(env["RANK"]),
            int(env["WORLD_SIZE"]),
            int(env.get("LOCAL_RANK", 0)),
            env.get("MASTER_ADDR", "127.0.0.1"),
            int(env["MASTER_PORT"]) if "MASTER_PORT" in env else None,
            slurm_job_id(),
        )
    if _in_srun_step():
        from submitit.slurm.slurm import SlurmJobEnvironment

        job = SlurmJobEnvironment()
        # The step's own nodes and task count: a job may run several steps on parts of its allocation.
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "")
        hosts = job.hostnames if nodes == env.get("SLURM_JOB_NODELIST") else _step_hosts(nodes)
        world = int(env.get("SLURM_STEP_NUM_TASKS", job.num_tasks))
        launcher = "submitit" if env.get("SUBMITIT_EXECUTOR") == "slurm" else "srun"
        # One port per job step, the same on every task of it (submitit derives it from the job id).
        seed = f"{job.job_id}.{env.get('SLURM_STEP_ID', '')}"
        port = int(env["MASTER_PORT"]) if "MASTER_PORT" in env else random.Random(seed).randint(*_PORTS)
        return Launch(launcher, job.global_rank, world, job.local_rank, hosts[0], port, slurm_job_id())
    if env.get("SUBMITIT_EXECUTOR") == "local":
        from submitit.helpers import TorchDistributedEnvironment

        tde = TorchDistributedEnvironment()
        return Launch("submitit", tde.rank, tde.world_size, tde.local_rank, tde.master_addr, tde.master_port)
    return Launch("python", 0, 1, 0, "127.0.0.1", None, slurm_job_id())


def _step_hosts(nodelist: str) -> list[str]:
    from submitit.slurm.slurm import _parse_node_list

    return _parse_node_list(nodelist) or [socket.gethostname()]


def export_torch_env() -> Launch:
    """Set RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT from the launch, where unset; return it.

    The launch is detected once per process: after the export, the variables would read as torchrun's.
    """
    if "launch" in _exported:
        return _exported["launch"]
    launch = _exported["launch"] = detect()
    if launch.launcher in ("torchrun/deepspeed", "python"):
        return launch
    values = {
        "RANK": launch.rank,
        "WORLD_SIZE": launch.world_size,
        "LOCAL_RANK": launch.local_rank,
        "MASTER_ADDR": launch.master_addr,
        "MASTER_PORT": launch.master_port,
    }
    for key in _TORCH_VARS:
        os.environ.setdefault(key, str(values[key]))
    return launch
