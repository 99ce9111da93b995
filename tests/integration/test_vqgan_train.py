"""Stage-1 training end to end on synthetic shards: 2-rank ZeRO-2, checkpoints, TensorBoard, export, resume.

The tokenizer and discriminators are the real tiny-preset networks, randomly initialised; LPIPS is
off (its VGG weights are not downloadable here) except in the missing-weights test.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tests.helpers import run_on_ranks
from vqvdm_scale.config import load_config
from vqvdm_scale.engine.checkpoint import latest_checkpoint
from vqvdm_scale.formats.tokenizer_export import ClipGeometry, load_tokenizer, read_geometry
from vqvdm_scale.losses.vqgan_loss import VQGANLoss
from vqvdm_scale.prep.synthetic import make_synthetic_shards
from vqvdm_scale.train.vqgan import VQGANRunConfig, VQGANTrainer

TINY = REPO / "configs" / "vqgan" / "tiny.yaml"


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vq_shards") / "synthetic"
    make_synthetic_shards(
        str(out), num_classes=2, videos_per_class=4, num_frames=12, size=24, resolution=16, shard_size=2
    )
    return out


def _overrides(shards: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        f"data.train_shards={shards}",
        f"run.dir={run_dir}",
        "data.frames=8",
        "data.resolution=16",
        "data.num_workers=1",
        "data.shuffle_buffer=0",
        "train.micro_batch_size=2",
        "run.log_every=1",
        "run.progress=false",
        "loss.disc_start_step=2",
        "run.media_every=2",
        *extra,
    ]


def _train(rank: int, world: int, overrides: list[str]) -> list[dict[str, float]]:
    cfg = load_config(VQGANRunConfig, TINY, overrides)
    trainer = VQGANTrainer(cfg)
    logs: list[dict[str, float]] = []
    step = trainer.micro_step

    def record(batch: dict) -> dict[str, float] | None:
        out = step(batch)
        if out is not None:
            logs.append(out)
        return out

    trainer.micro_step = record  # type: ignore[method-assign]
    trainer.fit()
    return logs


def test_two_rank_zero2_run_writes_checkpoints_events_and_export(shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_on_ranks(
        _train,
        2,
        timeout=300,
        args=(_overrides(shards, run, "train.max_steps=4", "run.ckpt_every=2", "train.zero_stage=2"),),
    )
    assert latest_checkpoint(run / "checkpoints") == run / "checkpoints" / "step_00000004"
    assert (run / "checkpoints" / "step_00000002" / "COMPLETE").exists()
    events = list((run / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    model, cfg, fp = load_tokenizer(run / "tokenizer.safetensors")
    assert len(fp) == 64 and cfg.codebook_size == 64
    # the export records the clips it was trained on (data.frames=8, data.resolution=16) and their grid
    assert read_geometry(run / "tokenizer.safetensors") == ClipGeometry(8, 16, 1, (8, 2, 4, 4))
    with torch.no_grad():
        rec, q = model(torch.zeros(1, 3, 8, 16, 16))
    assert rec.shape == (1, 3, 8, 16, 16) and q.indices.shape == (1, 2, 4, 4)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in (
        "train/recon",
        "train/vq",
        "train/g_gan",
        "train/d_loss",
        "train/perplexity",
        "train/usage",
        "perf/samples_per_s",
        "perf/data_wait_pct",
        "perf/peak_mem_gib",
        "lr/autoencoder",
        "grad_norm/autoencoder",
        "eval/psnr",
        "eval/ssim",
    ):
        assert tag in tags, tag
    assert "eval/input_vs_reconstruction" in acc.Tags()["images"]


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(shards: Path, tmp_path: Path) -> None:
    common = ("train.max_steps=4", "run.ckpt_every=10", "train.zero_stage=1")
    full = run_on_ranks(_train, 1, timeout=300, args=(_overrides(shards, tmp_path / "a", *common),))[0]
    first = run_on_ranks(
        _train, 1, timeout=300, args=(_overrides(shards, tmp_path / "b", *common, "run.stop_after=2"),)
    )[0]
    rest = run_on_ranks(_train, 1, timeout=300, args=(_overrides(shards, tmp_path / "b", *common),))[0]
    assert len(first) == 2 and len(rest) == 2
    keys = ("loss", "recon", "vq", "d_loss", "g_gan")
    assert [[s[k] for k in keys] for s in first + rest] == [[s[k] for k in keys] for s in full]
    # The held-out clips are the run's, not each invocation's first batch: eval PSNR matches after resume.
    assert _scalars(tmp_path / "b", "eval/psnr") == _scalars(tmp_path / "a", "eval/psnr")
    assert sorted(_scalars(tmp_path / "a", "eval/psnr")) == [2, 4]


def _scalars(run: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[int, float] = {}
    for f in sorted((run / "tb").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        out.update({e.step: e.value for e in acc.Scalars(tag)} if tag in acc.Tags()["scalars"] else {})
    return out


def test_bf16_run_trains_with_the_gan_on(shards: Path, tmp_path: Path) -> None:
    """The GPU precision path on CPU: bf16 engines, the discriminator fed in its own dtype, losses finite."""
    logs = run_on_ranks(
        _train,
        1,
        timeout=300,
        args=(_overrides(shards, tmp_path / "bf16", "train.max_steps=3", "train.precision=bf16"),),
    )[0]
    assert len(logs) == 3
    assert all(math.isfinite(v) for row in logs for v in row.values())
    assert "d_loss" in logs[-1] and "g_gan" in logs[-1]  # both updates ran (before the fix, bf16 raised here)


def test_missing_lpips_weights_fail_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    cfg = load_config(VQGANRunConfig, TINY, ["loss.perceptual_weight=1.0"])
    with pytest.raises(FileNotFoundError, match=r"vgg16-397923af\.pth.*lpips_weights|lpips_weights.*vgg16"):
        VQGANLoss(cfg.loss)


def test_zero3_is_refused_with_a_clear_message() -> None:
    from vqvdm_scale.config import ConfigError

    with pytest.raises(ConfigError, match=r"zero_stage=3 is not supported for the VQGAN.*use 2"):
        load_config(VQGANRunConfig, TINY, ["train.zero_stage=3"])
