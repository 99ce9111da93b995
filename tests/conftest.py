"""Shared pytest fixtures: the ../shared/data videos and small CPU-friendly defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("VQVDM_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _small_threads() -> None:
    """Two CPU cores are shared by every test process; one intra-op thread avoids oversubscription."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real test videos beside the checkout (../shared/data); skipped on a user's plain clone."""
    if not (SHARED_DATA / "videos").is_dir():
        pytest.skip(f"{SHARED_DATA} is absent: the real/bad test videos live beside the project checkout")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_latent_cache(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic video shards, a randomly initialised tiny tokenizer export, and its latent cache.

    The tokenizer is the real tiny-preset network with random weights (no training), which is all a
    stage-2 plumbing test needs: the cache is still a faithful encoding of the clips by that tokenizer.
    """
    from vqvdm_scale.formats.tokenizer_export import export_tokenizer
    from vqvdm_scale.models.tokenizer import VQTokenizer, tokenizer_preset
    from vqvdm_scale.prep.encode_latents import EncodeConfig
    from vqvdm_scale.prep.encode_latents import main as encode_main
    from vqvdm_scale.prep.synthetic import make_synthetic_shards

    root = tmp_path_factory.mktemp("tiny_cache")
    make_synthetic_shards(
        str(root / "videos"),
        num_classes=2,
        videos_per_class=4,
        num_frames=16,
        size=24,
        resolution=16,
        shard_size=2,
    )
    torch.manual_seed(0)
    cfg = tokenizer_preset("tiny")
    # recorded as if trained on 8-frame 16x16 clips: encode takes its clip size from the export
    export_tokenizer(VQTokenizer(cfg).eval(), cfg, root / "tokenizer.safetensors", frames=8, resolution=16)
    encode_main(
        EncodeConfig(
            tokenizer=str(root / "tokenizer.safetensors"),
            input=str(root / "videos"),
            output=str(root / "latents"),
            progress=False,
        )
    )
    return {
        "videos": root / "videos",
        "tokenizer": root / "tokenizer.safetensors",
        "latents": root / "latents",
    }
