"""The Gaussian diffusion process (DDPM, Ho et al. 2020): closed-form marginals, posteriors and conversions.

Held apart from the network (as DiT's ``diffusion/``): the schedule lives here in float64 and is
cast to the latents' dtype when used; samplers and the training loss call these methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import Tensor

from vqvdm_scale.config.core import ConfigError
from vqvdm_scale.diffusion.schedules import make_betas

__all__ = ["DiffusionConfig", "GaussianDiffusion"]


@dataclass
class DiffusionConfig:
    """The diffusion process and how training conditions the network.

    Args:
        num_timesteps: T, number of forward steps.
        schedule: beta schedule, "linear" (DDPM) or "cosine" (Nichol & Dhariwal 2021).
        prediction: the network predicts the noise ("eps") or the velocity ("v", Salimans & Ho 2022).
        p_uncond: probability of replacing the label by the null class in training (VQ-VDM uses 0.5),
            which trains the unconditional branch for classifier-free guidance.
        context_drop_prob: probability, per sample, of replacing the context by zeros (mask 0) in
            training; it trains the unconditional first clip of long-video sampling. PVDM's objective
            ``lambda * ||eps - eps(z2_t, z1_0)||^2 + (1 - lambda) * ||eps - eps(z2_t, 0)||^2`` has
            ``lambda = 1 - context_drop_prob``; PVDM trains with lambda = 0.3 (``cond_prob`` in its
            tools/trainer.py), hence the default 0.7. PVDM draws once per batch; we draw per sample.
        context_mode: "none", "previous_clip" (the caller passes the previous clip's latents, PVDM) or
            "random_mask" (random known frames of the clip itself, RaMViD).
        loss_on_known: in "random_mask" mode, also count the loss on the known frames, which the network
            can copy from its input; off by default, so the loss is the mean over the unknown positions.
        loss_weighting: only "none" (plain L_simple, DDPM eq. 14).
        clip_denoised: clamp predicted z0 to [-1, 1] in sampling (off for normalised continuous latents).
    """

    num_timesteps: int = 1000
    schedule: Literal["linear", "cosine"] = "linear"
    prediction: Literal["eps", "v"] = "eps"
    p_uncond: float = 0.5
    context_drop_prob: float = 0.7
    context_mode: Literal["none", "previous_clip", "random_mask"] = "none"
    loss_on_known: bool = False
    loss_weighting: Literal["none"] = "none"
    clip_denoised: bool = False

    def __post_init__(self) -> None:
        if self.num_timesteps < 1:
            raise ConfigError(f"diffusion.num_timesteps must be >= 1, got {self.num_timesteps}")
        if self.schedule not in ("linear", "cosine"):
            raise ConfigError(f"diffusion.schedule must be 'linear' or 'cosine', got {self.schedule!r}")
        if self.prediction not in ("eps", "v"):
            raise ConfigError(f"diffusion.prediction must be 'eps' or 'v', got {self.prediction!r}")
        if not 0.0 <= self.p_uncond <= 1.0:
            raise ConfigError(f"diffusion.p_uncond must be a probability in [0, 1], got {self.p_uncond}")
        if not 0.0 <= self.context_drop_prob <= 1.0:
            raise ConfigError(
                f"diffusion.context_drop_prob must be a probability in [0, 1], got {self.context_drop_prob}"
            )
        if self.context_mode not in ("none", "previous_clip", "random_mask"):
            raise ConfigError(
                f"diffusion.context_mode must be 'none', 'previous_clip' or 'random_mask', got {self.context_mode!r}"
            )
        if self.loss_weighting != "none":
            raise ConfigError(f"diffusion.loss_weighting supports only 'none', got {self.loss_weighting!r}")


class GaussianDiffusion:
    """Forward process q(z_t | z_0) and the quantities samplers and the loss need.

    Args:
        config: the diffusion config (schedule, T, prediction type).
    """

    def __init__(self, config: DiffusionConfig) -> None:
        self.config = config
        self.num_timesteps = config.num_timesteps
        self.prediction = config.prediction
        betas = make_betas(config.schedule, config.num_timesteps)
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, dim=0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        self.betas = betas
        self.alphas_cumprod = abar
        self.alphas_cumprod_prev = abar_prev
        self.sqrt_alphas_cumprod = abar.sqrt()
        # Kept in float64 so 1 - abar is exact for small t before the cast to the latents' dtype.
        self.one_minus_alphas_cumprod = 1.0 - abar
        self.sqrt_one_minus_alphas_cumprod = (1.0 - abar).sqrt()
        # DDPM eq. 7: posterior q(z_{t-1} | z_t, z_0) = N(mu_tilde, beta_tilde).
        self.posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        # beta_tilde_0 = 0; take log of beta_tilde_1 there, as improved-diffusion does, to stay finite.
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
        )
        self.posterior_mean_coef1 = betas * abar_prev.sqrt() / (1.0 - abar)
        self.posterior_mean_coef2 = (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar)
        self._cache: dict[tuple[str, torch.device], Tensor] = {}

    # -- helpers -----------------------------------------------------------------------------------
    def _extract(self, name: str, t: Tensor, like: Tensor) -> Tensor:
        """Schedule array ``name`` at ``t`` [B], shaped [B, 1, ..., 1] to broadcast against ``like``."""
        key = (name, like.device)
        arr = self._cache.get(key)
        if arr is None:
            arr = getattr(self, name).to(like.device)
            self._cache[key] = arr
        out = arr[t.long().to(like.device)].to(like.dtype)
        return out.reshape(t.shape[0], *([1] * (like.ndim - 1)))

    def sample_timesteps(self, batch: int, device: torch.device | str = "cpu") -> Tensor:
        """Uniform timesteps ``[batch]`` long in [0, T) from torch's global RNG."""
        return torch.randint(0, self.num_timesteps, (batch,), device=device)

    # -- forward process ---------------------------------------------------------------------------
    def q_mean_variance(self, z0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(z_t | z_0) = N(sqrt(abar_t) z0, (1 - abar_t) I) (DDPM eq. 4); var is [B,1,...]."""
        mean = self._extract("sqrt_alphas_cumprod", t, z0) * z0
        var = self._extract("one_minus_alphas_cumprod", t, z0)
        return mean, var

    def q_sample(self, z0: Tensor, t: Tensor, noise: Optional[Tensor] = None) -> Tensor:
        """Draw z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) noise (DDPM eq. 4)."""
        if noise is None:
            noise = torch.randn_like(z0)
        return (
            self._extract("sqrt_alphas_cumprod", t, z0) * z0
            + self._extract("sqrt_one_minus_alphas_cumprod", t, z0) * noise
        )

    def q_posterior(self, z0: Tensor, z_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of q(z_{t-1} | z_t, z0) (DDPM eq. 6-7)."""
        mean = (
            self._extract("posterior_mean_coef1", t, z_t) * z0
            + self._extract("posterior_mean_coef2", t, z_t) * z_t
        )
        var = self._extract("posterior_variance", t, z_t)
        log_var = self._extract("posterior_log_variance_clipped", t, z_t)
        return mean, var, log_var

    # -- conversions -------------------------------------------------------------------------------
    def predict_z0_from_eps(self, z_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """z0 = (z_t - sqrt(1 - abar) eps) / sqrt(abar), inverting DDPM eq. 4."""
        return (z_t - self._extract("sqrt_one_minus_alphas_cumprod", t, z_t) * eps) / self._extract(
            "sqrt_alphas_cumprod", t, z_t
        )

    def predict_eps_from_z0(self, z_t: Tensor, t: Tensor, z0: Tensor) -> Tensor:
        """eps = (z_t - sqrt(abar) z0) / sqrt(1 - abar), inverting DDPM eq. 4."""
        return (z_t - self._extract("sqrt_alphas_cumprod", t, z_t) * z0) / self._extract(
            "sqrt_one_minus_alphas_cumprod", t, z_t
        )

    def v_target(self, z0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Velocity v = sqrt(abar) eps - sqrt(1 - abar) z0 (Salimans & Ho 2022, sec. 4)."""
        return (
            self._extract("sqrt_alphas_cumprod", t, z0) * noise
            - self._extract("sqrt_one_minus_alphas_cumprod", t, z0) * z0
        )

    def training_target(self, z0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """What the network regresses: the noise (eps) or the velocity (v)."""
        return noise if self.prediction == "eps" else self.v_target(z0, t, noise)

    def signal_scale(self, t: Tensor, like: Tensor) -> Tensor:
        """sqrt(abar_t) (VDM's alpha_t), shaped to broadcast against ``like``."""
        return self._extract("sqrt_alphas_cumprod", t, like)

    def output_from_eps_and_z0(self, eps: Tensor, z0: Tensor, z_t: Tensor, t: Tensor) -> Tensor:
        """The network output (eps or v) that :meth:`model_output_to_eps_and_z0` maps to ``(eps, z0)``."""
        if self.prediction == "eps":
            return eps
        a = self._extract("sqrt_alphas_cumprod", t, z_t)
        s = self._extract("sqrt_one_minus_alphas_cumprod", t, z_t)
        return a * eps - s * z0

    def model_output_to_eps_and_z0(self, output: Tensor, z_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Turn the raw network output (eps or v) into (eps, z0) predictions."""
        if self.prediction == "eps":
            return output, self.predict_z0_from_eps(z_t, t, output)
        a = self._extract("sqrt_alphas_cumprod", t, z_t)
        s = self._extract("sqrt_one_minus_alphas_cumprod", t, z_t)
        # With z_t = a z0 + s eps and v = a eps - s z0 (a^2 + s^2 = 1): z0 = a z_t - s v, eps = s z_t + a v.
        return s * z_t + a * output, a * z_t - s * output
