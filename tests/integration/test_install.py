"""A non-editable install: build the wheel, install it into a bare folder, run the quickstart elsewhere.

The wheel must carry the shipped configs (package data) and the quickstart must find them through the
installed package, not through a checkout's ``configs/``: it runs with the repository out of sight
(cwd is a temporary folder, the installed copy comes first on ``PYTHONPATH``). Dependencies come from
the running interpreter's environment; nothing is downloaded (``--no-index``, ``--no-build-isolation``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.integration.test_quickstart import TINY_RUN
from vqvdm_scale.config.shipped import shipped_configs

# Built from a copy of the working tree: an in-place build would write build/ and *.egg-info into the
# checkout that other processes are using. Environments, caches and run outputs are not part of a build.
_NOT_SOURCE = {".venv", ".git", "runs", "build", "dist", "quickstart_out", ".whl", ".gl"}  # and *_cache
_STEPS = TINY_RUN


def _ignore(folder: str, names: list[str]) -> set[str]:
    skip = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
    if Path(folder) == REPO:
        skip |= {n for n in names if n in _NOT_SOURCE or n.endswith("_cache")}
    return skip


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.slow
def test_wheel_ships_the_configs_and_the_installed_quickstart_runs_outside_the_checkout(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", OMP_NUM_THREADS="1")
    src, wheels, site, work = (tmp_path / d for d in ("src", "wheels", "site", "work"))
    shutil.copytree(REPO, src, symlinks=True, ignore=_ignore)
    pip = [sys.executable, "-m", "pip"]
    _run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", ".", "-w", str(wheels)],
        src,
        env,
        timeout=120,
    )
    (wheel,) = wheels.glob("vqvdm_scale-*.whl")
    with zipfile.ZipFile(wheel) as z:
        shipped = {n.removeprefix("vqvdm_scale/configs/") for n in z.namelist() if n.endswith(".yaml")}
    assert shipped == set(shipped_configs())
    _run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], tmp_path, env, 120)

    work.mkdir()
    env["PYTHONPATH"] = str(site)
    probe = "import vqvdm_scale; print(vqvdm_scale.__file__)"
    where = Path(_run([sys.executable, "-c", probe], work, env, timeout=60).strip())
    assert where.is_relative_to(site), f"vqvdm_scale was imported from {where}, not the install in {site}"
    entry = [sys.executable, "-m", "vqvdm_scale.quickstart", "out=qs", *_STEPS]
    resolved = yaml.safe_load(_run([*entry, "--dry-run"], work, env, timeout=120))
    for key in ("vqgan_config", "ldm_config"):
        assert Path(resolved[key]).is_relative_to(site), resolved[key]

    _run(entry, work, env, timeout=400)
    out = work / "qs"
    for part in ("shards/manifest.json", "vqgan/tokenizer.safetensors", "latents/manifest.json"):
        assert (out / part).exists(), part
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input_class_accuracy"] == 1.0
    assert len(summary["sample_files"]) == 2 and len(summary["long_files"]) == 2
    assert all((work / p).exists() for p in summary["sample_files"] + summary["long_files"])
    # The run trained with the shipped tiny LDM config (its CPU tuning: v-prediction on a cosine schedule).
    ldm = yaml.safe_load((out / "ldm" / "config.yaml").read_text())
    assert (ldm["diffusion"]["prediction"], ldm["diffusion"]["schedule"]) == ("v", "cosine")
