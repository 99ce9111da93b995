"""PVDM long-video training (issue 14): a tiny previous_clip model, trained on synthetic videos whose motion
continues from one window into the next, continues a true previous clip measurably better than it makes
the same clip without a context, and one model does both.

The tokenizer is the real tiny network with random weights (a fixed, deterministic encoding of the
videos); the LDM is trained for 800 steps on CPU (about a minute).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vqvdm_scale.config import load_config
from vqvdm_scale.data import LatentLoaderConfig, build_latent_loader
from vqvdm_scale.diffusion import make_clip_sampler
from vqvdm_scale.engine.checkpoint import latest_checkpoint
from vqvdm_scale.formats.ldm_export import EMA_FILE, load_ema
from vqvdm_scale.formats.tokenizer_export import export_tokenizer, load_tokenizer
from vqvdm_scale.models.tokenizer import VQTokenizer, tokenizer_preset
from vqvdm_scale.prep.encode_latents import EncodeConfig
from vqvdm_scale.prep.encode_latents import main as encode_main
from vqvdm_scale.prep.synthetic import make_synthetic_shards
from vqvdm_scale.train.ldm import LDMRunConfig, LDMTrainer, resolve_from_cache

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_a_previous_clip_model_continues_the_true_previous_clip(tmp_path: Path) -> None:
    make_synthetic_shards(
        str(tmp_path / "videos"),
        num_classes=2,
        videos_per_class=8,
        num_frames=32,
        size=24,
        resolution=16,
        shard_size=4,
    )
    torch.manual_seed(0)
    tcfg = tokenizer_preset("tiny")
    export_tokenizer(VQTokenizer(tcfg).eval(), tcfg, tmp_path / "tok.safetensors")
    encode_main(
        EncodeConfig(
            tokenizer=str(tmp_path / "tok.safetensors"),
            input=str(tmp_path / "videos"),
            output=str(tmp_path / "pairs"),
            frames=8,
            resolution=16,
            context="previous",
            progress=False,
        )
    )
    overrides = [
        f"data.train_latents={tmp_path / 'pairs'}",
        f"tokenizer={tmp_path / 'tok.safetensors'}",
        f"run.dir={tmp_path / 'run'}",
        "data.num_workers=0",
        "data.shuffle_buffer=64",
        "train.micro_batch_size=8",
        "run.log_every=100",
        "run.progress=false",
        "run.media_every=0",
        "model.model_channels=16",
        "model.head_dim=16",
        "train.max_steps=800",
        "run.ckpt_every=800",
        "train.optim.warmup_steps=10",
        "diffusion.context_mode=previous_clip",
        "diffusion.context_drop_prob=0.5",
    ]
    cfg, manifest = resolve_from_cache(
        load_config(LDMRunConfig, REPO / "configs" / "ldm" / "tiny.yaml", overrides)
    )
    LDMTrainer(cfg, manifest).fit()

    sm = load_ema(latest_checkpoint(tmp_path / "run" / "checkpoints") / EMA_FILE)
    _, _, fp = load_tokenizer(tmp_path / "tok.safetensors")
    tok = load_tokenizer(tmp_path / "tok.safetensors")[0]
    loader = build_latent_loader(
        LatentLoaderConfig(
            train_latents=str(tmp_path / "pairs"), num_workers=0, shuffle_buffer=0, drop_last=False
        ),
        batch_size=64,
        tokenizer_fingerprint=fp,
        codebook=tok.quantizer.codes(),
        train=False,
    )
    batch = next(iter(loader))
    keep = batch["context_valid"] > 0  # windows with a predecessor: 16 videos x 3
    z, ctx, y, fps = batch["latent"][keep], batch["context"][keep], batch["label"][keep], batch["fps"][keep]
    assert z.shape[0] == 48

    def error(with_context: bool) -> float:
        """Mean squared distance of the sampled clip to the true next window, same noise for both."""
        g = torch.Generator().manual_seed(0)
        fn = make_clip_sampler(sm.net, sm.diffusion, tuple(z.shape), y=y, fps=fps, steps=20, generator=g)
        mask = torch.full((z.shape[0], 1, *z.shape[2:]), 1.0 if with_context else 0.0)
        with torch.no_grad():
            return float(((fn(ctx * mask, mask) - z) ** 2).mean())

    conditioned, unconditioned = error(True), error(False)
    assert conditioned < 0.8 * unconditioned, (conditioned, unconditioned)
