"""The ``slurm:`` settings of a submission, and the sbatch parameters they become.

They come, lowest first, from the defaults here, a ``configs/slurm/*.yaml`` file (``--slurm-config``),
the stage config's own top-level ``slurm:`` section, the launcher's ``--nodes``/``--partition``/...
options, and ``slurm.key=value`` overrides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from vqvdm_scale.config import ConfigError

Cluster = Literal["slurm", "local", "debug"]


@dataclass
class SlurmConfig:
    """Where and how a stage runs as a submitit job.

    Args:
        cluster: "slurm" (sbatch), "local" (submitit's local executor: processes on this machine, for a
            dry run of the job logic) or "debug" (in this process, one task).
        nodes: nodes per job.
        gpus_per_node: GPUs per node; one task (rank) runs per GPU, so it is also the tasks per node.
        request_gpus: ask Slurm for the GPUs (``--gpus-per-node``); false on a CPU-only cluster, where
            ``gpus_per_node`` still sets the tasks per node.
        cpus_per_task: CPU cores per rank (data workers + the rank itself).
        time: wall-clock limit HH:MM:SS (or D-HH:MM:SS); the job gets ``signal_delay_s`` of notice
            (submitit's USR2), saves and requeues itself up to ``max_requeue`` times.
        partition, account, qos, constraint, mem: passed to sbatch as they are ("" = not set).
        signal_delay_s: how long before the time limit Slurm sends USR2.
        max_requeue: how many time-limit requeues a job may take (preemptions do not count).
        array_tasks: encode stage only: how many independent array tasks share the input shards (0 =
            one per 4 shards, at most 64); array_parallelism caps how many run at once (0 = no cap).
        setup: shell lines run before ``srun`` in the sbatch script (``module load ...``).
        extra: further sbatch options, ``{option: value}`` (e.g. ``{reservation: X}``).
    """

    cluster: Cluster = "slurm"
    nodes: int = 1
    gpus_per_node: int = 1
    request_gpus: bool = True
    cpus_per_task: int = 4
    time: str = "24:00:00"
    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    mem: str = ""
    signal_delay_s: int = 120
    max_requeue: int = 3
    array_tasks: int = 0
    array_parallelism: int = 0
    setup: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    job_name: str = ""

    def __post_init__(self) -> None:
        if self.cluster not in ("slurm", "local", "debug"):
            raise ConfigError(f"slurm.cluster: 'slurm', 'local' or 'debug', got {self.cluster!r}")
        for name in ("nodes", "gpus_per_node", "cpus_per_task"):
            if getattr(self, name) < 1:
                raise ConfigError(f"slurm.{name} must be >= 1, got {getattr(self, name)}")
        if self.array_tasks < 0 or self.array_parallelism < 0 or self.max_requeue < 0:
            raise ConfigError("slurm.array_tasks, array_parallelism and max_requeue must be >= 0")
        _ = self.timeout_min  # validates the time format

    @property
    def timeout_min(self) -> int:
        """The wall-clock limit in whole minutes (rounded up)."""
        m = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d\d):(\d\d)", self.time.strip())
        if not m:
            raise ConfigError(f"slurm.time: HH:MM:SS or D-HH:MM:SS, got {self.time!r} (--time 04:00:00)")
        days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
        return days * 1440 + hours * 60 + minutes + (1 if seconds else 0)

    @property
    def tasks_per_node(self) -> int:
        """One rank per GPU."""
        return self.gpus_per_node

    def sbatch_parameters(self, job_name: str) -> dict[str, Any]:
        """submitit's SlurmExecutor parameters (its sbatch names) for this config."""
        params: dict[str, Any] = {
            "job_name": self.job_name or job_name,
            "nodes": self.nodes,
            "ntasks_per_node": self.tasks_per_node,
            "cpus_per_task": self.cpus_per_task,
            "time": self.timeout_min,
            "signal_delay_s": self.signal_delay_s,
        }
        if self.request_gpus:
            params["gpus_per_node"] = self.gpus_per_node
        for name in ("partition", "account", "qos", "constraint", "mem"):
            if getattr(self, name):
                params[name] = getattr(self, name)
        if self.array_parallelism:
            params["array_parallelism"] = self.array_parallelism
        if self.setup:
            params["setup"] = list(self.setup)
        if self.extra:
            params["additional_parameters"] = dict(self.extra)
        return params


def split_slurm_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """``slurm.x=y`` overrides (without the prefix) and the stage's own overrides."""
    slurm = [o.removeprefix("slurm.") for o in overrides if o.startswith("slurm.")]
    return slurm, [o for o in overrides if not o.startswith("slurm.")]
