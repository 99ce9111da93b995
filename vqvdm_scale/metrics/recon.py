"""Reconstruction metrics on videos in [-1, 1]: PSNR and SSIM (Wang et al. 2004, 11x11 Gaussian, sigma 1.5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean PSNR in dB over clips, on pixel values mapped to [0, 1]."""
    a, b = (x.float().clamp(-1, 1) + 1) / 2, (y.float().clamp(-1, 1) + 1) / 2
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1.0 / mse)).mean())


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(g**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean SSIM over frames and channels of ``[B, C, T, H, W]`` clips (constants of the paper, L=1)."""
    a = rearrange((x.float().clamp(-1, 1) + 1) / 2, "b c t h w -> (b t c) 1 h w")
    b = rearrange((y.float().clamp(-1, 1) + 1) / 2, "b c t h w -> (b t c) 1 h w")
    size = min(11, a.shape[-1], a.shape[-2])
    w = _gaussian_window(size).to(a)[None, None]
    mu_a, mu_b = F.conv2d(a, w), F.conv2d(b, w)
    var_a = F.conv2d(a * a, w) - mu_a**2
    var_b = F.conv2d(b * b, w) - mu_b**2
    cov = F.conv2d(a * b, w) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())
