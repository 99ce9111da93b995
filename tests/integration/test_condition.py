"""Prediction and infilling from real frames (issue 14): sample.py --condition VIDEO --known 0-3.

The tokenizer and the U-Nets are random tiny networks of the real architectures: what is checked is that
the known latent frames come back exactly, in every conditioning mode, and the command's output.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vqvdm_scale.config.core import UserError
from vqvdm_scale.diffusion import DiffusionConfig, GaussianDiffusion
from vqvdm_scale.formats.latent_shards import LatentStats
from vqvdm_scale.formats.ldm_export import EMA_FILE, LatentSpec, save_ema
from vqvdm_scale.formats.tokenizer_export import export_tokenizer, load_tokenizer
from vqvdm_scale.models.tokenizer import VQTokenizer, tokenizer_preset
from vqvdm_scale.models.unet.model import UNet3D
from vqvdm_scale.models.unet.presets import unet_preset
from vqvdm_scale.sample.api import SampleConfig
from vqvdm_scale.sample.condition import (
    conditioned_latents,
    encode_condition,
    known_latent_frames,
    load_condition_clip,
)

pytestmark = pytest.mark.timeout(300)
SPEC = LatentSpec(shape=(8, 4, 4, 4), stats=LatentStats(torch.zeros(8), torch.ones(8)), fps=8.0)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vqvdm_scale.prep.synthetic import make_synthetic_shards

    root = tmp_path_factory.mktemp("cond")
    make_synthetic_shards(
        str(root / "videos"),
        num_classes=2,
        videos_per_class=1,
        num_frames=16,
        size=24,
        resolution=16,
        shard_size=2,
    )
    return root / "videos"


def _net(mode: str) -> tuple[UNet3D, GaussianDiffusion]:
    torch.manual_seed(0)
    cfg = unet_preset("tiny", in_channels=8, num_classes=2, context_frames=mode != "none")
    return UNet3D(cfg).eval(), GaussianDiffusion(DiffusionConfig(context_mode=mode))  # type: ignore[arg-type]


def test_known_ranges_map_to_whole_latent_frames() -> None:
    assert known_latent_frames(["0-3"], 16, 4) == [0]
    assert known_latent_frames(["0-7", "12-15"], 16, 4) == [0, 1, 3]
    for bad in (["0-2"], ["2-5"], ["12-16"], ["x"]):
        with pytest.raises(UserError):
            known_latent_frames(bad, 16, 4)


@pytest.mark.parametrize(
    ("mode", "known", "kw"),
    [
        ("random_mask", [0], {}),
        ("random_mask", [0, 3], {"num_clips": 2}),
        ("none", [0], {"reconstruction_guidance": 2.0}),
    ],
)
def test_known_latent_frames_come_back_exactly(mode: str, known: list[int], kw: dict) -> None:
    net, d = _net(mode)
    torch.manual_seed(1)
    z_known = torch.randn(1, *SPEC.shape)
    z = conditioned_latents(net, d, SPEC, z_known, known, torch.tensor([0, 1]), SampleConfig(steps=2, **kw))
    assert z.shape[2] == SPEC.shape[1] * kw.get("num_clips", 1) - (1 if kw.get("num_clips") else 0)
    for j in known:
        assert torch.equal(z[:, :, j], z_known[:, :, j].expand(2, -1, -1, -1))
    assert not torch.equal(z[:, :, 1], z_known[:, :, 1].expand(2, -1, -1, -1))  # the rest is sampled


def test_previous_clip_models_continue_the_whole_real_clip() -> None:
    net, d = _net("previous_clip")
    z_known = torch.randn(1, *SPEC.shape)
    z = conditioned_latents(net, d, SPEC, z_known, [0, 1, 2, 3], torch.tensor([1]), SampleConfig(steps=2))
    assert z.shape[2] == 8 and torch.equal(z[:, :, :4], z_known)
    with pytest.raises(UserError, match="whole clip"):
        conditioned_latents(net, d, SPEC, z_known, [0], torch.tensor([1]), SampleConfig(steps=2))
    none_net, none_d = _net("none")
    with pytest.raises(UserError, match="--reconstruction-guidance"):
        conditioned_latents(none_net, none_d, SPEC, z_known, [0], torch.tensor([1]), SampleConfig(steps=2))


def test_sample_command_predicts_from_a_shard_video_side_by_side(videos: Path, tmp_path: Path) -> None:
    """The real clip is read from the shards by key, encoded by the run's tokenizer, and written beside
    the generated video (left half real, right half generated; the known frames decode from the real ones)."""
    from vqvdm_scale.formats.frames import read_frames
    from vqvdm_scale.sample.main import SampleRunConfig, main

    torch.manual_seed(0)
    tcfg = tokenizer_preset("tiny")
    export_tokenizer(VQTokenizer(tcfg).eval(), tcfg, tmp_path / "tok.safetensors")
    tokenizer, _, fp = load_tokenizer(tmp_path / "tok.safetensors")
    net, d = _net("random_mask")
    save_ema(tmp_path / EMA_FILE, net.state_dict(), net.config, d.config, SPEC, fp, 1, ["a", "b"])
    from vqvdm_scale.data.pipeline import shard_sample_pipeline

    urls = sorted(str(p) for p in videos.glob("shard-*.tar"))
    key = next(iter(shard_sample_pipeline(urls, rank=0, world_size=1, shuffle_shards=False)))["__key__"]
    source = f"{videos}#{key}"
    paths = main(
        SampleRunConfig(
            checkpoint=str(tmp_path / EMA_FILE),
            tokenizer=str(tmp_path / "tok.safetensors"),
            num_videos=1,
            condition=source,
            known=["0-3"],
            formats=["npy"],
            output=str(tmp_path / "out"),
            progress=False,
            sample=SampleConfig(steps=2),
        )
    )
    frames = read_frames(paths[0])
    assert frames.shape == (16, 16, 32, 3)
    real = load_condition_clip(source, 16, 16)
    left = torch.from_numpy(frames[:, :, :16]).permute(3, 0, 1, 2).float() / 127.5 - 1
    assert (left - real).abs().max() < 2 / 255  # the real clip, as uint8
    assert torch.equal(encode_condition(tokenizer, SPEC, real), encode_condition(tokenizer, SPEC, real))
    with pytest.raises(UserError, match="no sample with key"):
        load_condition_clip(f"{videos}#nope", 16, 16)
