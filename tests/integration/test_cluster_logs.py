"""Logs as a Slurm job writes them: stdout and stderr go to a file, not a terminal.

Two gloo ranks train the toy stage of test_train_loop for 4 steps, each rank's output sent to its own
file as srun's ``--output`` does; rank 1's loader is slow, as on a node with slow storage. The files
must hold plain progress lines (no tqdm ``\\r``) and the closing summary, TensorBoard must show each
rank's step time and data wait, and the NCCL settings of the config must be in the environment.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import run_on_ranks
from tests.integration.test_train_loop import ToyConfig, ToyLoader, ToyTrainer
from vqvdm_scale.config import load_config
from vqvdm_scale.engine.checkpoint import latest_checkpoint

SLOW_S = 0.3  # rank 1's wait for every batch


@dataclass
class SlowConfig(ToyConfig):
    slow_rank: int = 1


class SlowLoader(ToyLoader):
    """The toy stream, ``SLOW_S`` late for every batch."""

    def __iter__(self) -> Any:
        for batch in super().__iter__():
            time.sleep(SLOW_S)
            yield batch


class SlowTrainer(ToyTrainer):
    def build_loader(self, state: dict[str, Any] | None) -> ToyLoader:
        loader = SlowLoader if self.rank == self.cfg.slow_rank else ToyLoader
        return loader(self.rank, state)


def _run_logged(rank: int, world: int, run_dir: str, log_dir: str) -> dict[str, str]:
    """Train with this rank's fd 1 and 2 on a file; return the NCCL variables the trainer exported."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(Path(log_dir) / f"rank{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    for key in [k for k in os.environ if k.startswith(("TORCH_NCCL_", "TORCH_FR_"))]:
        del os.environ[key]  # a cluster's own defaults would win over the config
    overrides = [
        f"run.dir={run_dir}",
        "train.max_steps=4",
        "run.log_every=2",
        "run.nccl_async_error_handling=1",
        "run.nccl_trace_buffer=64",
    ]
    try:
        SlowTrainer(load_config(SlowConfig, None, overrides)).fit()  # run.progress left on, as by default
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return {k: v for k, v in os.environ.items() if k.startswith(("TORCH_NCCL_", "TORCH_FR_"))}


def test_a_job_without_a_terminal_logs_plain_lines_a_summary_and_per_rank_timing(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    envs = run_on_ranks(_run_logged, 2, timeout=240, args=(str(run), str(tmp_path)))
    # bytes, not read_text(), which would turn a bar's \r into \n
    logs = [(tmp_path / f"rank{r}.log").read_bytes().decode() for r in range(2)]
    assert all("\r" not in log for log in logs), "a tqdm bar reached a log file"
    number = r"\d+\.\d+"
    for step, pct in ((2, 50), (4, 100)):
        line = (
            rf"^\[toy\] step {step}/4 \({pct}%\) \| loss {number} \| {number} samples/s \| data \d+% \| "
            rf"{number} s/step \| ETA \d+s$"
        )
        assert re.search(line, logs[0], re.M), f"no plain line for step {step} in:\n{logs[0]}"
    assert "[toy] step" not in logs[1]  # rank 0 reports for the job
    summary = re.search(r"^\[toy\] done at step 4: .*$", logs[0], re.M)
    assert summary, logs[0]
    assert re.search(rf"4 steps in \d+s, {number} samples/s; final losses loss={number}; ", summary[0])
    checkpoint = run / "checkpoints" / "step_00000004"
    assert f"checkpoint {checkpoint}; bad inputs skipped: 0 corrupt samples, 0 short videos" in summary[0]
    assert latest_checkpoint(run / "checkpoints") == checkpoint

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    tb = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    for r in range(2):
        for name in ("s_per_step", "data_wait_pct"):
            assert [s for s, _ in tb[f"perf_rank/{r}/{name}"]] == [2, 4]
    # rank 1 waits SLOW_S for every batch (slow storage), rank 0 waits in the gradient all-reduce instead
    for (_, slow), (_, fast) in zip(
        tb["perf_rank/1/data_wait_pct"], tb["perf_rank/0/data_wait_pct"], strict=True
    ):
        assert slow > 50 > fast
    assert all(v >= SLOW_S for _, v in tb["perf_rank/1/s_per_step"])

    for env in envs:  # the trainer exported run.nccl_* (here the test's helper started the group first)
        assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1" and env["TORCH_FR_BUFFER_SIZE"] == "64"
        assert env["TORCH_FR_DUMP_TEMP_FILE"] == str(run / "nccl_trace" / "rank_")
