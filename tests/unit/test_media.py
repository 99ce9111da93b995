"""PNG grids and GIFs of sampled videos show the whole video, not only its first clip."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqvdm_scale.monitor.media import (
    gif_bytes,
    grid_frame_indices,
    grid_image,
    png_grid,
    tile_videos,
    to_uint8,
)


def numbered_video(n: int, t: int, size: int = 4) -> torch.Tensor:
    """``[n, 3, t, size, size]`` whose frame ``j`` of video ``i`` is flat grey level ``3 * (i * t + j) + 2``."""
    levels = torch.arange(n * t, dtype=torch.float32).reshape(n, 1, t, 1, 1) * 3 + 2
    return (levels / 127.5 - 1).expand(n, 3, t, size, size).contiguous()


def frame_level(tile: np.ndarray) -> int:
    assert (tile == tile[0, 0, 0]).all(), "a grid cell mixes two frames"
    return int(tile[0, 0, 0])


def test_numbered_video_levels_survive_uint8() -> None:
    frames = to_uint8(numbered_video(2, 40))
    assert frames[1, 39, 0, 0, 0] == 3 * 79 + 2 and frames[0, 0, 0, 0, 0] == 2


def test_long_video_png_grid_shows_every_frame_up_to_the_last(tmp_path: Path) -> None:
    video = numbered_video(1, 40)
    png_grid(video, str(tmp_path / "grid.png"))
    grid = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB"))
    assert grid.shape == (3 * 4, 16 * 4, 3)  # 40 frames in rows of 16: 3 rows
    cells = [grid[r * 4 : (r + 1) * 4, c * 4 : (c + 1) * 4] for r in range(3) for c in range(16)]
    levels = [frame_level(cell) for cell in cells]
    assert levels[:40] == [3 * j + 2 for j in range(40)]  # every frame in time order, the last (39) included
    assert levels[40:] == [0] * 8  # the rest of the last row is black padding


def test_grid_keeps_short_clips_on_one_row_per_video() -> None:
    grid = grid_image(numbered_video(3, 16))
    assert grid.shape == (3 * 4, 16 * 4, 3)  # the classic layout: no gap, one row per video
    assert frame_level(grid[8:12, 60:64]) == 3 * (2 * 16 + 15) + 2  # video 2, frame 15


def test_grid_separates_multi_row_videos_and_keeps_each_videos_last_frame() -> None:
    grid = grid_image(numbered_video(2, 40), columns=16, gap=2)
    assert grid.shape == (2 * 12 + 2, 64, 3)
    assert (grid[12:14] == 255).all()  # the white line between the two videos
    assert frame_level(grid[8:12, 28:32]) == 3 * 39 + 2  # video 0, frame 39: row 2, column 7
    assert frame_level(grid[14 + 8 : 14 + 12, 28:32]) == 3 * 79 + 2  # video 1, frame 39


def test_very_long_video_is_subsampled_across_its_whole_length() -> None:
    assert grid_frame_indices(40, 64) == list(range(40))
    idx = grid_frame_indices(200, 16)
    assert len(idx) == 16 and idx[0] == 0 and idx[-1] == 199 and idx == sorted(set(idx))
    assert (
        max(b - a for a, b in zip(idx[:-1], idx[1:], strict=True)) <= 14
    )  # evenly spread, no long unseen stretch
    assert grid_frame_indices(200, 1) == [199]
    with pytest.raises(ValueError, match="max_frames"):
        grid_frame_indices(10, 0)
    grid = grid_image(numbered_video(1, 84), columns=8, max_frames=16)  # levels up to 3*83+2 = 251
    assert grid.shape == (2 * 4, 8 * 4, 3)
    assert frame_level(grid[4:8, 28:32]) == 3 * 83 + 2  # the last cell is the last frame


def test_long_video_gif_has_every_frame() -> None:
    frames = tile_videos(numbered_video(2, 40))
    assert frames.shape == (40, 4, 8, 3)
    gif = Image.open(io.BytesIO(gif_bytes(frames, fps=8.0)))
    assert gif.n_frames == 40
    gif.seek(39)
    last = np.asarray(gif.convert("RGB"))
    assert abs(int(last[0, 0, 0]) - (3 * 39 + 2)) <= 2 and abs(int(last[0, 7, 0]) - (3 * 79 + 2)) <= 2
