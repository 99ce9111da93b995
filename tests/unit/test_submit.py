"""launchers/submit.py without a cluster: --dry-run's sbatch script, where Slurm settings come from, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from vqvdm_scale.config import load_config
from vqvdm_scale.launch.submit import array_ranges, load_stage
from vqvdm_scale.train.ldm import LDMRunConfig

SUBMIT = str(REPO / "launchers" / "submit.py")
LDM_B = str(REPO / "configs" / "ldm" / "B.yaml")
NEEDED = ["data.train_latents=/data/latents", "tokenizer=/runs/vqgan/tokenizer.safetensors"]


def _submit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, SUBMIT, *args], capture_output=True, text=True, timeout=120)


def test_dry_run_prints_the_sbatch_script_for_two_nodes_of_eight_gpus(tmp_path: Path) -> None:
    run = tmp_path / "ldm_B"
    out = _submit(
        "--stage", "ldm", "--config", LDM_B, "--slurm-config", str(REPO / "configs" / "slurm" / "example.yaml"),
        "--nodes", "2", "--gpus-per-node", "8", "--partition", "h100", "--time", "04:00:00", "--dry-run",
        f"run.dir={run}", *NEEDED, "slurm.cpus_per_task=12",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    script = out.stdout.split("# sbatch script:\n")[1]
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --partition=h100",  # the option beats the file's "gpu"
        "#SBATCH --cpus-per-task=12",  # slurm.key=value beats the file
        "#SBATCH --time=240",
        "#SBATCH --signal=USR2@120",
        f"#SBATCH --output={run}/slurm/%j/%j_0_log.out",
        "export NCCL_DEBUG=WARN",  # the file's setup lines
    ):
        assert line in script, line
    assert "srun --unbuffered" in script and "submitit.core._submit" in script
    assert f"dir: {run}" in out.stdout  # the resolved stage config is printed too
    assert not run.exists()  # nothing was submitted or written


def test_a_stage_config_may_carry_its_slurm_section(tmp_path: Path) -> None:
    cfg_file = tmp_path / "ldm.yaml"
    cfg_file.write_text(f"_base_: {LDM_B}\nslurm:\n  nodes: 4\n  partition: a100\n  request_gpus: false\n")
    cfg, slurm = load_stage("ldm", str(cfg_file), [*NEEDED, "slurm.nodes=3"], None, {"partition": None})
    assert (slurm.nodes, slurm.partition, slurm.request_gpus) == (3, "a100", False)
    assert "gpus_per_node" not in slurm.sbatch_parameters("x")  # a CPU cluster: no GPU request
    # The stage's own entry (deepspeed ... train_ldm.py --config ldm.yaml) ignores the section.
    assert load_config(LDMRunConfig, cfg_file, NEEDED).model == cfg.model


@pytest.mark.parametrize(
    "args, message",
    [
        (["--time", "4h"], "slurm.time: HH:MM:SS or D-HH:MM:SS, got '4h'"),
        (["--nodes", "0"], "slurm.nodes must be >= 1"),
        (["slurm.partitions=x"], "unknown config key 'slurm.partitions'"),
    ],
)
def test_mistakes_are_one_line_with_exit_2(args: list[str], message: str) -> None:
    out = _submit("--stage", "ldm", "--config", LDM_B, *NEEDED, "--dry-run", *args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_encode_array_ranges_cover_every_shard_once() -> None:
    assert array_ranges(4, 4) == ["0:1", "1:2", "2:3", "3:4"]
    assert array_ranges(10, 3) == ["0:3", "3:7", "7:10"]
    assert array_ranges(3, 8) == ["0:1", "1:2", "2:3"]  # never more tasks than shards
    assert len(array_ranges(8, 0)) == 2 and len(array_ranges(400, 0)) == 64  # default: 4 shards a task, <= 64
    bounds = [tuple(map(int, r.split(":"))) for r in array_ranges(1001, 7)]
    assert bounds[0][0] == 0 and bounds[-1][1] == 1001
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))


def test_eval_dry_run_prints_the_script_and_the_resolved_eval_config(tmp_path: Path) -> None:
    out_json = tmp_path / "eval" / "results.json"
    out = _submit(
        "--stage", "eval", "--gpus-per-node", "4", "--cpu", "--time", "02:00:00", "--dry-run",
        "real=/data/ucf101_test", "fake=/runs/fake", "metrics=[fvd,kvd]", "random_detectors=true",
        "protocol.num_fake=64", f"output={out_json}",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    head, script = out.stdout.split("# sbatch script:\n")
    assert head.startswith("# eval: 1 job(s), resolved config:\n")
    cfg = yaml.safe_load(head.split("resolved config:\n")[1].split("# slurm:\n")[0])
    assert (cfg["real"], cfg["fake"], cfg["run"]) == ("/data/ucf101_test", "/runs/fake", None)
    assert cfg["metrics"] == ["fvd", "kvd"] and cfg["random_detectors"] is True
    assert cfg["protocol"]["num_fake"] == 64 and cfg["output"] == str(out_json)
    assert cfg["batch_size"] == 8 and cfg["ema"] is True  # EvalConfig's defaults fill the rest
    for line in (
        "#SBATCH --job-name=vqvdm-eval",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=4",  # one rank per GPU, as for sample
        "#SBATCH --time=120",
        f"#SBATCH --output={tmp_path / 'eval'}/slurm/%j/%j_0_log.out",  # beside the results JSON
    ):
        assert line in script, line
    assert "--gpus-per-node" not in script  # --cpu
    assert "srun --unbuffered" in script and "submitit.core._submit" in script
    assert not out_json.parent.exists()  # nothing was submitted or written


def test_eval_logs_fall_back_to_runs_eval_for_a_bare_output_name() -> None:
    from vqvdm_scale.launch.submit import stages

    cfg, _ = load_stage("eval", None, ["real=/r", "fake=/f", "random_detectors=true"], None, {})
    assert cfg.output == "results.json" and stages()["eval"].log_root(cfg) == "runs/eval"


@pytest.mark.parametrize(
    "args, message",
    [
        (["fake=/runs/fake", "i3d=/w/i3d.pt"], "--metrics fvd,kvd compare with real videos: give --real"),
        (["real=/r", "i3d=/w/i3d.pt"], "give exactly one of --fake DIR or --run DIR"),
        (["real=/r", "fake=/f", "metrics=[fid]"], "--metrics takes a list of fvd, kvd"),
    ],
)
def test_a_bad_eval_config_is_one_line_with_exit_2_before_submitting(
    args: list[str], message: str, tmp_path: Path
) -> None:
    # no --dry-run and no Slurm to submit to: the config must fail before any sbatch is tried
    out = _submit("--stage", "eval", *args, f"output={tmp_path / 'e' / 'results.json'}")
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith("config error: ") and message in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "submitted" not in out.stdout
    assert not (tmp_path / "e").exists()
