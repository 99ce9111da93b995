"""Launchers without Slurm: multi-node deepspeed on one machine, a dead rank or launcher, Ctrl-C.

Real processes of launchers/train_ldm.py on the tiny LDM preset (randomly initialised) and the session's
tiny latent cache.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
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
    ldm_overrides,
    tb_losses,
    wait_for,
)
from tests.helpers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
TRAIN = str(REPO / "launchers" / "train_ldm.py")
STEPS = 30


def _run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env or job_env())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def test_deepspeed_two_nodes_equals_one_node_two_ranks(tiny_latent_cache: dict, tmp_path: Path) -> None:
    one = tmp_path / "one_node"
    cfg = ["--config", str(LDM_TINY)]
    torchrun = [PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    _run([*torchrun, TRAIN, *cfg, *ldm_overrides(tiny_latent_cache, one, STEPS)])

    two = tmp_path / "two_nodes"
    hostfile = tmp_path / "hostfile"  # two different names: they need not resolve with --no_ssh
    hostfile.write_text("nodeA slots=1\nnodeB slots=1\n")
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [
                DEEPSPEED,
                "--hostfile",
                str(hostfile),
                "--num_nodes",
                "2",
                "--no_ssh",
                "--node_rank",
                str(node),
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                port,
                TRAIN,
                *cfg,
                *ldm_overrides(tiny_latent_cache, two, STEPS),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=job_env(),
        )  # fmt: skip
        for node in (0, 1)
    ]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert "rank 0/2" in outs[0] and "rank 1/2" in outs[1]
    assert tb_losses(two) == tb_losses(one) and len(tb_losses(one)) == STEPS
    got, want = final_weights(two, STEPS), final_weights(one, STEPS)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_dead_launcher_and_rank_end_the_job(tiny_latent_cache: dict, tmp_path: Path) -> None:
    run = tmp_path / "run"
    port = free_port()
    overrides = ldm_overrides(tiny_latent_cache, run, 100_000, "run.ckpt_every=10", "run.step_timeout_s=20")
    procs = []
    for rank in (0, 1):
        env = {**job_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        # Each rank under its own launcher shell (the trailing `true` keeps bash from exec'ing python).
        line = " ".join([PY, TRAIN, "--config", str(LDM_TINY), *overrides]) + "; true"
        procs.append(
            subprocess.Popen(
                ["bash", "-c", line], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    try:
        wait_for(run / "checkpoints" / "step_00000010" / "COMPLETE", timeout=180)
        rank1 = int(
            subprocess.run(["pgrep", "-P", str(procs[1].pid)], capture_output=True, text=True).stdout.split()[
                0
            ]
        )
        rank0 = int(
            subprocess.run(["pgrep", "-P", str(procs[0].pid)], capture_output=True, text=True).stdout.split()[
                0
            ]
        )
        procs[1].kill()  # rank 1's launcher dies; rank 1 must notice and leave
        t0 = time.time()
        for pid, limit in ((rank1, 15.0), (rank0, 20.0 + 40.0)):  # rank 0: its collective times out
            while _alive(pid):
                assert time.time() - t0 < limit, (
                    f"pid {pid} still runs {limit:.0f}s after its peer's launcher died"
                )
                time.sleep(0.5)
        out0 = procs[0].communicate(timeout=60)[0]
        assert "Traceback" in out0 or "error" in out0.lower()
    finally:
        for p in procs:
            p.kill()
        subprocess.run(["pkill", "-f", str(run)], timeout=30)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited
        return f.read().split()[2] != "Z"


def test_ctrl_c_saves_and_says_how_to_resume(tiny_latent_cache: dict, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [
        PY,
        TRAIN,
        "--config",
        str(LDM_TINY),
        *ldm_overrides(tiny_latent_cache, run, 100_000, "run.ckpt_every=10"),
    ]
    proc = subprocess.Popen(cmd, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(run / "checkpoints" / "step_00000010" / "COMPLETE", timeout=180)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    line = next(x for x in out.splitlines() if "stopped at step" in x)
    step = int(line.split("stopped at step ")[1].split()[0])
    assert (
        f"(SIGINT received); saved {run / 'checkpoints' / f'step_{step:08d}'}; re-run the same command"
        in line
    )
    assert (run / "checkpoints" / f"step_{step:08d}" / "COMPLETE").exists()
    assert "Traceback" not in err
