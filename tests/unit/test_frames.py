"""Lossless video files for evaluation (formats/frames.py) and sample.py's ``--format npy`` output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vqvdm_scale.config import UserError
from vqvdm_scale.formats.frames import find_videos, read_frames, write_npy, write_png_dir
from vqvdm_scale.monitor.media import to_uint8
from vqvdm_scale.sample.api import write_videos

SHAPES = [(3, 8, 8), (5, 7, 5), (1, 5, 7), (2, 1, 1)]  # (T, H, W), odd sizes included


def _frames(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Random uint8 ``[T, H, W, 3]`` frames covering the whole 0..255 range."""
    return np.random.default_rng(seed).integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("t, h, w", SHAPES)
def test_npy_round_trip_is_bit_exact(tmp_path: Path, t: int, h: int, w: int) -> None:
    frames = _frames(t, h, w)
    path = write_npy(tmp_path / "v.npy", frames)
    assert path == tmp_path / "v.npy" and sorted(p.name for p in tmp_path.iterdir()) == ["v.npy"]
    back = read_frames(path)
    assert back.dtype == np.uint8 and back.shape == (t, h, w, 3)
    assert np.array_equal(back, frames)


@pytest.mark.parametrize("t, h, w", SHAPES)
def test_png_round_trip_is_bit_exact(tmp_path: Path, t: int, h: int, w: int) -> None:
    frames = _frames(t, h, w, seed=1)
    folder = write_png_dir(tmp_path / "v", frames)
    assert sorted(p.name for p in folder.iterdir()) == [f"frame_{i:05d}.png" for i in range(t)]
    back = read_frames(folder)
    assert back.dtype == np.uint8 and back.shape == (t, h, w, 3)
    assert np.array_equal(back, frames)


def test_png_frames_are_read_in_numeric_order(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "v"
    folder.mkdir()
    # by number, not by name: as text, unpadded frame_3.png would sort after frame_00010.png
    names = {2: "frame_00002.png", 10: "frame_00010.png", 0: "frame_0.png", 3: "frame_3.png"}
    for level, name in names.items():
        Image.fromarray(np.full((4, 6, 3), level, dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not a frame")
    back = read_frames(folder)
    assert back.shape == (4, 4, 6, 3)
    assert [int(f[0, 0, 0]) for f in back] == [0, 2, 3, 10]


def test_find_videos_counts_a_video_in_both_forms_once_and_sorts(tmp_path: Path) -> None:
    frames = _frames(2, 5, 7)
    for name in ("vid_b", "vid_a", "vid_c"):
        write_npy(tmp_path / f"{name}.npy", frames)
    write_png_dir(tmp_path / "vid_a", frames)  # vid_a in both forms (sample.py --format npy,png)
    write_png_dir(tmp_path / "vid_0", frames)  # png only
    (tmp_path / "vid_a.mp4").write_bytes(b"")  # an mp4 beside lossless files is ignored
    (tmp_path / "empty_dir").mkdir()  # a folder without frames is not a video
    found = find_videos(tmp_path)
    assert [p.name for p in found] == ["vid_0", "vid_a.npy", "vid_b.npy", "vid_c.npy"]
    assert found == sorted(found)
    assert all(np.array_equal(read_frames(p), frames) for p in found)


def test_a_folder_of_only_mp4_files_is_refused(tmp_path: Path) -> None:
    for i in range(2):
        (tmp_path / f"video_{i}.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    with pytest.raises(UserError) as e:
        find_videos(tmp_path)
    assert "H.264" in str(e.value) and "--format npy" in str(e.value)


def test_an_empty_or_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no .npy videos or PNG frame folders"):
        find_videos(tmp_path)
    with pytest.raises(UserError, match="is not a directory"):
        find_videos(tmp_path / "missing")


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((2, 4, 4, 3), dtype=np.float32),  # not uint8
        np.zeros((2, 4, 4, 3), dtype=np.int16),
        np.zeros((4, 4, 3), dtype=np.uint8),  # no time axis
        np.zeros((2, 4, 4), dtype=np.uint8),  # no channel axis
        np.zeros((2, 4, 4, 1), dtype=np.uint8),  # grey, not RGB
        np.zeros((2, 4, 4, 4), dtype=np.uint8),  # RGBA
    ],
    ids=["float32", "int16", "3d", "no-channels", "grey", "rgba"],
)
def test_wrong_dtype_or_shape_is_refused(tmp_path: Path, array: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"expected uint8 \[T, H, W, 3\] frames"):
        write_npy(tmp_path / "bad.npy", array)
    with pytest.raises(ValueError, match=r"expected uint8 \[T, H, W, 3\] frames"):
        write_png_dir(tmp_path / "bad", array)
    assert not (tmp_path / "bad.npy").exists() and not (tmp_path / "bad.npy.tmp").exists()
    np.save(tmp_path / "bad.npy", array)  # written by something else
    with pytest.raises(UserError, match="is not a uint8 \\[T, H, W, 3\\] frame array"):
        read_frames(tmp_path / "bad.npy")


def test_read_frames_refuses_other_files_and_frameless_folders(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="is not a uint8"):
        read_frames(tmp_path / "obj.npy")  # a pickled array is never loaded
    (tmp_path / "v.mp4").write_bytes(b"")
    with pytest.raises(UserError, match="lossless videos are .npy files or folders"):
        read_frames(tmp_path / "v.mp4")
    (tmp_path / "d").mkdir()
    with pytest.raises(UserError, match="holds no frame_NNNNN.png files"):
        read_frames(tmp_path / "d")


def test_write_videos_npy_only_writes_no_mp4_or_gif_and_equals_to_uint8(tmp_path: Path) -> None:
    videos = torch.rand(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    videos[0, :, 0] = -1.0  # the range ends exactly
    videos[1, :, 0] = 1.0
    paths = write_videos(videos, tmp_path / "out", ["v0", "v1"], fps=8.0, formats=["npy"])
    assert paths == [tmp_path / "out" / "v0.npy", tmp_path / "out" / "v1.npy"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["v0.npy", "v1.npy"]  # no mp4/gif/png
    want = to_uint8(videos)
    assert want.shape == (2, 4, 8, 8, 3)
    for i, p in enumerate(paths):
        got = np.load(p, allow_pickle=False)
        assert got.dtype == np.uint8 and np.array_equal(got, want[i])
    assert [p.name for p in find_videos(tmp_path / "out")] == ["v0.npy", "v1.npy"]
