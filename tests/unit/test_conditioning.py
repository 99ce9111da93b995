"""One conditioning API (issue 14): what each trained context mode can sample, PVDM's step counts, the loss
on known frames, and VDM's reconstruction guidance."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from vqvdm_scale.config.core import UserError
from vqvdm_scale.diffusion import (
    DiffusionConfig,
    DiffusionLoss,
    GaussianDiffusion,
    make_clip_sampler,
    sample_long_video,
)
from vqvdm_scale.diffusion.reconstruction_guidance import reconstruction_guided_fn
from vqvdm_scale.metrics.continuity import seam_ratio
from vqvdm_scale.models.unet.model import UNet3D
from vqvdm_scale.models.unet.presets import unet_preset
from vqvdm_scale.sample.api import SampleConfig, extension_plan


@pytest.mark.parametrize(
    ("mode", "kw", "plan"),
    [
        ("previous_clip", {}, (0, 0.0)),
        ("previous_clip", {"overlap": 0}, (0, 0.0)),
        ("random_mask", {}, (1, 0.0)),
        ("random_mask", {"overlap": 2}, (2, 0.0)),
        ("none", {"reconstruction_guidance": 2.0}, (1, 2.0)),
    ],
)
def test_extension_follows_the_trained_mode(mode: str, kw: dict, plan: tuple[int, float]) -> None:
    assert extension_plan(mode, SampleConfig(num_clips=3, **kw), latent_frames=4) == plan


@pytest.mark.parametrize(
    ("mode", "kw", "hint"),
    [
        ("previous_clip", {"overlap": 1}, "--overlap 0"),
        ("random_mask", {"overlap": 0}, "--overlap k"),
        ("random_mask", {"overlap": 4}, "--overlap k"),
        ("none", {}, "--reconstruction-guidance"),
        ("previous_clip", {"reconstruction_guidance": 1.0}, "--overlap 0"),
    ],
)
def test_a_mode_mismatch_is_refused_with_what_the_model_can_do(mode: str, kw: dict, hint: str) -> None:
    with pytest.raises(UserError, match=f"context_mode={mode}") as e:
        extension_plan(mode, SampleConfig(num_clips=2, **kw), latent_frames=4)
    assert hint in str(e.value) and len(str(e.value).splitlines()) == 1
    assert extension_plan(mode, SampleConfig(num_clips=1, **kw), latent_frames=4) == (
        0,
        0.0,
    )  # one clip: fine


class _Counting:
    """A stand-in network that counts its calls and predicts zeros."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, z: Tensor, t: Tensor, **kw: object) -> Tensor:
        self.calls += 1
        return torch.zeros_like(z)


def test_first_and_later_clips_take_their_own_ddim_steps() -> None:
    """PVDM samples the first clip with N steps and each later clip with M."""
    net = _Counting()
    d = GaussianDiffusion(DiffusionConfig(num_timesteps=100))
    fn = make_clip_sampler(net, d, (1, 2, 4, 2, 2), steps=10, later_steps=3, device=torch.device("cpu"))
    video = sample_long_video(fn, 3, overlap=0)
    assert video.shape[2] == 12 and net.calls == 10 + 3 + 3


def test_random_mask_loss_leaves_out_the_known_frames_unless_asked() -> None:
    """With loss_on_known off, an error only on known frames costs nothing; with it on, it counts."""
    torch.manual_seed(0)
    z0 = torch.randn(4, 2, 4, 2, 2)

    def run(loss_on_known: bool) -> Tensor:
        cfg = DiffusionConfig(context_mode="random_mask", context_drop_prob=0.0, loss_on_known=loss_on_known)
        d = GaussianDiffusion(cfg)
        loss = DiffusionLoss(d, 0)
        mask = torch.zeros(4, 1, 4, 2, 2)
        mask[:, :, :2] = 1.0  # frames 0-1 known
        loss.random_frame_mask = lambda z: mask  # type: ignore[method-assign]

        def net(z_t: Tensor, t: Tensor, **kw: Tensor) -> Tensor:
            # the exact target on unknown frames, a wrong one (+1) on the known frames
            target = d.training_target(
                z0, t, (z_t - d.signal_scale(t, z_t) * z0) / (1 - d.signal_scale(t, z_t) ** 2).sqrt()
            )
            return target + kw["context_mask"]

        return loss(net, z0, {})[1]

    assert torch.allclose(run(False), torch.zeros(4), atol=1e-4)
    assert torch.allclose(run(True), torch.full((4,), 0.5), atol=1e-4)  # half the positions are off by 1


def test_reconstruction_guidance_pulls_the_unknown_frames_to_the_known_ones() -> None:
    """A model whose denoised estimate is the clip's mean over time (a static-video prior) gives, without
    guidance, a clip unrelated to the known frames; with guidance its estimate moves to them, and the
    known positions of the estimate are the known latents exactly."""
    d = GaussianDiffusion(DiffusionConfig(num_timesteps=100))

    def model_fn(z_t: Tensor, t: Tensor) -> Tensor:
        a = d.signal_scale(t, z_t)
        z0 = (z_t / a).mean(dim=2, keepdim=True).expand_as(z_t)
        return d.predict_eps_from_z0(z_t, t, z0)

    known = torch.zeros(1, 2, 4, 2, 2)
    known[:, :, :1] = 3.0
    mask = torch.zeros(1, 1, 4, 2, 2)
    mask[:, :, :1] = 1.0
    z_t = torch.randn(1, 2, 4, 2, 2)
    t = torch.full((1,), 50, dtype=torch.long)
    _, plain = d.model_output_to_eps_and_z0(model_fn(z_t, t), z_t, t)
    guided_fn = reconstruction_guided_fn(model_fn, d, known, mask, weight=4.0)
    _, guided = d.model_output_to_eps_and_z0(guided_fn(z_t, t), z_t, t)
    assert torch.allclose(guided[:, :, :1], known[:, :, :1], atol=1e-4)
    gap_plain = (plain[:, :, 1:] - 3.0).abs().mean()
    gap_guided = (guided[:, :, 1:] - 3.0).abs().mean()
    assert gap_guided < 0.5 * gap_plain
    with pytest.raises(ValueError, match="weight"):
        reconstruction_guided_fn(model_fn, d, known, mask, weight=0.0)


@pytest.mark.timeout(300)
def test_reconstruction_guidance_lowers_the_seam_error_of_a_trained_model() -> None:
    """A tiny U-Net trained (no context input) on latent clips that move linearly in time, extended to three
    clips from the same seed: reconstruction guidance through one shared frame makes the seams move like the
    rest of the video, where independently sampled clips jump (metrics.continuity's seam ratio)."""
    torch.manual_seed(0)

    def ramps(n: int) -> torch.Tensor:
        start, slope = torch.randn(n, 4, 1, 1, 1), torch.randn(n, 4, 1, 1, 1)
        return (start + 0.5 * slope * (torch.arange(4.0).view(1, 1, 4, 1, 1) - 1.5)).expand(n, 4, 4, 4, 4)

    d = GaussianDiffusion(DiffusionConfig(num_timesteps=200))
    net = UNet3D(unet_preset("tiny", model_channels=16, head_dim=16))
    loss, opt = DiffusionLoss(d, 0), torch.optim.AdamW(net.parameters(), lr=2e-3)
    for _ in range(150):
        opt.zero_grad()
        loss(net, ramps(32).contiguous(), {})[0].backward()
        opt.step()
    net.eval()

    def seams(weight: float) -> float:
        sampler = make_clip_sampler(
            net,
            d,
            (16, 4, 4, 4, 4),
            steps=20,
            reconstruction_weight=weight,
            generator=torch.Generator().manual_seed(0),
        )
        with torch.no_grad():
            if weight == 0:
                z = sample_long_video(lambda c, m: sampler(None, None), 3, overlap=0)
                return float(seam_ratio(z, [4, 8]).mean())
            z = sample_long_video(sampler, 3, overlap=1)  # clip k's first new frame is at 3k + 1
            return float(seam_ratio(z, [4, 7]).mean())

    independent, guided = seams(0.0), seams(4.0)
    assert guided < 0.5 * independent, (guided, independent)
