"""Submit any stage as a submitit job: sbatch on Slurm, processes on this machine, or in-process.

Each task calls the same ``main(cfg)`` as the stage's own entry script (launchers/train_*.py,
data_prep/encode_latents.py, launchers/sample.py, launchers/evaluate.py): submitit starts
``nodes x gpus_per_node`` tasks with ``srun`` and :mod:`vqvdm_scale.engine.cluster` turns Slurm's variables
into one torch world.

Job logs go to ``<run.dir>/slurm/<job id>/`` for vqgan and ldm, ``<output>/slurm/`` for encode and sample,
and ``<folder of output>/slurm/`` for eval (whose output is the results JSON; ``runs/eval`` when it has no
folder).

Preemption and time limits: the job is a submitit ``Checkpointable``. Slurm sends USR2 (``scancel
--signal=USR2``, a preemption, or ``signal_delay_s`` before the time limit); the training loop's handler
only sets a flag, the ranks agree on it at the next step boundary, every rank saves, and then rank 0
hands the signal on to submitit, which pickles the same call again and runs ``scontrol requeue``. The
requeued job re-runs the same command and so resumes from the newest complete checkpoint.

The encode stage is a job array: task ``i`` encodes its own range of input shards (each resumable per
shard), and the task that completes the last shard writes the cache's manifest.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
import yaml

from vqvdm_scale.config import UserError, to_dict
from vqvdm_scale.config.core import _deep_merge, from_dict, parse_overrides, read_yaml, replace
from vqvdm_scale.config.text import redact
from vqvdm_scale.launch.slurm_config import SlurmConfig
from vqvdm_scale.train.signals import last_stop


@dataclass(frozen=True)
class Stage:
    """A stage's root config class, its ``main(cfg)`` and where its job logs go."""

    config: type
    main: Callable[[Any], Any]
    log_root: Callable[[Any], str]


def stages() -> dict[str, Stage]:
    """The stages submit.py runs (imported lazily: each pulls in its own models)."""
    from vqvdm_scale.evaluate.config import EvalConfig
    from vqvdm_scale.evaluate.main import main as eval_main
    from vqvdm_scale.prep.encode_latents import EncodeConfig
    from vqvdm_scale.prep.encode_latents import main as encode_main
    from vqvdm_scale.sample.main import SampleRunConfig
    from vqvdm_scale.sample.main import main as sample_main
    from vqvdm_scale.train.ldm import LDMRunConfig
    from vqvdm_scale.train.ldm import main as ldm_main
    from vqvdm_scale.train.vqgan import VQGANRunConfig
    from vqvdm_scale.train.vqgan import main as vqgan_main

    def local_or(path: str, fallback: str) -> str:
        return path if path and "://" not in path else fallback

    def folder_of(path: str, fallback: str) -> str:
        parent = str(Path(path).parent) if path and "://" not in path else ""
        return parent if parent not in ("", ".") else fallback

    return {
        "vqgan": Stage(VQGANRunConfig, vqgan_main, lambda c: c.run.dir),
        "ldm": Stage(LDMRunConfig, ldm_main, lambda c: c.run.dir),
        "encode": Stage(EncodeConfig, encode_main, lambda c: local_or(c.output, "runs/encode")),
        "sample": Stage(SampleRunConfig, sample_main, lambda c: local_or(c.output, "runs/sample")),
        "eval": Stage(EvalConfig, eval_main, lambda c: folder_of(c.output, "runs/eval")),
    }


class StageTask(submitit.helpers.Checkpointable):
    """One task of a stage's job: ``main(cfg)``; on a preemption, hand on to submitit's requeue."""

    def __init__(self, stage: str, cfg: Any) -> None:
        self.stage = stage
        self.cfg = cfg

    def __call__(self) -> Any:
        result = stages()[self.stage].main(self.cfg)
        stopped_by = last_stop()
        usr = submitit.JobEnvironment._usr_sig()
        if stopped_by == signal.Signals(usr).name and os.environ.get("SUBMITIT_EXECUTOR"):
            # Every rank has saved. Restored by the loop, submitit's own handler now runs: on global rank 0
            # it pickles checkpoint() (this same call) and requeues the job; the other ranks just return.
            os.kill(os.getpid(), usr)
        return result


def load_stage(
    stage: str, config: str | None, overrides: list[str], slurm_file: str | None, flags: dict[str, Any]
) -> tuple[Any, SlurmConfig]:
    """The stage's resolved config and the job's Slurm settings (see slurm_config.py for precedence)."""
    if stage not in stages():
        raise UserError(f"--stage {stage!r} is not one of {', '.join(stages())}")
    data = read_yaml(config) if config else {}
    slurm_data = read_yaml(slurm_file) if slurm_file else {}
    slurm_data = _deep_merge(slurm_data, data.pop("slurm", None) or {})
    slurm_data = _deep_merge(slurm_data, {k: v for k, v in flags.items() if v is not None})
    slurm_over = [o.removeprefix("slurm.") for o in overrides if o.startswith("slurm.")]
    stage_over = [o for o in overrides if not o.startswith("slurm.")]
    slurm = from_dict(SlurmConfig, _deep_merge(slurm_data, parse_overrides(slurm_over)), "slurm")
    cfg = from_dict(stages()[stage].config, _deep_merge(data, parse_overrides(stage_over)))
    return cfg, slurm


def array_ranges(num_shards: int, tasks: int) -> list[str]:
    """``start:stop`` ranges of input shard indices, one per array task, as even as can be."""
    tasks = min(num_shards, tasks or min(64, max(1, -(-num_shards // 4))))
    bounds = [round(i * num_shards / tasks) for i in range(tasks + 1)]
    return [f"{a}:{b}" for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def tasks_for(stage: str, cfg: Any, slurm: SlurmConfig) -> list[StageTask]:
    """One task per job, or for the encode stage one per shard range (a job array)."""
    if stage != "encode":
        return [StageTask(stage, cfg)]
    from vqvdm_scale.data.urls import resolve_shards

    urls = resolve_shards(cfg.input)
    return [StageTask(stage, replace(cfg, shards=r)) for r in array_ranges(len(urls), slurm.array_tasks)]


def executor(stage: str, cfg: Any, slurm: SlurmConfig) -> submitit.AutoExecutor:
    """submitit's AutoExecutor for this stage, logging under ``<log root>/slurm/%j`` (see the module doc)."""
    folder = Path(stages()[stage].log_root(cfg)) / "slurm" / "%j"
    ex = submitit.AutoExecutor(folder=folder, cluster=slurm.cluster, slurm_max_num_timeout=slurm.max_requeue)
    if slurm.cluster == "slurm":
        params = slurm.sbatch_parameters(f"vqvdm-{stage}")
        ex.update_parameters(**{f"slurm_{k}": v for k, v in params.items()})
    else:
        ex.update_parameters(timeout_min=slurm.timeout_min, tasks_per_node=slurm.tasks_per_node, nodes=1)
    if stage == "encode" and slurm.cluster == "slurm":  # array tasks: one process per shard range
        ex.update_parameters(slurm_nodes=1, slurm_ntasks_per_node=1)
    elif stage == "encode":
        ex.update_parameters(tasks_per_node=1)
    return ex


def sbatch_script(stage: str, cfg: Any, slurm: SlurmConfig, array: int) -> str:
    """The sbatch script submitit writes for this submission (what --dry-run prints)."""
    from submitit.slurm.slurm import _make_sbatch_string

    folder = Path(stages()[stage].log_root(cfg)) / "slurm" / "%j"
    params = slurm.sbatch_parameters(f"vqvdm-{stage}")
    if stage == "encode":
        params.update(nodes=1, ntasks_per_node=1)
    command = f"{sys.executable} -u -m submitit.core._submit {folder}"
    return _make_sbatch_string(
        command=command, folder=folder, map_count=array if array > 1 else None, **params
    )


def submit(stage: str, cfg: Any, slurm: SlurmConfig, dry_run: bool = False) -> list[Any]:
    """Submit the stage; print job ids and log paths. With ``dry_run``, print the script and config only."""
    tasks = tasks_for(stage, cfg, slurm)
    if dry_run:
        print(f"# {stage}: {len(tasks)} job(s), resolved config:")
        print(yaml.safe_dump(redact(to_dict(cfg)), sort_keys=False), end="")
        print("# slurm:")
        print(yaml.safe_dump(to_dict(slurm), sort_keys=False), end="")
        if stage == "encode":
            print("# array tasks encode input shards " + ", ".join(t.cfg.shards for t in tasks))
        print("# sbatch script:")
        print(sbatch_script(stage, cfg, slurm, len(tasks)))
        return []
    ex = executor(stage, cfg, slurm)
    if len(tasks) == 1:
        jobs = [ex.submit(tasks[0])]
    else:
        with ex.batch():
            jobs = [ex.submit(t) for t in tasks]
    for job in jobs:
        print(
            f"submitted {stage} job {job.job_id}: stdout {job.paths.stdout}, stderr {job.paths.stderr}",
            flush=True,
        )
    return jobs
