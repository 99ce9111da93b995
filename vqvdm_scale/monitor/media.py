"""Turning video tensors into pictures people can look at: tiles, GIFs, PNG grids."""

from __future__ import annotations

import io

import numpy as np
import torch
from einops import rearrange


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """``[..., C, T, H, W]`` in [-1, 1] -> uint8 ``[..., T, H, W, 3]``.

    The conversion is StyleGAN-V's for generated videos, ``(x * 127.5 + 128).clamp(0, 255)`` truncated
    (round half up), so the frames that metrics read are the ones its protocol would have scored.
    """
    v = (video.detach().float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).cpu()
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


def grid_frame_indices(num_frames: int, max_frames: int) -> list[int]:
    """The frames a grid shows: all of them, or ``max_frames`` evenly spread from the first to the last."""
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if num_frames <= max_frames:
        return list(range(num_frames))
    if max_frames == 1:
        return [num_frames - 1]
    return [round(i * (num_frames - 1) / (max_frames - 1)) for i in range(max_frames)]


def grid_image(video: torch.Tensor, columns: int = 16, max_frames: int = 64, gap: int = 2) -> np.ndarray:
    """``[N, C, T, H, W]`` -> one uint8 picture ``[rows*H (+ gaps), columns*W, 3]`` of the frames in time order.

    Every frame is shown when ``T <= max_frames`` (otherwise ``max_frames`` of them, spread evenly and always
    including the first and the last). A video's frames fill rows of ``columns`` left to right, so a long
    video takes several rows; the last row is padded with black, and when a video takes more than one row,
    videos are separated by ``gap`` white pixel rows. Short videos keep one row per video, one column per frame.
    """
    n, _, t = video.shape[:3]
    idx = grid_frame_indices(t, max_frames)
    frames = to_uint8(video[:, :, idx])  # N,T',H,W,3
    shown = len(idx)
    cols = min(columns, shown)
    rows = (shown + cols - 1) // cols
    if rows * cols > shown:
        pad = np.zeros((n, rows * cols - shown, *frames.shape[2:]), np.uint8)
        frames = np.concatenate([frames, pad], axis=1)
    tiles = rearrange(frames, "n (r c) h w x -> n (r h) (c w) x", r=rows, c=cols)
    if rows == 1 or n == 1 or gap == 0:
        return np.ascontiguousarray(rearrange(tiles, "n h w x -> (n h) w x"))
    line = np.full((gap, tiles.shape[2], 3), 255, np.uint8)
    parts: list[np.ndarray] = []
    for i, tile in enumerate(tiles):
        parts.extend([line, tile] if i else [tile])
    return np.ascontiguousarray(np.concatenate(parts, axis=0))


def png_grid(video: torch.Tensor, path: str, columns: int = 16, max_frames: int = 64) -> None:
    """Save ``[N, C, T, H, W]`` as a PNG grid of every video's frames (see :func:`grid_image`)."""
    from PIL import Image

    Image.fromarray(grid_image(video, columns, max_frames)).save(path)
