"""Stage-2 training from a latent cache: 2-rank ZeRO-2 and ZeRO-3 runs, EMA, resume, and the EMA maths.

The networks are the real tiny presets, randomly initialised (no downloads); the cache comes from the
session fixture ``tiny_latent_cache`` (synthetic videos -> random tiny tokenizer -> encode_latents).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO
from tests.helpers import run_on_ranks
from vqvdm_scale.config import ConfigError, load_config
from vqvdm_scale.engine.checkpoint import latest_checkpoint
from vqvdm_scale.engine.ema import EMA
from vqvdm_scale.formats.ldm_export import EMA_FILE, load_ema
from vqvdm_scale.train.ldm import LDMRunConfig, LDMTrainer, resolve_from_cache

TINY = REPO / "configs" / "ldm" / "tiny.yaml"


def _overrides(cache: dict[str, Path], run_dir: Path, *extra: str) -> list[str]:
    return [
        f"data.train_latents={cache['latents']}",
        f"tokenizer={cache['tokenizer']}",
        f"run.dir={run_dir}",
        "data.num_workers=1",
        "data.shuffle_buffer=0",
        "train.micro_batch_size=2",
        "run.log_every=1",
        "run.progress=false",
        "sample.steps=2",
        "media_videos=2",
        "model.model_channels=16",
        "model.head_dim=16",
        *extra,
    ]


def _EVAL(cache: dict[str, Path]) -> list[str]:
    """FVD/KVD at step 3 with random-weight detectors of the exact architectures (no weights here)."""
    return [
        "eval.every=3",
        f"eval.real={cache['videos']}",
        "eval.num_samples=4",
        "eval.random_detectors=true",
        "eval.batch_size=2",
    ]


def _train(rank: int, world: int, overrides: list[str]) -> list[float]:
    cfg, manifest = resolve_from_cache(load_config(LDMRunConfig, TINY, overrides))
    trainer = LDMTrainer(cfg, manifest)
    losses: list[float] = []
    step = trainer.micro_step

    def record(batch: dict) -> dict[str, float] | None:
        out = step(batch)
        if out is not None:
            losses.append(out["loss"])
        return out

    trainer.micro_step = record  # type: ignore[method-assign]
    trainer.fit()
    return losses


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_two_rank_zero_runs_write_checkpoints_events_and_ema(
    tiny_latent_cache: dict[str, Path], tmp_path: Path, zero_stage: int
) -> None:
    run = tmp_path / f"zero{zero_stage}"
    run_on_ranks(
        _train,
        2,
        timeout=300,
        args=(
            _overrides(
                tiny_latent_cache,
                run,
                "train.max_steps=3",
                "run.ckpt_every=2",
                "run.media_every=3",
                f"train.zero_stage={zero_stage}",
                "train.ema_decay=0.5",
                *(_EVAL(tiny_latent_cache) if zero_stage == 3 else []),
            ),
        ),
    )
    ckpt = latest_checkpoint(run / "checkpoints")
    assert ckpt == run / "checkpoints" / "step_00000003"
    sm = load_ema(ckpt / EMA_FILE)
    assert sm.step == 3 and sm.net.config.num_classes == 2
    # The EMA differs from the live weights (decay 0.5 over 3 steps), and both are finite.
    assert all(torch.isfinite(p).all() for p in sm.net.state_dict().values())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in (
        "train/loss",
        "perf/samples_per_s",
        "perf/mfu",
        "perf/data_wait_pct",
        "perf/peak_mem_gib",
        "lr/unet",
        "grad_norm/unet",
    ):
        assert tag in tags, tag
    assert any(t.startswith("train/loss_t") for t in tags)
    assert "samples/class_conditional" in acc.Tags()["images"]
    if zero_stage == 3:  # evaluation during training (issue 13): both ranks sample, rank 0 logs and writes
        assert {"eval/fvd", "eval/kvd"} <= tags
        result = json.loads((run / "eval" / "step_00000003.json").read_text())
        assert result["step"] == 3 and result["world_size"] == 2 and result["fake"]["count"] == 4
        assert result["metrics"]["fvd"] > 0 and result["protocol"]["num_real"] == 4


def test_resume_gives_the_same_losses(tiny_latent_cache: dict[str, Path], tmp_path: Path) -> None:
    common = ("train.max_steps=4", "run.ckpt_every=10", "train.zero_stage=2", "run.media_every=0")
    full = run_on_ranks(
        _train, 1, timeout=300, args=(_overrides(tiny_latent_cache, tmp_path / "a", *common),)
    )[0]
    first = run_on_ranks(
        _train,
        1,
        timeout=300,
        args=(_overrides(tiny_latent_cache, tmp_path / "b", *common, "run.stop_after=2"),),
    )[0]
    rest = run_on_ranks(
        _train, 1, timeout=300, args=(_overrides(tiny_latent_cache, tmp_path / "b", *common),)
    )[0]
    assert len(first) == 2 and len(rest) == 2
    assert first + rest == full


def test_cache_from_another_tokenizer_is_refused(tiny_latent_cache: dict[str, Path], tmp_path: Path) -> None:
    from vqvdm_scale.formats.tokenizer_export import export_tokenizer
    from vqvdm_scale.models.tokenizer import VQTokenizer, tokenizer_preset

    torch.manual_seed(123)
    cfg = tokenizer_preset("tiny")
    other = tmp_path / "other.safetensors"
    export_tokenizer(VQTokenizer(cfg), cfg, other)
    with pytest.raises(ValueError, match="fingerprint"):
        resolve_from_cache(
            load_config(LDMRunConfig, TINY, _overrides(tiny_latent_cache, tmp_path, f"tokenizer={other}"))
        )
    with pytest.raises(ConfigError, match="tokenizer is not set"):
        resolve_from_cache(
            load_config(
                LDMRunConfig, TINY, [f"data.train_latents={tiny_latent_cache['latents']}", "tokenizer="]
            )
        )


def test_ema_matches_a_hand_computed_update() -> None:
    net = torch.nn.Linear(2, 1, bias=True)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, 2.0]]))
        net.bias.fill_(0.0)
    ema = EMA(net, decay=0.9)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[3.0, -2.0]]))
        net.bias.fill_(1.0)
    ema.update(net)
    # ema = 0.9 * old + 0.1 * new
    assert torch.allclose(ema.state_dict()["weight"], torch.tensor([[1.2, 1.6]]))
    assert torch.allclose(ema.state_dict()["bias"], torch.tensor([0.1]))
    ema.update(net)
    assert torch.allclose(ema.state_dict()["weight"], torch.tensor([[0.9 * 1.2 + 0.3, 0.9 * 1.6 - 0.2]]))
    restored = EMA(net, decay=0.9)
    restored.load_state_dict(ema.state_dict())
    assert torch.equal(restored.state_dict()["weight"], ema.state_dict()["weight"])


def test_previous_clip_training_on_window_pairs_and_its_sampling(
    tiny_latent_cache: dict[str, Path], tmp_path: Path
) -> None:
    """PVDM: a cache of (previous, current) window pairs trains context_mode=previous_clip; the export
    records the mode, one model makes the first clip and its continuation, and other extensions are refused."""
    from vqvdm_scale.config.core import UserError
    from vqvdm_scale.prep.encode_latents import EncodeConfig
    from vqvdm_scale.prep.encode_latents import main as encode_main
    from vqvdm_scale.sample.api import SampleConfig, generate_latents

    pairs = tmp_path / "pairs"
    encode_main(
        EncodeConfig(
            tokenizer=str(tiny_latent_cache["tokenizer"]),
            input=str(tiny_latent_cache["videos"]),
            output=str(pairs),
            frames=8,
            resolution=16,
            context="previous",
            progress=False,
        )
    )
    cache = {**tiny_latent_cache, "latents": pairs}
    run = tmp_path / "run"
    common = (
        "train.max_steps=2",
        "run.ckpt_every=2",
        "run.media_every=0",
        "diffusion.context_mode=previous_clip",
    )
    losses = run_on_ranks(_train, 1, timeout=300, args=(_overrides(cache, run, *common),))[0]
    assert len(losses) == 2 and all(np.isfinite(losses))
    sm = load_ema(latest_checkpoint(run / "checkpoints") / EMA_FILE)
    assert (
        sm.diffusion.config.context_mode == "previous_clip"
        and sm.diffusion.config.context_drop_prob == 0.5  # tiny.yaml
    )
    y = torch.tensor([0, 1])
    z = generate_latents(sm.net, sm.diffusion, sm.spec, y, SampleConfig(steps=2, later_steps=1, num_clips=2))
    assert z.shape[2] == 2 * sm.spec.shape[1]
    with pytest.raises(UserError, match="--overlap 0"):
        generate_latents(sm.net, sm.diffusion, sm.spec, y, SampleConfig(steps=2, num_clips=2, overlap=1))
    # a single-window cache cannot train previous_clip
    with pytest.raises(ConfigError, match="--context previous"):
        resolve_from_cache(load_config(LDMRunConfig, TINY, _overrides(tiny_latent_cache, run, *common)))
    # a recipe's class count that the cache does not have is refused, not silently replaced
    with pytest.raises(ConfigError, match="model.num_classes=101"):
        resolve_from_cache(
            load_config(LDMRunConfig, TINY, _overrides(cache, run, *common, "model.num_classes=101"))
        )
