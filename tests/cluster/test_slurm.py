"""launchers/submit.py, srun and preemption against a real Slurm cluster (tests/cluster/slurm_up.sh).

Two slurmd daemons on this machine pose as node1 and node2 (2 CPUs each, no GPU), so jobs ask for
ranks with ``--gpus-per-node N --cpu``. The model is the real tiny LDM preset, randomly initialised,
on the session's tiny latent cache. Every wait is bounded: without slurmdbd a finished job's state
is read from ``scontrol`` (kept 600 s), not through submitit's sacct-based wait.
"""

from __future__ import annotations

import filecmp
import json
import subprocess
from pathlib import Path

import pytest
import torch

from tests.cluster.conftest import (
    DEEPSPEED,
    LDM_TINY,
    PY,
    REPO,
    final_weights,
    job_env,
    job_info,
    ldm_overrides,
    submit,
    tb_losses,
    wait_for,
    wait_job,
)

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.timeout(420)]
STEPS = 60
CPU_JOB = ["--cpu", "slurm.cpus_per_task=1"]


def _ldm_job(cache: dict[str, Path], run: Path, nodes: int, ranks_per_node: int, *extra: str) -> str:
    return submit(
        "--stage", "ldm", "--config", str(LDM_TINY), "--nodes", str(nodes), "--gpus-per-node",
        str(ranks_per_node), *CPU_JOB, *extra, *ldm_overrides(cache, run, STEPS, "run.ckpt_every=10"),
    )  # fmt: skip


@pytest.fixture(scope="module")
def reference(
    slurm: None, tiny_latent_cache: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """An uninterrupted 1 node x 2 ranks run, submitted through submit.py."""
    run = tmp_path_factory.mktemp("slurm") / "reference"
    wait_job(_ldm_job(tiny_latent_cache, run, 1, 2, "--time", "01:00:00"), timeout=240)
    return run


def _same_run(run: Path, reference: Path) -> None:
    losses, expected = tb_losses(run), tb_losses(reference)
    assert sorted(losses) == list(range(1, STEPS + 1)), sorted(losses)
    assert losses == expected
    got, want = final_weights(run, STEPS), final_weights(reference, STEPS)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_one_node_two_ranks_finishes_with_its_checkpoint(reference: Path) -> None:
    assert (reference / "checkpoints" / f"step_{STEPS:08d}" / "COMPLETE").read_text() == "world_size=2\n"
    out = "".join(p.read_text() for p in sorted((reference / "slurm").glob("*/*_0_log.out")))
    assert "rank 0/2 on node1" in out and "launched by submitit" in out
    # a job's stdout is a file: plain progress lines, no tqdm bar, and the closing summary
    assert f"[ldm] step {STEPS}/{STEPS} (100%) | loss " in out and "\r" not in out
    assert (
        f"[ldm] done at step {STEPS}: {STEPS} steps in " in out
        and "bad inputs skipped: 0 corrupt samples" in out
    )
    # every rank's step time and data wait reach TensorBoard
    for rank in (0, 1):
        assert len(tb_losses(reference, f"perf_rank/{rank}/s_per_step")) == STEPS
        assert len(tb_losses(reference, f"perf_rank/{rank}/data_wait_pct")) == STEPS
    assert "rank 1/2 on node1" in "".join(p.read_text() for p in (reference / "slurm").glob("*/*_1_log.out"))


def test_two_nodes_one_rank_each_is_the_same_run(
    reference: Path, tiny_latent_cache: dict, tmp_path: Path
) -> None:
    run = tmp_path / "two_nodes"
    wait_job(_ldm_job(tiny_latent_cache, run, 2, 1, "--time", "01:00:00"), timeout=240)
    logs = "".join(p.read_text() for p in (run / "slurm").glob("*/*_log.out"))
    assert "rank 0/2 on node1" in logs and "rank 1/2 on node2" in logs
    _same_run(run, reference)


def test_preemption_requeues_and_resumes_exactly(
    reference: Path, tiny_latent_cache: dict, tmp_path: Path
) -> None:
    run = tmp_path / "preempted"
    job = _ldm_job(
        tiny_latent_cache, run, 1, 2, "--time", "01:00:00"
    )  # >= 50 min: a preemption, not a time-out
    wait_for(run / "checkpoints" / "step_00000010" / "COMPLETE", timeout=180)
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    info = wait_job(job, timeout=300)
    assert info["Restarts"] == "1", info
    out = (run / "slurm" / job / f"{job}_0_log.out").read_text()
    assert "(SIGUSR2 received); saved" in out and "this job is preempted" in out and "Requeued job" in out
    assert "resumed from" in out
    _same_run(run, reference)


def test_time_limit_requeue_resumes_exactly(reference: Path, tiny_latent_cache: dict, tmp_path: Path) -> None:
    # Slurm sends USR2 signal_delay_s before the limit; with a 5-minute limit submitit counts any USR2 as
    # that time-out (it guarantees 80% of the limit or limit - 10 min), which takes the time-out path.
    run = tmp_path / "timed_out"
    job = _ldm_job(tiny_latent_cache, run, 1, 2, "--time", "00:05:00")
    wait_for(run / "checkpoints" / "step_00000010" / "COMPLETE", timeout=180)
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    info = wait_job(job, timeout=300)
    assert info["Restarts"] == "1", info
    out = (run / "slurm" / job / f"{job}_0_log.out").read_text()
    assert "this job is timed-out" in out and "2 remaining timeouts" in out
    _same_run(run, reference)


def test_srun_straight_forms_one_two_rank_world(
    reference: Path, tiny_latent_cache: dict, tmp_path: Path
) -> None:
    run = tmp_path / "srun"
    cmd = ["srun", "-N1", "-n2", "--cpus-per-task=1", PY, str(REPO / "launchers" / "train_ldm.py")]
    overrides = ldm_overrides(tiny_latent_cache, run, STEPS, "run.ckpt_every=10")
    out = subprocess.run(
        [*cmd, "--config", str(LDM_TINY), *overrides],
        capture_output=True,
        text=True,
        timeout=300,
        env=job_env(),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "rank 0/2 on node1" in out.stdout and "rank 1/2 on node1" in out.stdout
    assert "launched by srun" in out.stdout and "[ldm] 2 rank(s)" in out.stdout
    _same_run(run, reference)


def test_second_job_on_a_run_dir_refuses(reference: Path, tiny_latent_cache: dict, tmp_path: Path) -> None:
    run = tmp_path / "locked"
    overrides = ldm_overrides(tiny_latent_cache, run, 100_000, "run.ckpt_every=10")
    job = ["--stage", "ldm", "--config", str(LDM_TINY), "--gpus-per-node", "1", *CPU_JOB, *overrides]
    first = submit(*job)
    try:
        wait_for(run / "checkpoints" / "step_00000010" / "COMPLETE", timeout=180)
        second = submit(*job)
        wait_job(second, timeout=120, states=("FAILED",))
        err = (run / "slurm" / second / f"{second}_0_log.err").read_text()
        assert "is in use by pid" in err and f"slurm job {first}" in err, err[-2000:]
        assert job_info(first)["JobState"] == "RUNNING"
    finally:
        subprocess.run(["scancel", first], timeout=30)


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "slurm" not in p.parts)


def test_encode_job_array_equals_one_process(slurm: None, tiny_latent_cache: dict, tmp_path: Path) -> None:
    out = tmp_path / "array_latents"
    args = [f"tokenizer={tiny_latent_cache['tokenizer']}", f"input={tiny_latent_cache['videos']}"]
    args += [f"output={out}", "frames=8", "resolution=16", "progress=false"]
    first = submit("--stage", "encode", "--array-tasks", "4", *CPU_JOB, "--time", "00:10:00", *args)
    for task in range(4):
        wait_job(f"{first}_{task}", timeout=240)
    single = tiny_latent_cache["latents"]  # encoded by one process with the same settings
    assert _tree(out) == _tree(single) and _tree(out)
    match, mismatch, errors = filecmp.cmpfiles(single, out, _tree(single), shallow=False)
    assert mismatch == ["manifest.json"] and not errors, (mismatch, errors)  # it names its own folder:
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (single, out)]
    assert [m["params"].pop("output") for m in manifests] == [str(single), str(out)]
    assert manifests[0] == manifests[1]
    logs = "".join(p.read_text() for p in (out / "slurm").rglob("*_log.out"))
    # a task that saw shards missing left the manifest to a later one; every other task wrote it (two
    # that finish at the same moment both find every shard complete, and the same manifest results)
    deferred, wrote = logs.count("writes manifest.json"), logs.count(" latent samples (")
    assert 1 <= deferred <= 3 and deferred + wrote == 4, logs[-3000:]


def test_deepspeed_slurm_launcher_forms_the_same_world(
    reference: Path, tiny_latent_cache: dict, tmp_path: Path
) -> None:
    # deepspeed --launcher slurm runs `srun -n N python train_ldm.py`; the script maps Slurm's variables.
    run = tmp_path / "ds_slurm"
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node1 slots=1\nnode2 slots=1\n")
    cmd = ["salloc", "-N2", "-n2", "--cpus-per-task=1", DEEPSPEED, "--launcher", "slurm", "--no_ssh_check"]
    cmd += ["--master_addr", "node1", "--hostfile", str(hostfile), str(REPO / "launchers" / "train_ldm.py")]
    overrides = ldm_overrides(tiny_latent_cache, run, STEPS, "run.ckpt_every=10")
    out = subprocess.run(
        [*cmd, "--config", str(LDM_TINY), *overrides],
        capture_output=True,
        text=True,
        timeout=300,
        env=job_env(),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "rank 0/2 on node1" in out.stdout and "rank 1/2 on node2" in out.stdout
    _same_run(run, reference)
