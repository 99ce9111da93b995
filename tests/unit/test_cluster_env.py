"""Launch detection, the run lock, NCCL and extension settings, and plain progress lines (no cluster needed).

Slurm's variables are set by hand here, as srun sets them; the real srun/submitit runs are in tests/cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vqvdm_scale.config import UserError
from vqvdm_scale.engine import cluster
from vqvdm_scale.engine.extensions import cpu_tag, default_extensions_dir, pending_ops, prepare_extensions
from vqvdm_scale.engine.nccl import export_nccl_env
from vqvdm_scale.monitor.progress import Progress
from vqvdm_scale.train.run_lock import RunLock

_SLURM = {
    "SLURM_JOB_ID": "77",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_NTASKS": "4",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NODEID": "1",
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith(("SLURM_", "SUBMITIT_")) or key in (
            "RANK",
            "WORLD_SIZE",
            "LOCAL_RANK",
            "MASTER_ADDR",
            "MASTER_PORT",
        ):
            monkeypatch.delenv(key)
    return monkeypatch


def test_an_srun_step_is_one_world_with_the_first_node_as_master(clean_env: pytest.MonkeyPatch) -> None:
    for k, v in {
        **_SLURM,
        "SLURM_STEP_ID": "0",
        "SLURM_STEP_NUM_TASKS": "4",
        "SLURM_STEP_NODELIST": "gpu[07-08]",
    }.items():
        clean_env.setenv(k, v)
    launch = cluster.detect()
    assert (launch.launcher, launch.rank, launch.world_size, launch.local_rank) == ("srun", 3, 4, 1)
    assert launch.master_addr == "gpu07" and launch.job_id == "77"
    assert 20000 <= (launch.master_port or 0) <= 60000
    assert cluster.detect().master_port == launch.master_port  # every task derives the same port
    clean_env.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert cluster.detect().launcher == "submitit"


def test_a_batch_script_outside_srun_is_one_rank(clean_env: pytest.MonkeyPatch) -> None:
    for k, v in _SLURM.items():  # SLURM_NTASKS=4, but no job step: the batch shell's own python
        clean_env.setenv(k, v)
    launch = cluster.detect()
    assert (launch.launcher, launch.world_size) == ("python", 1)


def test_torchrun_variables_win(clean_env: pytest.MonkeyPatch) -> None:
    for k, v in {**_SLURM, "SLURM_STEP_ID": "0", "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "5"}.items():
        clean_env.setenv(k, v)
    launch = cluster.detect()
    assert (launch.launcher, launch.rank, launch.world_size) == ("torchrun/deepspeed", 5, 8)


def _hold_lock(run: Path) -> subprocess.Popen[str]:
    code = (
        "import sys, time; from vqvdm_scale.train.run_lock import RunLock; "
        f"RunLock({str(run)!r}).acquire(); print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_job_on_a_run_dir_refuses_and_a_dead_holder_is_taken_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    holder = _hold_lock(tmp_path)
    try:
        with pytest.raises(UserError, match=rf"is in use by pid {holder.pid} on "):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock(tmp_path)
    lock.acquire()  # the holder is gone: taken over with a warning
    assert f"pid {holder.pid} no longer runs" in capsys.readouterr().err
    assert json.loads((tmp_path / "LOCK").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / "LOCK").exists()


def test_nccl_settings_come_from_config_and_yield_to_the_user(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key in (
        "TORCH_NCCL_ASYNC_ERROR_HANDLING",
        "TORCH_FR_BUFFER_SIZE",
        "TORCH_NCCL_TRACE_BUFFER_SIZE",
        "TORCH_NCCL_DUMP_ON_TIMEOUT",
        "TORCH_FR_DUMP_TEMP_FILE",
        "TORCH_NCCL_DEBUG_INFO_TEMP_FILE",
    ):
        clean_env.delenv(key, raising=False)
    set_now = export_nccl_env(3, 2000, tmp_path / "nccl_trace")
    assert set_now == {
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3",
        "TORCH_FR_BUFFER_SIZE": "2000",
        "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
        "TORCH_FR_DUMP_TEMP_FILE": str(tmp_path / "nccl_trace" / "rank_"),
    }
    assert all(os.environ[k] == v for k, v in set_now.items())
    # torch warns on the deprecated names, so they are never exported
    assert "TORCH_NCCL_TRACE_BUFFER_SIZE" not in os.environ
    assert "TORCH_NCCL_DEBUG_INFO_TEMP_FILE" not in os.environ
    for key in set_now:
        clean_env.delenv(key)
    # the user's own settings win, under the new name or the deprecated one
    clean_env.setenv("TORCH_NCCL_TRACE_BUFFER_SIZE", "50")
    clean_env.setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    set_now = export_nccl_env(3, 2000, None)
    assert set_now == {} and "TORCH_FR_BUFFER_SIZE" not in os.environ
    assert os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert export_nccl_env(None, 0, tmp_path) == {}  # off: nothing exported


def test_the_extension_cache_is_per_user_and_the_first_build_is_announced(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    clean_env.setenv("HOME", str(tmp_path))
    root = prepare_extensions(announce=True)
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(root) == str(default_extensions_dir())
    assert root.is_relative_to(tmp_path / ".cache" / "vqvdm_scale" / "torch_extensions")
    assert f"torch{torch.__version__.split('+')[0]}-py" in root.name and cpu_tag() in root.name
    pending = pending_ops(root)
    if sys.platform == "linux" and not torch.cuda.is_available():
        assert pending == ["deepspeed_shm_comm"]  # what a CPU rank's DeepSpeed start compiles
    out = capsys.readouterr().out
    assert (f"DeepSpeed compiles {pending[0]} into {root} first" in out) if pending else out == ""
    for name in pending:  # as torch leaves a finished build
        (root / name).mkdir()
        (root / name / f"{name}.so").write_bytes(b"")
    assert pending_ops(root) == []
    prepare_extensions(announce=True)
    assert capsys.readouterr().out == ""  # built before: nothing to say
    clean_env.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "mine"))
    assert prepare_extensions(announce=False) == tmp_path / "mine"  # the user's choice wins


def test_progress_is_plain_lines_when_stdout_is_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress("ldm", total=400, initial=0, enabled=True, bar=True)  # pytest's stdout is no terminal
    assert not progress.use_bar
    progress.report(120, 0.81234, 412.3, 3.2, 0.212)
    progress.close()
    out = capsys.readouterr().out
    assert (
        out == "[ldm] step 120/400 (30%) | loss 0.8123 | 412.3 samples/s | data 3% | 0.212 s/step | ETA 59s\n"
    )
    Progress("ldm", 400, 0, enabled=False, bar=True).report(1, 1.0, 1.0, 1.0, 1.0)  # other ranks: silent
    assert capsys.readouterr().out == ""
