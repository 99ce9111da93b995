"""Turning video tensors into pictures people can look at: tiles, GIFs, PNG grids."""

from __future__ import annotations

import io

import numpy as np
import torch
from einops import rearrange


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """``[..., C, T, H, W]`` in [-1, 1] -> uint8 ``[..., T, H, W, 3]``."""
    v = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    v = v.movedim(-4, -1)  # C to last: [..., T, H, W, C]
    if v.shape[-1] == 1:
        v = v.expand(*v.shape[:-1], 3)
    return v.numpy()


def tile_videos(video: torch.Tensor, cols: int | None = None) -> np.ndarray:
    """``[N, C, T, H, W]`` -> one uint8 video ``[T, rows*H, cols*W, 3]`` with the clips tiled."""
    n = video.shape[0]
    cols = cols or n
    rows = (n + cols - 1) // cols
    if rows * cols > n:
        pad = torch.full((rows * cols - n, *video.shape[1:]), -1.0, dtype=video.dtype, device=video.device)
        video = torch.cat([video, pad])
    frames = to_uint8(video)  # N,T,H,W,3
    return np.ascontiguousarray(rearrange(frames, "(r c) t h w x -> t (r h) (c w) x", r=rows, c=cols))


def gif_bytes(frames: np.ndarray, fps: float) -> bytes:
    """uint8 ``[T, H, W, 3]`` -> an animated, looping GIF."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(
        buf,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=max(20, int(1000 / max(fps, 1e-3))),
        loop=0,
    )
    return buf.getvalue()


def png_grid(video: torch.Tensor, path: str, max_frames: int = 16) -> None:
    """Save ``[N, C, T, H, W]`` as a PNG grid: one row per video, one column per frame."""
    from PIL import Image

    frames = to_uint8(video[:, :, :max_frames])  # N,T,H,W,3
    grid = rearrange(frames, "n t h w x -> (n h) (t w) x")
    Image.fromarray(np.ascontiguousarray(grid)).save(path)
