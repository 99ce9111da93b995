"""How smooth is a long video across its seams? A discontinuity ratio for latents or pixels.

A long video made of clips can jump where one clip ends and the next begins. The step between two
consecutive frames ``i-1 -> i`` is ``mean((x[:, :, i] - x[:, :, i-1])**2)`` per video; the seam ratio is the
mean step across the seams divided by the mean step inside the clips. 1.0 means the seams move no more than
the video moves anyway; a large ratio is a visible cut.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["frame_steps", "seam_ratio"]


def frame_steps(video: torch.Tensor) -> torch.Tensor:
    """``[B, T-1]`` mean squared change between consecutive frames of ``[B, C, T, ...]``."""
    if video.dim() < 3 or video.shape[2] < 2:
        raise ValueError(f"expected [B, C, T, ...] with T >= 2, got shape {tuple(video.shape)}")
    diff = (video[:, :, 1:] - video[:, :, :-1]).float() ** 2
    return diff.transpose(1, 2).flatten(2).mean(dim=2)


def seam_ratio(video: torch.Tensor, seams: Sequence[int]) -> torch.Tensor:
    """``[B]`` mean step into the frames at ``seams`` (first frames of later clips) over the mean step
    between the other consecutive frames. Needs at least one seam and one step that is not a seam."""
    steps = frame_steps(video)
    t = video.shape[2]
    at = sorted({int(s) for s in seams})
    if not at or at[0] < 1 or at[-1] >= t:
        raise ValueError(f"seams must be frame indices in [1, {t - 1}], got {list(seams)}")
    is_seam = torch.zeros(t - 1, dtype=torch.bool)
    is_seam[[s - 1 for s in at]] = True
    if bool(is_seam.all()):
        raise ValueError("every step is a seam: nothing inside the clips to compare with")
    return steps[:, is_seam].mean(dim=1) / steps[:, ~is_seam].mean(dim=1).clamp_min(1e-12)
