"""Resume on another world size (2 -> 1 -> 2 ranks): DeepSpeed's universal checkpoint and an exact data re-split.

The model is the real tiny LDM preset (randomly initialised, ZeRO-2) on a synthetic latent cache of 64
samples, enough that three invocations of a few steps each stay inside one epoch and then finish it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import REPO
from tests.helpers import run_on_ranks
from vqvdm_scale.config import load_config
from vqvdm_scale.train.ldm import LDMRunConfig, LDMTrainer, resolve_from_cache

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
TINY = REPO / "configs" / "ldm" / "tiny.yaml"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from vqvdm_scale.formats.tokenizer_export import export_tokenizer
    from vqvdm_scale.models.tokenizer import VQTokenizer, tokenizer_preset
    from vqvdm_scale.prep.encode_latents import EncodeConfig
    from vqvdm_scale.prep.encode_latents import main as encode_main
    from vqvdm_scale.prep.synthetic import make_synthetic_shards

    root = tmp_path_factory.mktemp("ws_cache")
    make_synthetic_shards(
        str(root / "videos"),
        num_classes=2,
        videos_per_class=16,
        num_frames=16,
        size=24,
        resolution=16,
        shard_size=4,
    )
    torch.manual_seed(0)
    cfg = tokenizer_preset("tiny")
    export_tokenizer(VQTokenizer(cfg).eval(), cfg, root / "tokenizer.safetensors")
    encode_main(
        EncodeConfig(
            tokenizer=str(root / "tokenizer.safetensors"), input=str(root / "videos"),
            output=str(root / "latents"), frames=8, resolution=16, progress=False,
        )
    )  # fmt: skip
    return {"latents": root / "latents", "tokenizer": root / "tokenizer.safetensors"}


def _train(rank: int, world: int, overrides: list[str]) -> dict[str, Any]:
    cfg, manifest = resolve_from_cache(load_config(LDMRunConfig, TINY, overrides))
    trainer = LDMTrainer(cfg, manifest)
    seen: list[tuple[int, list[str]]] = []
    step = trainer.micro_step

    def record(batch: dict) -> dict[str, float] | None:
        epoch = trainer.loader.state.epoch  # the epoch this batch belongs to (the state advances after it)
        out = step(batch)
        if out is not None:
            seen.append((epoch, list(batch["key"])))
        return out

    trainer.micro_step = record  # type: ignore[method-assign]
    trainer.fit()
    # as numpy: tensors sent through a multiprocessing queue need their process alive until received
    weights = {k: v.numpy().copy() for k, v in trainer.engines["unet"].full_state_dict().items()}
    return {"seen": seen, "weights": weights, "step": trainer.step}


def _overrides(cache: dict[str, Path], run: Path, *extra: str) -> list[str]:
    return [
        f"data.train_latents={cache['latents']}",
        f"tokenizer={cache['tokenizer']}",
        f"run.dir={run}",
        "data.num_workers=1",
        "data.shuffle_buffer=4",
        "data.drop_last=false",  # so that every sample of the epoch is trained on, partial batches too
        "train.micro_batch_size=2",
        "train.zero_stage=2",
        "run.log_every=1",
        "run.progress=false",
        "run.media_every=0",
        "run.ckpt_every=100",
        "model.model_channels=16",
        "model.head_dim=16",
        "train.max_steps=40",
        *extra,
    ]


def test_two_one_two_ranks_resume_with_every_sample_once(cache: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    a = run_on_ranks(_train, 2, timeout=300, args=(_overrides(cache, run, "run.stop_after=3"),))
    # 1 rank: weights and optimizer come back through a universal checkpoint; nothing trains yet
    check = run_on_ranks(_train, 1, timeout=300, args=(_overrides(cache, run, "train.max_steps=3"),))[0]
    assert check["step"] == 3 and check["seen"] == []
    assert all((check["weights"][k] == a[0]["weights"][k]).all() for k in a[0]["weights"])
    assert (run / "checkpoints" / "step_00000003" / "unet_universal").is_dir()
    b = run_on_ranks(_train, 1, timeout=300, args=(_overrides(cache, run, "run.stop_after=4"),))
    c = run_on_ranks(_train, 2, timeout=300, args=(_overrides(cache, run, "run.stop_after=20"),))
    assert [r["step"] for r in a + b + c] == [3, 3, 7, 27, 27]

    epoch0 = Counter(k for r in a + b + c for epoch, keys in r["seen"] if epoch == 0 for k in keys)
    later = [e for r in c for e, _ in r["seen"] if e > 0]
    assert later, "the last run should have finished the epoch and started the next"
    assert len(epoch0) == 64, f"{64 - len(epoch0)} samples of the epoch were never trained on"
    assert set(epoch0.values()) == {1}, {k: n for k, n in epoch0.items() if n > 1}
