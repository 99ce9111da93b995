"""Video IO: short-side sizing, upright rotation, grayscale/odd sizes, reproducible H.264, frame folders."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from vqvdm_scale.data import video_io
from vqvdm_scale.data.video_io import (
    VideoReadError,
    decode_frames_dir,
    decode_mp4_bytes,
    decode_video,
    encode_mp4,
    short_side_size,
)


def write_video(
    path: Path,
    frames: np.ndarray,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    in_format: str = "rgb24",
    rotation: int | None = None,
    fps: int = 10,
) -> Path:
    """Encode ``frames`` with PyAV (any codec / pixel format), optionally tagging a display rotation."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(frame, format=in_format)
            vf.pts = i
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_short_side_size() -> None:
    assert short_side_size(256, 340, 128) == (128, 170)
    assert short_side_size(1080, 1920, 64) == (64, 114)  # 113.8 -> nearest even
    assert short_side_size(568, 320, 64) == (114, 64)  # portrait: the width is the short side
    assert short_side_size(47, 33, 32) == (46, 32)  # odd source: even output
    assert short_side_size(50, 50, 128) == (128, 128)  # small sources are upscaled to the short side
    with pytest.raises(ValueError, match="even"):
        short_side_size(100, 100, 33)


def test_encode_decode_roundtrip_and_fps() -> None:
    rng = np.random.default_rng(0)
    # Smooth content (a moving gradient) so crf 18 should reproduce it closely.
    base = np.linspace(0, 255, 70)[None, None, :, None] * np.ones((1, 40, 1, 3))
    frames = np.stack([np.roll(base[0], 3 * t, axis=1) for t in range(12)]).astype(np.uint8)
    frames[..., 1] = rng.integers(100, 110)
    data = encode_mp4(frames, 29.97)
    decoded, fps = decode_mp4_bytes(data)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    assert abs(fps - 30000 / 1001) < 1e-6  # 29.97 is stored as the exact NTSC rational
    assert np.abs(decoded.astype(int) - frames).mean() < 3.0
    with pytest.raises(ValueError, match="even"):
        encode_mp4(np.zeros((2, 33, 32, 3), np.uint8), 10)
    with pytest.raises(VideoReadError):
        decode_mp4_bytes(b"")


# Loads video_io.py by path: importing the vqvdm_scale.data package would pull in torch (seconds per process).
_ENCODE_SNIPPET = """
import hashlib, importlib.util, sys, numpy as np
spec = importlib.util.spec_from_file_location("video_io", sys.argv[1])
video_io = sys.modules["video_io"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(video_io)
encode_mp4 = video_io.encode_mp4
rng = np.random.default_rng(0)
frames = (rng.random((32, 128, 176, 3)) * 40 + np.linspace(0, 200, 176)[None, None, :, None]).astype(np.uint8)
print(hashlib.sha256(encode_mp4(frames, 30)).hexdigest())
"""


def test_encode_is_byte_reproducible_across_processes() -> None:
    # Different MALLOC_PERTURB_ values fill fresh heap memory differently: with x264's default mbtree the
    # bytes changed with it for this very input (uninitialised reads at widths that are not multiples of 64).
    digests = set()
    for perturb in ("0", "85", "170"):
        env = {**os.environ, "MALLOC_PERTURB_": perturb}
        out = subprocess.run(
            [sys.executable, "-c", _ENCODE_SNIPPET, video_io.__file__],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1


def test_rotation_metadata_is_applied(tmp_path: Path) -> None:
    frames = np.zeros((4, 48, 64, 3), np.uint8)
    frames[:, :, :16] = 255  # a bright band on the left edge of the stored (landscape) frame
    path = write_video(tmp_path / "rot.mp4", frames, rotation=90)
    with av.open(str(path)) as container:
        assert next(container.decode(video=0)).rotation == 90  # the tag really is in the file
    video = decode_video(path)
    assert video.frames.shape == (4, 64, 48, 3)  # upright = portrait
    assert video.orig_size == (64, 48)
    expected = np.rot90(frames, k=1, axes=(1, 2))  # 90 degrees counter-clockwise: left band -> bottom
    assert np.abs(video.frames.astype(int) - expected).mean() < 4.0
    assert video.frames[:, -8:].mean() > 200 and video.frames[:, :8].mean() < 50
    resized = decode_video(path, resolution=32)
    assert resized.frames.shape == (4, 42, 32, 3)


def test_shared_rotated_file_is_upright(shared_data: Path) -> None:
    video = decode_video(shared_data / "bad_videos" / "rotated90_3frames.mov", resolution=64)
    assert video.orig_size == (568, 320)  # stored 320x568 landscape, displayed portrait
    assert video.frames.shape == (3, 114, 64, 3)


def test_grayscale_and_odd_sizes(tmp_path: Path) -> None:
    gray = np.tile(np.linspace(0, 255, 48), (40, 1))[None].repeat(20, 0).astype(np.uint8)
    path = write_video(tmp_path / "gray.mkv", gray, codec="ffv1", pix_fmt="gray", in_format="gray")
    with av.open(str(path)) as container:
        assert container.streams.video[0].format.name == "gray"
    video = decode_video(path)
    assert video.frames.shape == (20, 40, 48, 3)
    assert np.array_equal(video.frames[..., 0], gray) and np.array_equal(video.frames[..., 2], gray)

    odd = np.random.default_rng(0).integers(0, 255, (18, 47, 33, 3), dtype=np.uint8)
    path = write_video(tmp_path / "odd.avi", odd, codec="mpeg4")
    video = decode_video(path, resolution=32)
    assert video.orig_size == (47, 33) and video.frames.shape == (18, 46, 32, 3)
    encode_mp4(video.frames, video.fps)  # the resized output is encodable as yuv420p


def test_large_frames_resized_while_decoding(shared_data: Path) -> None:
    video = decode_video(shared_data / "videos" / "fullhd_1920x1080_30fps.avi", resolution=32, max_frames=5)
    assert video.orig_size == (1080, 1920)
    assert video.frames.shape == (5, 32, 56, 3)
    assert float(video.fps) == 30.0


def test_read_errors_have_reasons(tmp_path: Path, shared_data: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 50)
    cases = {
        tmp_path / "empty.mp4": "zero_byte",
        tmp_path / "text.mp4": "not_a_video",
        tmp_path / "absent.mp4": "missing",
    }
    for path, reason in cases.items():
        with pytest.raises(VideoReadError) as info:
            decode_video(path)
        assert info.value.reason == reason
    corrupted = decode_video(shared_data / "bad_videos" / "corrupted_h264.mp4", resolution=32)
    assert corrupted.error is not None and 0 < corrupted.num_frames < 50  # stops part-way, prefix kept


def test_decode_frames_dir_natural_order(tmp_path: Path) -> None:
    for i in (1, 2, 10):  # natural order: 2 before 10
        Image.fromarray(np.full((30, 40, 3), i * 20, np.uint8)).save(tmp_path / f"frame_{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    video = decode_frames_dir(tmp_path, resolution=16, fps=12.0)
    assert video.frames.shape == (3, 16, 22, 3)
    assert [int(f.mean()) for f in video.frames] == [20, 40, 200]
    assert float(video.fps) == 12.0 and video.orig_size == (30, 40)
    assert (
        hashlib.sha256(video.frames.tobytes()).digest()
        == hashlib.sha256(decode_frames_dir(tmp_path, resolution=16, fps=12.0).frames.tobytes()).digest()
    )
