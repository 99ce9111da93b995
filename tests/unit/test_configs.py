"""The shipped configs: the method lives in each stage's base.yaml, paper scale never inherits the tiny tuning.

VQ-VDM is eps-prediction on the linear DDPM schedule with the class dropped at p=0.5 (stage 2), and a 3D
VQGAN with MSE + LPIPS, VQ with commitment beta and a DCGAN discriminator (stage 1). The tiny configs
carry CPU tuning on top (v-prediction, cosine schedule, random-mask context, L1); it must stay there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.conftest import REPO
from vqvdm_scale.config import ConfigError, load_config
from vqvdm_scale.config.shipped import shipped_config, shipped_configs, shipped_configs_dir
from vqvdm_scale.diffusion.gaussian import GaussianDiffusion
from vqvdm_scale.launch.slurm_config import SlurmConfig
from vqvdm_scale.models.unet.presets import UNET_PRESETS
from vqvdm_scale.train.ldm import LDMRunConfig
from vqvdm_scale.train.vqgan import VQGANRunConfig

STAGE_CLASS: dict[str, type] = {"ldm": LDMRunConfig, "vqgan": VQGANRunConfig, "slurm": SlurmConfig}
PAPER_SCALE = ["ldm/B.yaml", "vqgan/vqvdm.yaml"]
# configs/recipes/<dataset>/<stage>.yaml name a file per stage; tests/unit/test_recipes.py checks them.
STAGE_CONFIGS = [n for n in shipped_configs() if not n.startswith("recipes/")]


def _load(name: str) -> Any:
    return load_config(STAGE_CLASS[name.split("/")[0]], shipped_config(name))


def _base_chain(path: Path) -> list[str]:
    """Every file ``path`` inherits from through ``_base_`` (depth first, as read_yaml merges them)."""
    base = (yaml.safe_load(path.read_text()) or {}).get("_base_") or []
    chain: list[str] = []
    for b in [base] if isinstance(base, str) else base:
        chain.append(b)
        chain.extend(_base_chain(path.parent / b))
    return chain


def test_every_stage_ships_a_base_a_tiny_and_a_paper_scale_config() -> None:
    names = STAGE_CONFIGS
    assert {n.split("/")[0] for n in shipped_configs()} == {*STAGE_CLASS, "recipes"}
    for required in ["ldm/base.yaml", "ldm/tiny.yaml", "vqgan/base.yaml", "vqgan/tiny.yaml", *PAPER_SCALE]:
        assert required in names


@pytest.mark.parametrize("name", STAGE_CONFIGS)
def test_every_shipped_config_resolves_with_its_stage_class(name: str) -> None:
    cfg = _load(name)
    assert isinstance(cfg, STAGE_CLASS[name.split("/")[0]])


@pytest.mark.parametrize(
    "name", [n for n in STAGE_CONFIGS if not n.endswith("/base.yaml") and not n.startswith("slurm/")]
)
def test_every_config_extends_its_stage_base_and_only_tiny_ones_reach_tiny(name: str) -> None:
    chain = _base_chain(shipped_config(name))
    assert "base.yaml" in chain, f"{name} does not extend base.yaml (the method's defaults): {chain}"
    if not Path(name).name.startswith("tiny"):
        assert not [b for b in chain if Path(b).name.startswith("tiny")], f"{name} inherits {chain}"


def test_paper_scale_configs_extend_base_directly() -> None:
    for name in PAPER_SCALE:
        assert _base_chain(shipped_config(name)) == ["base.yaml"], name


def test_ldm_base_is_eps_prediction_on_the_linear_ddpm_schedule() -> None:
    cfg = _load("ldm/base.yaml")
    d = cfg.diffusion
    assert (d.prediction, d.schedule, d.num_timesteps) == ("eps", "linear", 1000)
    assert (d.p_uncond, d.context_mode) == (0.5, "none")
    assert not cfg.model.context_frames and cfg.class_conditional
    betas = GaussianDiffusion(d).betas
    assert torch.isclose(betas[0], torch.tensor(1e-4, dtype=torch.float64))
    assert torch.isclose(betas[-1], torch.tensor(0.02, dtype=torch.float64))


def test_ldm_B_is_the_method_at_the_B_preset() -> None:
    cfg = _load("ldm/B.yaml")
    d = cfg.diffusion
    assert (d.prediction, d.schedule, d.num_timesteps, d.p_uncond) == ("eps", "linear", 1000, 0.5)
    assert d.context_mode == "none" and not cfg.model.context_frames
    assert d == _load("ldm/base.yaml").diffusion
    preset = UNET_PRESETS["B"]
    for key in ("model_channels", "channel_mult", "num_res_blocks", "attention_resolutions", "head_dim"):
        assert getattr(cfg.model, key) == getattr(preset, key), key
    assert (cfg.model.model_channels, tuple(cfg.model.channel_mult)) == (96, (1, 2, 3, 4))
    # Nothing of the tiny run leaks in: its data, its tokenizer, its lr.
    assert cfg.data.train_latents == "" and "tiny" not in cfg.tokenizer
    assert (cfg.train.optim.lr, cfg.train.precision, cfg.train.zero_stage) == (1e-4, "bf16", 3)


def test_vqgan_base_and_vqvdm_are_mse_lpips_vq_dcgan() -> None:
    for name in ("vqgan/base.yaml", "vqgan/vqvdm.yaml"):
        cfg = _load(name)
        loss = cfg.loss
        assert (loss.recon_kind, loss.perceptual_weight, loss.gan_kind) == ("mse", 1.0, "bce"), name
        assert (loss.feature_match_kind, loss.perceptual_frames) == ("squared", 16), name  # all frames
        assert (cfg.model.beta, loss.codebook_weight) == (0.25, 1.0), name
        assert tuple(cfg.train.optim.betas) == (0.5, 0.9), name
    vqvdm = _load("vqgan/vqvdm.yaml")
    assert (vqvdm.model.base_channels, tuple(vqvdm.model.downsample), vqvdm.data.resolution) == (
        128,
        (4, 8, 8),
        128,
    )
    assert vqvdm.data.train_shards == ""  # the tiny run's synthetic shards are not inherited


def test_ldm_tiny_keeps_its_cpu_tuning() -> None:
    cfg = _load("ldm/tiny.yaml")
    d = cfg.diffusion
    assert (d.prediction, d.schedule, d.context_mode, d.context_drop_prob) == (
        "v",
        "cosine",
        "random_mask",
        0.5,
    )
    assert (d.num_timesteps, d.p_uncond) == (1000, 0.5)
    assert cfg.model.context_frames and cfg.model.use_fps and cfg.model.model_channels == 32
    assert (cfg.train.max_steps, cfg.train.micro_batch_size, cfg.train.optim.lr) == (1000, 16, 1e-3)
    assert (cfg.train.ema_decay, cfg.sample.steps, cfg.sample.guidance) == (0.99, 25, 2.0)
    assert (cfg.data.train_latents, cfg.tokenizer) == (
        "runs/latents",
        "runs/vqgan_tiny/tokenizer.safetensors",
    )


def test_vqgan_tiny_keeps_its_cpu_tuning() -> None:
    cfg = _load("vqgan/tiny.yaml")
    loss = cfg.loss
    assert (loss.recon_kind, loss.perceptual_weight, loss.gan_weight, loss.feature_match_weight) == (
        "l1",
        0.0,
        0.1,
        0.1,
    )
    assert (loss.disc_start_step, cfg.model.dead_code_threshold, cfg.model.codebook_size) == (200, 1.0, 64)
    assert loss.feature_match_kind == "l1"  # as tuned; base.yaml's squared is the method
    assert (cfg.train.max_steps, cfg.train.optim.lr, tuple(cfg.train.optim.betas)) == (300, 5e-4, (0.5, 0.9))
    assert (cfg.data.resolution, cfg.data.random_flip) == (32, False)


def test_checkout_configs_folder_is_the_shipped_one() -> None:
    # configs/ at the repository root is a symlink into the package, so the two can never drift.
    assert (REPO / "configs").resolve() == shipped_configs_dir().resolve()
    assert (REPO / "configs").is_symlink()


def test_unknown_shipped_config_names_the_shipped_ones() -> None:
    with pytest.raises(ConfigError, match=r"no shipped config 'ldm/huge.yaml'.*ldm/tiny.yaml"):
        shipped_config("ldm/huge.yaml")
