"""Pixel reconstruction loss of the VQGAN."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor


def reconstruction_loss(x: Tensor, x_rec: Tensor, kind: Literal["mse", "l1"] = "l1") -> Tensor:
    """Mean squared (``"mse"``) or absolute (``"l1"``) error between clips and reconstructions."""
    if x.shape != x_rec.shape:
        raise ValueError(f"input {tuple(x.shape)} and reconstruction {tuple(x_rec.shape)} differ in shape")
    if kind == "mse":
        return F.mse_loss(x_rec.float(), x.float())
    if kind == "l1":
        return F.l1_loss(x_rec.float(), x.float())
    raise ValueError(f"reconstruction loss kind must be 'mse' or 'l1', got {kind!r}")


__all__ = ["reconstruction_loss"]
