"""The paper recipes (configs/recipes/{ucf101,sky}/): every stage resolves, and holds the method's settings.

VQ-VDM at 16x128x128: a 3D VQGAN with MSE + LPIPS over all 16 frames and squared feature matching after
a reconstruction-only start; a latent U-Net trained as an eps-prediction DDPM on the linear schedule,
class-conditional with p_uncond 0.5 on UCF-101 (101 classes), unconditional on SkyTimelapse. The stages
chain: each one reads what the one before it writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from vqvdm_scale.config import load_config
from vqvdm_scale.config.shipped import shipped_config, shipped_configs, shipped_configs_dir
from vqvdm_scale.evaluate.config import EvalConfig
from vqvdm_scale.launch.slurm_config import SlurmConfig
from vqvdm_scale.launch.submit import load_stage
from vqvdm_scale.prep.encode_latents import EncodeConfig
from vqvdm_scale.prep.make_shards import ShardsConfig
from vqvdm_scale.sample.api import SampleConfig
from vqvdm_scale.sample.main import SampleRunConfig
from vqvdm_scale.train.ldm import LDMRunConfig
from vqvdm_scale.train.vqgan import VQGANRunConfig

DATASETS = ("ucf101", "sky")
STAGE_CLASS: dict[str, type] = {
    "shards": ShardsConfig,
    "shards_test": ShardsConfig,
    "vqgan": VQGANRunConfig,
    "encode": EncodeConfig,
    "ldm": LDMRunConfig,
    "sample": SampleRunConfig,
    "eval": EvalConfig,
}
SUBMIT_STAGE = {"vqgan": "vqgan", "encode": "encode", "ldm": "ldm", "sample": "sample", "eval": "eval"}


def _load(dataset: str, stage: str) -> Any:
    return load_config(STAGE_CLASS[stage], shipped_config(f"recipes/{dataset}/{stage}.yaml"))


def _base_chain(path: Path) -> list[str]:
    base = (yaml.safe_load(path.read_text()) or {}).get("_base_") or []
    chain: list[str] = []
    for b in [base] if isinstance(base, str) else base:
        chain.append(Path(b).name)
        chain.extend(_base_chain(path.parent / b))
    return chain


def test_each_recipe_names_every_stage() -> None:
    names = {n for n in shipped_configs() if n.startswith("recipes/")}
    assert names == {f"recipes/{d}/{s}.yaml" for d in DATASETS for s in STAGE_CLASS}


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("stage", list(STAGE_CLASS))
def test_every_recipe_resolves_with_its_stage_class(dataset: str, stage: str) -> None:
    assert isinstance(_load(dataset, stage), STAGE_CLASS[stage])
    if stage in SUBMIT_STAGE:  # and as launchers/submit.py reads it, with its slurm: section
        path = str(shipped_config(f"recipes/{dataset}/{stage}.yaml"))
        example = str(shipped_config("slurm/example.yaml"))  # nodes: 2, which the recipe overrides
        cfg, slurm = load_stage(SUBMIT_STAGE[stage], path, [], example, {})
        assert isinstance(cfg, STAGE_CLASS[stage]) and isinstance(slurm, SlurmConfig)
        assert slurm.nodes == (2 if stage in ("vqgan", "ldm") else 1), stage


@pytest.mark.parametrize("dataset", DATASETS)
def test_vqgan_is_mse_lpips_on_all_frames_squared_feature_matching_at_128(dataset: str) -> None:
    cfg = _load(dataset, "vqgan")
    loss, data = cfg.loss, cfg.data
    assert (data.frames, data.resolution, data.frame_stride) == (16, 128, 1)
    assert (loss.recon_kind, loss.perceptual_weight, loss.feature_match_kind) == ("mse", 1.0, "squared")
    assert loss.perceptual_frames >= data.frames  # LPIPS on every frame
    assert (loss.gan_kind, loss.gan_weight, loss.feature_match_weight) == ("bce", 1.0, 4.0)
    assert loss.disc_start_step == 10000 and loss.adaptive_weight
    assert cfg.model.latent_shape(16, 128, 128) == (8, 4, 16, 16)
    chain = _base_chain(shipped_config(f"recipes/{dataset}/vqgan.yaml"))
    assert chain == ["vqvdm.yaml", "base.yaml"]  # paper scale on the method, never the tiny tuning


@pytest.mark.parametrize("dataset", DATASETS)
def test_ldm_is_eps_on_the_linear_ddpm_schedule_over_the_recipes_cache(dataset: str) -> None:
    cfg = _load(dataset, "ldm")
    d = cfg.diffusion
    assert (d.prediction, d.schedule, d.num_timesteps, d.context_mode) == ("eps", "linear", 1000, "none")
    assert _base_chain(shipped_config(f"recipes/{dataset}/ldm.yaml")) == ["B.yaml", "base.yaml"]
    # the stages chain: shards -> vqgan -> encode -> ldm -> sample / eval
    shards, test, vqgan, encode = (_load(dataset, s) for s in ("shards", "shards_test", "vqgan", "encode"))
    assert vqgan.data.train_shards == shards.output == encode.input
    assert encode.tokenizer == cfg.tokenizer == str(vqgan.export_path)
    assert cfg.data.train_latents == encode.output
    assert (encode.frames, encode.resolution, encode.stride) == (None, None, vqgan.data.frame_stride)
    assert shards.resolution == test.resolution == 128 and shards.min_frames >= 16
    sample, ev = _load(dataset, "sample"), _load(dataset, "eval")
    assert sample.run == ev.run == cfg.run.dir and sample.tokenizer == ev.tokenizer == cfg.tokenizer
    assert ev.real == test.output != shards.output
    assert (ev.protocol.frames, ev.protocol.resolution, ev.protocol.num_fake) == (16, 128, 2048)


def test_ucf101_is_class_conditional_over_101_classes_with_p_uncond_half() -> None:
    cfg = _load("ucf101", "ldm")
    assert cfg.class_conditional and cfg.model.num_classes == 101 and cfg.diffusion.p_uncond == 0.5
    shards, test = _load("ucf101", "shards"), _load("ucf101", "shards_test")
    assert (shards.layout, Path(str(shards.split_file)).name) == ("ucf101", "trainlist01.txt")
    assert (test.layout, Path(str(test.split_file)).name) == ("ucf101", "testlist01.txt")
    ev = _load("ucf101", "eval")
    assert set(ev.metrics) == {"fvd", "kvd", "is"} and ev.split == "test" and ev.c3d
    # The guidance weight is not measured yet: the recipe keeps the package default everywhere.
    default = SampleConfig().guidance
    assert cfg.sample.guidance == _load("ucf101", "sample").sample.guidance == ev.sample.guidance == default
    assert _load("ucf101", "sample").all_classes


def test_sky_is_unconditional_without_is() -> None:
    cfg = _load("sky", "ldm")
    assert not cfg.class_conditional and cfg.model.num_classes == 0
    shards, test = _load("sky", "shards"), _load("sky", "shards_test")
    assert shards.layout == test.layout == "sky" and shards.split_file is None
    assert (Path(shards.input).name, Path(test.input).name) == ("sky_train", "sky_test")
    ev = _load("sky", "eval")
    assert set(ev.metrics) == {"fvd", "kvd"} and ev.c3d is None
    assert cfg.sample.guidance == ev.sample.guidance == 1.0  # no class, no guidance


def test_recipe_comments_say_how_the_guidance_weight_is_chosen() -> None:
    for stage in ("ldm", "sample", "eval"):
        text = (shipped_configs_dir() / "recipes" / "ucf101" / f"{stage}.yaml").read_text()
        assert "unmeasured" in text, stage
    assert "--sweep guidance=" in (shipped_configs_dir() / "recipes" / "ucf101" / "ldm.yaml").read_text()
