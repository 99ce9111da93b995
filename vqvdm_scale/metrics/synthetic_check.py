"""Does a video show a given synthetic class? A colour test that needs no trained classifier.

Each synthetic class draws its shape in its own saturated colour on a dim background (max channel
<= 60), so the mean colour of the bright pixels names the class. This is how the quickstart measures
whether inputs, reconstructions and samples show the classes recognisably.
"""

from __future__ import annotations

import numpy as np
import torch

from vqvdm_scale.data.synthetic import class_colour

BRIGHT = 100  # background max channel is <= 60; shapes are drawn at value 0.95 * 255


def classify_video(video: torch.Tensor, num_classes: int) -> tuple[int, float]:
    """(nearest class by foreground colour, fraction of bright pixels) for ``[C, T, H, W]`` in [-1, 1]."""
    pix = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).permute(1, 2, 3, 0).reshape(-1, 3).cpu().numpy()
    bright = pix.max(axis=1) > BRIGHT
    frac = float(bright.mean())
    if bright.sum() < 4:
        return -1, frac
    mean = pix[bright].mean(axis=0)
    refs = np.stack([class_colour(k) for k in range(num_classes)])
    return int(np.argmin(((refs - mean) ** 2).sum(axis=1))), frac


def class_accuracy(videos: torch.Tensor, labels: list[int], num_classes: int) -> float:
    """Fraction of ``[N, C, T, H, W]`` videos whose colour names their intended class."""
    hits = [classify_video(v, num_classes)[0] == int(y) for v, y in zip(videos, labels, strict=True)]
    return float(np.mean(hits)) if hits else 0.0
