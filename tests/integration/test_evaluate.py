"""launchers/evaluate.py end to end on tiny synthetic shards (issue 13).

The detectors are randomly initialised networks of the exact I3D / C3D / LPIPS architectures (the published
weights cannot be downloaded here), and the LDM is a random tiny U-Net export: the numbers prove the
plumbing, the protocol record and the rank independence, not video quality.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.helpers import free_port
from vqvdm_scale.config.core import UserError
from vqvdm_scale.evaluate.config import EvalConfig
from vqvdm_scale.evaluate.main import main as evaluate_main
from vqvdm_scale.metrics.protocol import ProtocolConfig
from vqvdm_scale.metrics.real_clips import open_real
from vqvdm_scale.sample.api import SampleConfig

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic shards of 36-frame videos, a random tiny tokenizer, and a random class-conditional LDM export
    with context frames (so videos can be extended for FVD_128 and the drift curve)."""
    from vqvdm_scale.diffusion import DiffusionConfig
    from vqvdm_scale.formats.latent_shards import LatentStats
    from vqvdm_scale.formats.ldm_export import EMA_FILE, LatentSpec, save_ema
    from vqvdm_scale.formats.tokenizer_export import export_tokenizer, load_tokenizer
    from vqvdm_scale.models.tokenizer import VQTokenizer, tokenizer_preset
    from vqvdm_scale.models.unet.model import UNet3D
    from vqvdm_scale.models.unet.presets import unet_preset
    from vqvdm_scale.prep.synthetic import make_synthetic_shards

    root = tmp_path_factory.mktemp("eval")
    make_synthetic_shards(
        str(root / "videos"),
        num_classes=2,
        videos_per_class=4,
        num_frames=36,
        size=24,
        resolution=16,
        shard_size=2,
    )
    torch.manual_seed(0)
    tcfg = tokenizer_preset("tiny")
    export_tokenizer(VQTokenizer(tcfg).eval(), tcfg, root / "tokenizer.safetensors")
    fingerprint = load_tokenizer(root / "tokenizer.safetensors")[2]
    unet = unet_preset("tiny", in_channels=8, num_classes=2, use_fps=True, context_frames=True)
    spec = LatentSpec(shape=(8, 4, 4, 4), stats=LatentStats(torch.zeros(8), torch.ones(8)), fps=8.0)
    (root / "ckpt").mkdir()
    save_ema(
        root / "ckpt" / EMA_FILE,
        UNet3D(unet).state_dict(),
        unet,
        DiffusionConfig(context_mode="random_mask"),  # extends videos through known frames (fvd128, drift)
        spec,
        fingerprint,
        5,
        ["a", "b"],
    )
    return {
        "root": root,
        "videos": root / "videos",
        "tokenizer": root / "tokenizer.safetensors",
        "ema": root / "ckpt" / EMA_FILE,
    }


def _env() -> dict[str, str]:
    """This process's environment without the one-rank process group that an in-process main() set up."""
    drop = {"MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE"}
    return {
        **{k: v for k, v in os.environ.items() if k not in drop},
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
    }


def _cfg(setup: dict[str, Path], tmp: Path, **kw: Any) -> EvalConfig:
    base: dict[str, Any] = dict(
        real=str(setup["videos"]),
        run=str(setup["ema"]),
        tokenizer=str(setup["tokenizer"]),
        random_detectors=True,
        protocol=ProtocolConfig(num_real=8, num_fake=4, is_preset="tgan", is_samples=4, long_frames=32),
        sample=SampleConfig(steps=2, guidance=2.0),
        batch_size=2,
        cache_dir=str(tmp / "cache"),
        output=str(tmp / "results.json"),
        progress=False,
    )
    base.update(kw)
    return EvalConfig(**base)


def test_results_json_records_the_protocol_and_two_ranks_give_the_same_numbers(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    """FVD, KVD, IS and the reconstruction metrics in one process, then the same command on 2 ranks."""
    res = evaluate_main(_cfg(setup, tmp_path, metrics=["fvd", "kvd", "is", "recon"]))
    saved = json.loads((tmp_path / "results.json").read_text())
    m = saved["metrics"]
    assert m["fvd"] > 0 and np.isfinite(m["fvd"]) and np.isfinite(m["kvd"])
    assert m["is"]["samples"] == 4 and m["is"]["mean"] >= 1.0 and "std" in m["is"]
    assert {"psnr", "ssim", "lpips", "rfvd"} <= m["recon"].keys() and m["recon"]["clips"] == 8
    assert len(saved["detectors"]["i3d"]["sha256"]) == 64 and len(saved["detectors"]["c3d"]["sha256"]) == 64
    assert len(saved["real"]["manifest_sha256"]) == 64 and saved["real"]["resolution"] == 16
    assert saved["real"]["clips"]["16f"]["videos"] == 8
    p = saved["protocol"]
    assert (p["num_real"], p["num_fake"], p["frames"], p["stride"]) == (8, 4, 16, 1)
    assert p["is"]["preset"] == "tgan" and p["is"]["tgan_crop"] and p["is"]["splits"] == 1 and "kvd" in p
    f = saved["fake"]
    assert (f["sampler"], f["steps"], f["guidance"], f["weights"], f["seed"]) == ("ddim", 2, 2.0, "ema", 0)
    assert f["count"] == 4 and f["class_balanced"] and saved["world_size"] == 1
    assert saved["code"]["version"] and "git_commit" in saved["code"]
    assert m == res["metrics"]

    out2 = tmp_path / "two" / "results.json"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(REPO / "launchers" / "evaluate.py"),
        "--real",
        str(setup["videos"]),
        "--run-dir",
        str(setup["ema"]),
        "--tokenizer",
        str(setup["tokenizer"]),
        "--metrics",
        "fvd,kvd,is,recon",
        "--random-detectors",
        "--num-real",
        "8",
        "--num-samples",
        "4",
        "--is-samples",
        "4",
        "--is-preset",
        "tgan",
        "--steps",
        "2",
        "--guidance",
        "2",
        "--batch-size",
        "2",
        "--cache-dir",
        str(tmp_path / "cache2"),
        "--output",
        str(out2),
        "progress=false",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(out2.read_text())
    assert two["world_size"] == 2
    for key in ("fvd", "kvd"):
        assert two["metrics"][key] == pytest.approx(m[key], rel=1e-6)
    assert two["metrics"]["is"]["mean"] == pytest.approx(m["is"]["mean"], rel=1e-6)
    for key in ("psnr", "ssim", "lpips", "rfvd"):
        assert two["metrics"]["recon"][key] == pytest.approx(m["recon"][key], rel=1e-5)


def test_lossless_fake_folder_and_the_real_feature_cache(setup: dict[str, Path], tmp_path: Path) -> None:
    """sample.py --format npy writes frames that evaluate.py --fake reads; the second run reads the real
    features from the cache and gives the same FVD; an mp4-only folder is refused in one line."""
    from vqvdm_scale.formats.frames import find_videos, read_frames
    from vqvdm_scale.sample.main import SampleRunConfig
    from vqvdm_scale.sample.main import main as sample_main

    fake = tmp_path / "fake"
    sample_main(
        SampleRunConfig(
            checkpoint=str(setup["ema"]),
            tokenizer=str(setup["tokenizer"]),
            num_videos=4,
            all_classes=True,
            output=str(fake),
            formats=["npy", "mp4"],
            progress=False,
            sample=SampleConfig(steps=2),
        )
    )
    videos = find_videos(fake)
    assert len(videos) == 4 and read_frames(videos[0]).shape == (16, 16, 16, 3)
    cfg = _cfg(setup, tmp_path, run=None, fake=str(fake), metrics=["fvd", "kvd"])
    first = evaluate_main(cfg)
    second = evaluate_main(cfg)
    assert not first["real"]["clips"]["16f"]["from_cache"] and second["real"]["clips"]["16f"]["from_cache"]
    assert second["metrics"] == first["metrics"] and second["fake"]["source"] == "files"

    mp4_only = tmp_path / "mp4_only"
    mp4_only.mkdir()
    for p in fake.glob("*.mp4"):
        (mp4_only / p.name).write_bytes(p.read_bytes())
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "launchers" / "evaluate.py"),
            "--real",
            str(setup["videos"]),
            "--fake",
            str(mp4_only),
            "--random-detectors",
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "H.264" in proc.stderr and "--format npy" in proc.stderr


def test_fvd128_and_the_drift_curve_extend_videos_clip_by_clip(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    """32-frame videos are two 16-frame clips: FVD over the whole videos and one FVD + latent stats per step."""
    res = evaluate_main(_cfg(setup, tmp_path, metrics=["fvd128", "drift"]))
    m = res["metrics"]
    assert np.isfinite(m["fvd128"]) and m["fvd128"] > 0
    assert [s["step"] for s in m["drift"]] == [0, 1] and [s["frames"] for s in m["drift"]] == [
        [0, 16],
        [16, 32],
    ]
    assert all(np.isfinite(s["fvd"]) and s["latent_std"] > 0 for s in m["drift"])
    assert res["real"]["clips"]["32f"]["videos"] == 8


def test_guidance_sweep_writes_a_result_per_weight_a_table_and_a_plot(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    from PIL import Image

    out = evaluate_main(_cfg(setup, tmp_path, metrics=["fvd"], sweep="guidance=1,3"))
    assert [r["guidance"] for r in out["sweep"]] == [1.0, 3.0]
    for w in ("1", "3"):
        saved = json.loads((tmp_path / f"results_guidance{w}.json").read_text())
        assert saved["fake"]["guidance"] == float(w)
    table = (tmp_path / "results_sweep.md").read_text().splitlines()
    assert len(table) == 4 and table[2].startswith("| 1 |")
    assert Image.open(tmp_path / "results_sweep.png").size == (480, 320)


def test_missing_detector_file_is_one_line_naming_the_published_file(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "launchers" / "evaluate.py"),
            "--real",
            str(setup["videos"]),
            "--run",
            str(setup["ema"]),
            "--tokenizer",
            str(setup["tokenizer"]),
            "--i3d",
            str(tmp_path / "i3d.pt"),
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "i3d_torchscript.pt" in proc.stderr and "nothing is downloaded" in proc.stderr


def test_split_must_match_the_split_file_the_shards_were_made_from(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    d = tmp_path / "shards"
    d.mkdir()
    for p in setup["videos"].iterdir():
        (d / p.name).write_bytes(p.read_bytes())
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["params"]["split_file"] = "/data/ucfTrainTestlist/trainlist01.txt"
    (d / "manifest.json").write_text(json.dumps(manifest))
    assert open_real(str(d), "train").split_file == "trainlist01.txt"
    with pytest.raises(UserError, match="trainlist01.txt, not a test split"):
        open_real(str(d), "test")
