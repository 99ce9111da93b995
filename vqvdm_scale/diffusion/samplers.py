"""Samplers as pure functions (k-diffusion style): ``sampler(model_fn, noise, diffusion, ...) -> z0``.

DDPM (ancestral, all T steps), DDIM (first order, respaced) and DPM-Solver++(2M) (second order, multistep,
on DDIM's timesteps): one network call per step for DDIM and DPM-Solver++ alike.

``model_fn(z_t, t [B] long)`` returns the raw network output (eps or v, per ``diffusion.prediction``);
see :mod:`vqvdm_scale.diffusion.guidance` for building one with classifier-free guidance.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from vqvdm_scale.diffusion.gaussian import GaussianDiffusion
from vqvdm_scale.diffusion.guidance import ModelFn

__all__ = ["SAMPLERS", "SamplerName", "ddim_sample", "ddim_timesteps", "ddpm_sample", "dpmpp2m_sample"]

SamplerName = Literal["ddpm", "ddim", "dpmpp2m"]
SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpmpp2m")


def _randn(like: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def _predict(
    model_fn: ModelFn, z: Tensor, t: Tensor, diffusion: GaussianDiffusion, clip: bool
) -> tuple[Tensor, Tensor]:
    eps, z0 = diffusion.model_output_to_eps_and_z0(model_fn(z, t), z, t)
    if clip:
        # Keep eps consistent with the clipped z0 so both updates below agree.
        z0 = z0.clamp(-1.0, 1.0)
        eps = diffusion.predict_eps_from_z0(z, t, z0)
    return eps, z0


@torch.no_grad()
def ddpm_sample(
    model_fn: ModelFn,
    noise: Tensor,
    diffusion: GaussianDiffusion,
    *,
    generator: Optional[torch.Generator] = None,
    progress: bool = False,
    clip_denoised: Optional[bool] = None,
) -> Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2) from z_T = ``noise`` over all T steps.

    Each step draws z_{t-1} ~ N(mu_tilde(z0_hat, z_t), beta_tilde_t) (eq. 6-7, the "fixed small" variance);
    the last step returns the posterior mean, which at t=0 is z0_hat. ``clip_denoised`` None takes
    ``diffusion.config.clip_denoised``. Noise comes from ``generator`` (torch's global RNG when None).
    """
    clip = diffusion.config.clip_denoised if clip_denoised is None else clip_denoised
    z = noise
    b = noise.shape[0]
    for i in tqdm(range(diffusion.num_timesteps - 1, -1, -1), desc="ddpm", disable=not progress):
        t = torch.full((b,), i, dtype=torch.long, device=noise.device)
        _, z0 = _predict(model_fn, z, t, diffusion, clip)
        mean, _, log_var = diffusion.q_posterior(z0, z, t)
        z = mean + torch.exp(0.5 * log_var) * _randn(z, generator) if i > 0 else mean
    return z


def ddim_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """``steps`` evenly spaced timesteps in [0, T-1], descending (the respaced DDIM trajectory)."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"DDIM steps must be in [1, {num_timesteps}] (the diffusion's T), got {steps}")
    if steps == 1:
        return [num_timesteps - 1]
    ts = torch.linspace(0, num_timesteps - 1, steps, dtype=torch.float64).round().long().tolist()
    return sorted(set(ts), reverse=True)


@torch.no_grad()
def ddim_sample(
    model_fn: ModelFn,
    noise: Tensor,
    diffusion: GaussianDiffusion,
    *,
    steps: int,
    eta: float = 0.0,
    generator: Optional[torch.Generator] = None,
    progress: bool = False,
    clip_denoised: Optional[bool] = None,
) -> Tensor:
    """DDIM sampling (Song et al. 2021, eq. 12) over ``steps`` evenly spaced timesteps.

    z_{prev} = sqrt(abar_prev) z0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma * noise, with
    sigma = eta * sqrt((1 - abar_prev)/(1 - abar)) * sqrt(1 - abar/abar_prev) (eq. 16). eta = 0 is
    deterministic given ``noise``; eta = 1 with all T steps is DDPM's ancestral sampler.
    """
    if eta < 0:
        raise ValueError(f"DDIM eta must be >= 0, got {eta}")
    clip = diffusion.config.clip_denoised if clip_denoised is None else clip_denoised
    ts = ddim_timesteps(diffusion.num_timesteps, steps)
    abar = diffusion.alphas_cumprod
    z = noise
    b = noise.shape[0]
    for j, i in enumerate(tqdm(ts, desc="ddim", disable=not progress)):
        t = torch.full((b,), i, dtype=torch.long, device=noise.device)
        eps, z0 = _predict(model_fn, z, t, diffusion, clip)
        a_t = float(abar[i])
        a_prev = float(abar[ts[j + 1]]) if j + 1 < len(ts) else 1.0
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(max(1 - a_t / a_prev, 0.0))
        z = math.sqrt(a_prev) * z0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            z = z + sigma * _randn(z, generator)
    return z


def _half_log_snr(abar: float) -> float:
    """lambda_t = log(alpha_t / sigma_t) = log(abar_t / (1 - abar_t)) / 2 (DPM-Solver's half log-SNR)."""
    return 0.5 * (math.log(abar) - math.log1p(-abar))


@torch.no_grad()
def dpmpp2m_sample(
    model_fn: ModelFn,
    noise: Tensor,
    diffusion: GaussianDiffusion,
    *,
    steps: int,
    progress: bool = False,
    clip_denoised: Optional[bool] = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2) over DDIM's ``steps`` timesteps.

    The probability-flow ODE in its data-prediction form, with alpha = sqrt(abar), sigma = sqrt(1 - abar),
    lambda = log(alpha / sigma) and h_i = lambda_{t_i} - lambda_{t_{i-1}}:
    z_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) z_{t_{i-1}} - alpha_{t_i} (e^{-h_i} - 1) D_i, where
    D_i = (1 + 1/(2 r_i)) x0_{i-1} - 1/(2 r_i) x0_{i-2}, r_i = h_{i-1} / h_i. The first step, and the step
    into timestep 0, take D = x0 (first order: exactly a DDIM step); the last call, at timestep 0, returns
    its denoised estimate as DDIM's does, so with 3 steps or fewer it is DDIM. Deterministic given ``noise``;
    one network call per step.
    """
    clip = diffusion.config.clip_denoised if clip_denoised is None else clip_denoised
    ts = ddim_timesteps(diffusion.num_timesteps, steps)
    abar = diffusion.alphas_cumprod
    z = noise
    b = noise.shape[0]
    x0_prev: Optional[Tensor] = None
    h_prev = 0.0
    for j, i in enumerate(tqdm(ts, desc="dpmpp2m", disable=not progress)):
        t = torch.full((b,), i, dtype=torch.long, device=noise.device)
        _, x0 = _predict(model_fn, z, t, diffusion, clip)
        if j + 1 == len(ts):
            # sigma_next = 0: the update is z = alpha_next * D with D = x0 (first order, as k-diffusion's
            # sample_dpmpp_2m and DPM-Solver's lower_order_final), the same endpoint as DDIM's.
            return x0
        a_s, a_t = float(abar[i]), float(abar[ts[j + 1]])
        h = _half_log_snr(a_t) - _half_log_snr(a_s)
        # Into timestep 0, lambda jumps (h is 4-5x the step before it at 10-20 linear-schedule steps), so
        # r is small and the extrapolation 1 + 1/(2r) amplifies the older estimate's error. DPM-Solver's
        # lower_order_final (and diffusers') drops to first order there; on the Gaussian test problem
        # (tests/unit/test_dpmpp2m.py) that cut the error 2-7x at 10-50 steps, hence always.
        if x0_prev is None or j + 2 == len(ts):
            d = x0
        else:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        z = math.sqrt((1 - a_t) / (1 - a_s)) * z - math.sqrt(a_t) * math.expm1(-h) * d
        x0_prev, h_prev = x0, h
    return z
