"""Reconstruction guidance (Ho et al. 2022, "Video Diffusion Models", eq. 7) for a model trained without
a context: condition a clip on known latent frames x^a through the gradient of how well the model's own
denoised estimate reproduces them,

    x~^b(z_t) = x^^b(z_t) - (w_r * alpha_t / 2) * grad_{z_t^b} || x^a - x^^a(z_t) ||^2,

with alpha_t = sqrt(abar_t); the known positions of the estimate are replaced by x^a itself. The guided
estimate is turned back into the network's output (eps or v), so any sampler uses it unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vqvdm_scale.diffusion.gaussian import GaussianDiffusion
from vqvdm_scale.diffusion.guidance import ModelFn

__all__ = ["reconstruction_guided_fn"]


def reconstruction_guided_fn(
    model_fn: ModelFn, diffusion: GaussianDiffusion, known: Tensor, mask: Tensor, weight: float
) -> ModelFn:
    """``model_fn`` guided towards ``known`` latents where ``mask`` is 1 (``[B, 1, t, h, w]``), weight w_r."""
    if weight <= 0:
        raise ValueError(f"reconstruction guidance weight must be > 0, got {weight}")
    m = mask.to(known.dtype)

    def guided(z_t: Tensor, t: Tensor) -> Tensor:
        with torch.enable_grad():
            z = z_t.detach().requires_grad_(True)
            eps, z0 = diffusion.model_output_to_eps_and_z0(model_fn(z, t), z, t)
            err = ((z0 - known) ** 2 * m).sum()
            (grad,) = torch.autograd.grad(err, z)
        z0 = z0.detach() - (weight * diffusion.signal_scale(t, z_t) / 2) * grad * (1 - m)
        z0 = z0 * (1 - m) + known * m
        eps = diffusion.predict_eps_from_z0(z_t, t, z0)
        return diffusion.output_from_eps_and_z0(eps, z0, z_t, t)

    return guided
