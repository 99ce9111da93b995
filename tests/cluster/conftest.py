"""Helpers for the cluster tests: the local Slurm cluster (tests/cluster/slurm_up.sh), jobs, TensorBoard losses.

Tests marked ``slurm`` need that cluster; they skip, with the reason, where ``sinfo`` finds none, except
when VQVDM_REQUIRE_SLURM=1 (CI sets it after starting the cluster), where they fail instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

LDM_TINY = REPO / "configs" / "ldm" / "tiny.yaml"
PY = sys.executable
# the deepspeed launcher of this interpreter's environment (on PATH when the venv is activated)
DEEPSPEED = str(Path(PY).with_name("deepspeed")) if Path(PY).with_name("deepspeed").exists() else "deepspeed"


def slurm_up() -> str:
    """'' when a Slurm cluster with idle nodes answers here, else why not."""
    if shutil.which("sinfo") is None:
        return "no Slurm client (sinfo) here; start one with tests/cluster/slurm_up.sh"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out"
    if out.returncode != 0 or "idle" not in out.stdout and "mixed" not in out.stdout:
        return f"no Slurm cluster answers ({out.stderr.strip() or out.stdout.strip()}); run tests/cluster/slurm_up.sh"
    return ""


@pytest.fixture(scope="session")
def slurm() -> None:
    """Skip (or, with VQVDM_REQUIRE_SLURM=1, fail) unless the local Slurm cluster is up."""
    why = slurm_up()
    if why and os.environ.get("VQVDM_REQUIRE_SLURM") == "1":
        pytest.fail(f"VQVDM_REQUIRE_SLURM=1 but {why}")
    if why:
        pytest.skip(why)


def ldm_overrides(cache: dict[str, Path], run_dir: Path, steps: int, *extra: str) -> list[str]:
    """A tiny LDM run on the session's tiny latent cache, losses logged every step."""
    return [
        f"data.train_latents={cache['latents']}",
        f"tokenizer={cache['tokenizer']}",
        f"run.dir={run_dir}",
        "data.num_workers=1",
        "data.shuffle_buffer=0",
        "train.micro_batch_size=2",
        "run.log_every=1",
        "run.progress=false",
        "run.media_every=0",
        "sample.steps=2",
        "media_videos=2",
        "model.model_channels=16",
        "model.head_dim=16",
        f"train.max_steps={steps}",
        *extra,
    ]


def job_env() -> dict[str, str]:
    """The environment jobs and launched ranks get: one thread each on the shared cores."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def submit(*args: str, cwd: Path | None = None) -> str:
    """Run launchers/submit.py; return the (first) job id it printed."""
    out = subprocess.run(
        [PY, str(REPO / "launchers" / "submit.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=job_env(),
        cwd=cwd or REPO,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    ids = re.findall(r"submitted \w+ job (\d+)", out.stdout)
    assert ids, out.stdout
    return ids[0]


def job_info(job_id: str) -> dict[str, str]:
    """``scontrol show job`` as a dict (finished jobs stay visible for MinJobAge=600 s)."""
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30
    )
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


def wait_job(job_id: str, timeout: float, states: tuple[str, ...] = ("COMPLETED",)) -> dict[str, str]:
    """Wait (bounded: no slurmdbd here, so submitit's own wait could hang) until the job ends."""
    deadline = time.time() + timeout
    info: dict[str, Any] = {}
    while time.time() < deadline:
        info = job_info(job_id)
        if info.get("JobState") in (
            "COMPLETED",
            "FAILED",
            "CANCELLED",
            "TIMEOUT",
            "NODE_FAIL",
            "OUT_OF_MEMORY",
        ):
            break
        time.sleep(1)
    else:
        subprocess.run(["scancel", job_id], timeout=30)
        raise AssertionError(f"job {job_id} still {info.get('JobState')} after {timeout:.0f}s")
    assert info.get("JobState") in states, f"job {job_id}: {info}"
    return info


def wait_for(path: Path, timeout: float) -> None:
    """Wait until ``path`` exists."""
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} did not appear within {timeout:.0f}s"
        time.sleep(0.2)


def tb_losses(run_dir: Path, tag: str = "train/loss") -> dict[int, float]:
    """Step -> logged value of ``tag`` over every event file of the run (a requeued job adds files)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[int, float] = {}
    for f in sorted((run_dir / "tb").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            for e in acc.Scalars(tag):
                out[e.step] = e.value
    return out


def final_weights(run_dir: Path, step: int) -> dict[str, Any]:
    """The EMA weights the run exported with its checkpoint at ``step``."""
    from safetensors.torch import load_file

    from vqvdm_scale.formats.ldm_export import EMA_FILE

    return load_file(str(run_dir / "checkpoints" / f"step_{step:08d}" / EMA_FILE))
