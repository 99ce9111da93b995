"""Samplers checked against problems with a known answer, plus guidance and long-video extension.

The data is Gaussian (or a mixture of Gaussians with shared covariance, one per class) in 2 dims laid
out as latents [B, 2, 1, 1, 1], so the optimal noise predictor is closed form:
eps*(z_t, t) = sqrt(1-abar) Sigma_t^{-1} (z_t - sqrt(abar) mu), Sigma_t = abar Sigma + (1-abar) I,
and for the mixture the posterior-weighted average of the per-class predictors.
"""

from __future__ import annotations

from typing import Optional

import pytest
import torch
from torch import Tensor

from vqvdm_scale.diffusion import (
    DiffusionConfig,
    GaussianDiffusion,
    cfg_model_fn,
    conditional_model_fn,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    make_clip_sampler,
    sample_long_video,
)
from vqvdm_scale.models.unet.model import UNet3D
from vqvdm_scale.models.unet.presets import unet_preset

SIGMA = torch.tensor([[2.0, 0.6], [0.6, 0.5]], dtype=torch.float64)
MEANS = torch.tensor([[1.5, -1.0], [-1.0, 0.5], [0.0, 2.0]], dtype=torch.float64)  # one row per class


class OptimalMixtureEps:
    """Exact eps-predictor of a Gaussian mixture (shared covariance), with the network's call signature.

    y = class index -> that class's Gaussian; y = null class (len(means)) or None -> the equal-weight mixture.
    Output can be eps or v (converted with the diffusion's own schedule).
    """

    def __init__(self, diffusion: GaussianDiffusion, means: Tensor, sigma: Tensor) -> None:
        self.d = diffusion
        self.means = means
        self.sigma = sigma
        self.calls = 0

    def eps(self, z: Tensor, t: Tensor, y: Optional[Tensor]) -> Tensor:
        b = z.shape[0]
        zf = z.reshape(b, -1).double()
        ab = self.d.alphas_cumprod[t.cpu()].double()  # [B]
        eye = torch.eye(zf.shape[1], dtype=torch.float64)
        sig_t = ab[:, None, None] * self.sigma + (1 - ab)[:, None, None] * eye  # [B, D, D]
        resid = zf[:, None, :] - ab.sqrt()[:, None, None] * self.means[None]  # [B, K, D]
        sol = torch.linalg.solve(sig_t[:, None], resid.unsqueeze(-1)).squeeze(-1)  # Sigma_t^{-1} r, [B, K, D]
        eps_k = (1 - ab).sqrt()[:, None, None] * sol
        logw = -0.5 * (resid * sol).sum(-1)  # shared covariance: normaliser cancels
        post = torch.softmax(logw, dim=1)  # [B, K]
        mix = (post[..., None] * eps_k).sum(1)
        if y is None:
            out = mix
        else:
            null = y >= self.means.shape[0]
            yc = y.clamp(max=self.means.shape[0] - 1)
            out = torch.where(null[:, None], mix, eps_k[torch.arange(b), yc])
        return out.reshape(z.shape).to(z.dtype)

    def __call__(
        self,
        z: Tensor,
        t: Tensor,
        y: Optional[Tensor] = None,
        fps: Optional[Tensor] = None,
        context: Optional[Tensor] = None,
        context_mask: Optional[Tensor] = None,
    ) -> Tensor:
        self.calls += 1
        eps = self.eps(z, t, y)
        if self.d.prediction == "eps":
            return eps
        z0 = self.d.predict_z0_from_eps(z, t, eps)
        return self.d.v_target(z0, t, eps)


def _diffusion(prediction: str = "eps", t: int = 200, schedule: str = "linear") -> GaussianDiffusion:
    return GaussianDiffusion(DiffusionConfig(num_timesteps=t, schedule=schedule, prediction=prediction))


def _stats(z: Tensor) -> tuple[Tensor, Tensor]:
    x = z.reshape(z.shape[0], -1).double()
    return x.mean(0), torch.cov(x.T)


def _assert_gaussian(z: Tensor, mu: Tensor, sigma: Tensor, tol: float = 0.08) -> None:
    """Mean and covariance errors, in units of the target's standard deviations, below ``tol``.

    With 4000 samples the sampling error is about 0.02-0.03 in these units; the rest of the budget is the
    sampler's discretisation error (DDIM with 50 steps shrinks the variance by a few percent).
    """
    m, c = _stats(z)
    sd = sigma.diagonal().sqrt()
    mean_err = ((m - mu) / sd).abs().max().item()
    cov_err = ((c - sigma) / sd.outer(sd)).abs().max().item()
    assert mean_err < tol, f"mean {m} vs {mu}"
    assert cov_err < tol, f"cov {c} vs {sigma}"


N = 4000


def _noise(seed: int = 0, n: int = N) -> Tensor:
    return torch.randn(n, 2, 1, 1, 1, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddpm_matches_gaussian(prediction: str) -> None:
    d = _diffusion(prediction)
    net = OptimalMixtureEps(d, MEANS[:1], SIGMA)
    z = ddpm_sample(conditional_model_fn(net), _noise(), d, generator=torch.Generator().manual_seed(1))
    assert net.calls == 200
    _assert_gaussian(z, MEANS[0], SIGMA)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddim_matches_gaussian(eta: float, schedule: str) -> None:
    d = _diffusion("eps", t=1000, schedule=schedule)
    net = OptimalMixtureEps(d, MEANS[:1], SIGMA)
    z = ddim_sample(
        conditional_model_fn(net), _noise(), d, steps=50, eta=eta, generator=torch.Generator().manual_seed(2)
    )
    assert net.calls == 50
    # 50 respaced steps: discretisation shrinks the covariance (measured errors 0.07-0.08 for eta=0,
    # 0.10 cosine / 0.17 linear for eta=1; they vanish with all T steps, see the next test).
    _assert_gaussian(z, MEANS[0], SIGMA, tol=0.15 if (eta == 0 or schedule == "cosine") else 0.25)


def test_ddim_full_trajectory_is_accurate() -> None:
    """With all T steps DDIM's discretisation error vanishes: tight tolerance for eta 0 and 1."""
    d = _diffusion("eps", t=200, schedule="cosine")
    net = OptimalMixtureEps(d, MEANS[:1], SIGMA)
    for eta in (0.0, 1.0):
        z = ddim_sample(conditional_model_fn(net), _noise(4), d, steps=200, eta=eta)
        _assert_gaussian(z, MEANS[0], SIGMA, tol=0.06)


def test_sampler_rejects_wrong_answer() -> None:
    """The tolerance is tight enough to tell a wrong denoiser: the mixture is not class 0's Gaussian."""
    d = _diffusion("eps")
    net = OptimalMixtureEps(d, MEANS, SIGMA)
    z = ddim_sample(conditional_model_fn(net), _noise(), d, steps=50)
    with pytest.raises(AssertionError):
        _assert_gaussian(z, MEANS[0], SIGMA, tol=0.25)


def test_unconditional_mixture_and_conditional_classes() -> None:
    """Unconditional sampling recovers the mixture's moments; conditional sampling each class's Gaussian."""
    d = _diffusion("eps")
    net = OptimalMixtureEps(d, MEANS, SIGMA)
    null = MEANS.shape[0]
    z = ddim_sample(cfg_model_fn(net, torch.full((N,), 0), None, 0.0, null), _noise(), d, steps=50)
    mix_mean = MEANS.mean(0)
    mix_cov = SIGMA + torch.cov(MEANS.T, correction=0)
    _assert_gaussian(z, mix_mean, mix_cov, tol=0.15)
    for c in range(MEANS.shape[0]):
        y = torch.full((N,), c)
        z = ddim_sample(cfg_model_fn(net, y, None, 1.0, null), _noise(c), d, steps=50)
        _assert_gaussian(z, MEANS[c], SIGMA, tol=0.15)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_cfg_limits_and_batched_combination(prediction: str) -> None:
    d = _diffusion(prediction, t=100)
    net = OptimalMixtureEps(d, MEANS, SIGMA)
    null = MEANS.shape[0]
    y = torch.arange(64) % 3
    noise = _noise(3, 64)
    cond = ddim_sample(conditional_model_fn(net, y), noise, d, steps=20)
    uncond = ddim_sample(conditional_model_fn(net, torch.full_like(y, null)), noise, d, steps=20)
    w1 = ddim_sample(cfg_model_fn(net, y, None, 1.0, null), noise, d, steps=20)
    w0 = ddim_sample(cfg_model_fn(net, y, None, 0.0, null), noise, d, steps=20)
    assert torch.equal(w1, cond)
    assert torch.equal(w0, uncond)
    assert not torch.allclose(cond, uncond, atol=1e-2)

    # w = 3: one doubled-batch forward per step, equal to the eps-space combination of separate passes.
    net.calls = 0
    fn = cfg_model_fn(net, y, None, 3.0, null)
    z_t = torch.randn(64, 2, 1, 1, 1)
    t = torch.full((64,), 40)
    out = fn(z_t, t)
    assert net.calls == 1
    eps_c, _ = d.model_output_to_eps_and_z0(net(z_t, t, y=y), z_t, t)
    eps_u, _ = d.model_output_to_eps_and_z0(net(z_t, t, y=torch.full_like(y, null)), z_t, t)
    eps_hat, _ = d.model_output_to_eps_and_z0(out, z_t, t)
    torch.testing.assert_close(eps_hat, eps_u + 3.0 * (eps_c - eps_u), rtol=1e-5, atol=1e-5)


def test_guidance_pushes_towards_class_mean() -> None:
    """w > 1 sharpens the class: samples concentrate (smaller spread) around that class's mean."""
    d = _diffusion("eps")
    net = OptimalMixtureEps(d, MEANS, SIGMA)
    y = torch.zeros(N, dtype=torch.long)
    z1 = ddim_sample(cfg_model_fn(net, y, None, 1.0, 3), _noise(), d, steps=50)
    z4 = ddim_sample(cfg_model_fn(net, y, None, 4.0, 3), _noise(), d, steps=50)
    assert torch.linalg.det(_stats(z4)[1]) < torch.linalg.det(_stats(z1)[1])


def test_determinism() -> None:
    d = _diffusion("eps", t=100)
    net = OptimalMixtureEps(d, MEANS[:1], SIGMA)
    fn = conditional_model_fn(net)
    noise = _noise(5, 256)
    # DDIM eta=0: deterministic given the noise, whatever the RNG does.
    a = ddim_sample(fn, noise, d, steps=25)
    torch.randn(10)
    b = ddim_sample(fn, noise, d, steps=25)
    assert torch.equal(a, b)
    # Stochastic samplers: the same generator seed gives the same samples; another seed does not.
    for sample in (
        lambda g: ddpm_sample(fn, noise, d, generator=g),
        lambda g: ddim_sample(fn, noise, d, steps=25, eta=1.0, generator=g),
    ):
        s1 = sample(torch.Generator().manual_seed(7))
        s2 = sample(torch.Generator().manual_seed(7))
        s3 = sample(torch.Generator().manual_seed(8))
        assert torch.equal(s1, s2)
        assert not torch.allclose(s1, s3)


def test_ddim_timesteps() -> None:
    assert ddim_timesteps(1000, 1) == [999]
    ts = ddim_timesteps(1000, 50)
    assert len(ts) == 50 and ts[0] == 999 and ts[-1] == 0 and ts == sorted(ts, reverse=True)
    assert ddim_timesteps(10, 10) == list(range(9, -1, -1))
    with pytest.raises(ValueError, match="DDIM steps"):
        ddim_timesteps(100, 101)


# ---------------------------------------------------------------------------------------------------
# Long video


class RecordingClipSampler:
    """Real DDIM sampling of a tiny context-frame UNet; records each call's context and output."""

    def __init__(self, net: UNet3D, diffusion: GaussianDiffusion, noises: list[Tensor]) -> None:
        self.net, self.d, self.noises = net, diffusion, noises
        self.contexts: list[Optional[Tensor]] = []
        self.masks: list[Optional[Tensor]] = []
        self.outputs: list[Tensor] = []

    def __call__(self, context: Optional[Tensor], context_mask: Optional[Tensor]) -> Tensor:
        k = len(self.outputs)
        self.contexts.append(None if context is None else context.clone())
        self.masks.append(None if context_mask is None else context_mask.clone())
        fn = conditional_model_fn(self.net, context=context, context_mask=context_mask)
        z0 = ddim_sample(fn, self.noises[k], self.d, steps=3)
        self.outputs.append(z0)
        return z0


@pytest.fixture(scope="module")
def context_net() -> UNet3D:
    torch.manual_seed(0)
    net = UNet3D(unet_preset("tiny", in_channels=2, context_frames=True, model_channels=16, head_dim=16))
    with torch.no_grad():  # leave the zero-init so the output depends on the input (an untrained net is 0)
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


SHAPE = (1, 2, 4, 4, 4)


def _noises(seed: int, n: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=g) for _ in range(n)]


def test_long_video_previous_clip(context_net: UNet3D) -> None:
    d = _diffusion("eps", t=50)
    rec = RecordingClipSampler(context_net, d, _noises(0, 3))
    video = sample_long_video(rec, 3)
    assert video.shape == (1, 2, 12, 4, 4)
    assert rec.contexts[0] is None and rec.masks[0] is None
    for k in (1, 2):
        assert torch.equal(rec.contexts[k], rec.outputs[k - 1])
        assert torch.equal(rec.masks[k], torch.ones(1, 1, 4, 4, 4))
    assert torch.equal(video, torch.cat(rec.outputs, dim=2))

    # The seam is conditioned: a different first clip (new noise) changes clip 2 under the same noise.
    noises = _noises(0, 3)
    noises[0] = torch.randn(SHAPE, generator=torch.Generator().manual_seed(99))
    rec2 = RecordingClipSampler(context_net, d, noises)
    video2 = sample_long_video(rec2, 3)
    assert not torch.allclose(video2[:, :, :4], video[:, :, :4])
    assert not torch.allclose(video2[:, :, 4:8], video[:, :, 4:8], atol=1e-4)


def test_long_video_overlap(context_net: UNet3D) -> None:
    d = _diffusion("eps", t=50)
    rec = RecordingClipSampler(context_net, d, _noises(1, 3))
    video = sample_long_video(rec, 3, overlap=1)
    assert video.shape == (1, 2, 4 + 2 * 3, 4, 4)
    for k in (1, 2):
        ctx, mask, prev = rec.contexts[k], rec.masks[k], rec.outputs[k - 1]
        assert torch.equal(ctx[:, :, :1], prev[:, :, -1:])
        assert torch.count_nonzero(ctx[:, :, 1:]) == 0
        assert torch.equal(mask[0, 0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    # Stitching: every clip's frames after the overlap, no duplicates.
    torch.testing.assert_close(
        video, torch.cat([rec.outputs[0]] + [o[:, :, 1:] for o in rec.outputs[1:]], dim=2)
    )

    with pytest.raises(ValueError, match="overlap"):
        sample_long_video(RecordingClipSampler(context_net, d, _noises(1, 2)), 2, overlap=4)


def test_make_clip_sampler_long_video(context_net: UNet3D) -> None:
    d = _diffusion("eps", t=50)
    fn = make_clip_sampler(context_net, d, SHAPE, steps=3, generator=torch.Generator().manual_seed(0))
    video = sample_long_video(fn, 2, overlap=2)
    assert video.shape == (1, 2, 6, 4, 4)
    assert torch.isfinite(video).all()
