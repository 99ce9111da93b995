"""Noise schedules: the betas of the forward process q(z_t | z_{t-1})."""

from __future__ import annotations

import math
from typing import Literal

import torch

__all__ = ["make_betas"]


def make_betas(kind: Literal["linear", "cosine"], num_timesteps: int) -> torch.Tensor:
    """Betas ``[num_timesteps]`` (float64) of the "linear" or "cosine" schedule."""
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if kind == "linear":
        # DDPM (Ho et al. 2020, sec. 4): beta from 1e-4 to 0.02 over T=1000; scaled by 1000/T so other T
        # keep the same total noise (Nichol & Dhariwal 2021's get_named_beta_schedule does the same).
        scale = 1000.0 / num_timesteps
        return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)
    if kind == "cosine":
        # Nichol & Dhariwal 2021 eq. 17: abar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) * pi/2), s = 0.008;
        # beta_t = 1 - abar(t)/abar(t-1), clipped at 0.999 to avoid the singularity at t = T.
        s = 0.008
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = 1 - f[1:] / f[:-1]
        return betas.clamp(max=0.999)
    raise ValueError(f"unknown beta schedule {kind!r}; choose 'linear' or 'cosine'")
