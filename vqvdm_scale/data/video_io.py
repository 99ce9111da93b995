"""Video decode / encode with PyAV: upright uint8 RGB frames, short-side resize, reproducible H.264 bytes.

Frames are always ``uint8 [T, H, W, 3]`` RGB numpy arrays. Decoding resizes frame by frame as it goes, so a
1080p or 4K source never holds more than one full-size frame in memory.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np
from PIL import Image

from vqvdm_scale.config.text import plural

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# x264 settings for shard re-encodes. threads=1 and no-mbtree make the bytes reproducible: with
# macroblock-tree rate control x264 reads uninitialised memory when the width is not a multiple of 64
# (the output changes with MALLOC_PERTURB_), and with several threads the output depends on timing.
# Measured on the shared test videos at 128 short side, no-mbtree costs < 5% in size at crf 18.
X264_PARAMS = "threads=1:no-mbtree=1"
DEFAULT_CRF = 18
DEFAULT_PRESET = "medium"


class VideoReadError(ValueError):
    """A video could not be read; ``reason`` is a short machine-readable cause used in shard reports."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class DecodedVideo:
    """Decoded upright frames plus what the shard sample records about them."""

    frames: np.ndarray  # uint8 [T, H, W, 3]
    fps: Fraction
    orig_size: tuple[int, int]  # upright (H, W) of the source before resizing
    error: str | None = None  # set when decoding stopped early and only a prefix of frames is here

    @property
    def num_frames(self) -> int:
        """Number of decoded frames."""
        return int(self.frames.shape[0])


def short_side_size(height: int, width: int, resolution: int, even: bool = True) -> tuple[int, int]:
    """Output (H, W) with the short side = ``resolution`` and the aspect ratio kept (even dims for yuv420p)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    if even and resolution % 2:
        raise ValueError(f"resolution must be even for yuv420p output, got {resolution}")
    long_side = max(height, width) * resolution / min(height, width)
    # Even dims for yuv420p: round the exact long side to the nearest even number (never below 2).
    long_out = max(2, 2 * round(long_side / 2)) if even else max(1, round(long_side))
    out_h, out_w = (resolution, long_out) if height <= width else (long_out, resolution)
    return out_h, out_w


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize one uint8 [H, W, 3] frame to ``size`` = (H, W) with antialiased bilinear filtering (PIL)."""
    if frame.shape[:2] == tuple(size):
        return frame
    image = Image.fromarray(frame)
    # PIL's bilinear filter widens its support when downscaling, i.e. it is antialiased (area-like).
    return np.asarray(image.resize((size[1], size[0]), Image.Resampling.BILINEAR))


def rotate_upright(frame: np.ndarray, rotation: float) -> np.ndarray:
    """Rotate a decoded frame by its display-matrix ``rotation`` (degrees counter-clockwise) so it is upright."""
    quarter_turns = int(round(rotation / 90.0)) % 4
    if quarter_turns == 0:
        return frame
    # np.rot90 with k > 0 turns counter-clockwise, the convention of PyAV's VideoFrame.rotation and
    # FFmpeg's av_display_rotation_get (ffmpeg's own autorotate applies transpose=clock for -90).
    return np.ascontiguousarray(np.rot90(frame, k=quarter_turns))


def _fps_of(stream: av.video.stream.VideoStream) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate)
    return Fraction(25)  # container gives no rate at all: the common PAL default


def _as_fraction(fps: float | Fraction) -> Fraction:
    if isinstance(fps, Fraction):
        return fps
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    ntsc = Fraction(round(fps * 1001), 1001)
    # 29.97 / 23.976 / 59.94 are stored as n/1001; keep that exact rational when fps is one of them.
    if ntsc.numerator % 1000 == 0 and abs(float(ntsc) - fps) < 1e-3:
        return ntsc
    return Fraction(fps).limit_denominator(1001)


def decode_video(
    path: str | os.PathLike[str],
    resolution: int | None = None,
    max_frames: int | None = None,
) -> DecodedVideo:
    """Decode a video file to upright RGB frames, resized so the short side = ``resolution`` (None: keep size).

    Raises VideoReadError with reason ``missing``, ``zero_byte``, ``not_a_video`` or ``decode_error``.
    If decoding fails after some frames decoded, the good prefix is returned with ``error`` set.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
    except FileNotFoundError as e:
        raise VideoReadError("missing", f"{path}: file does not exist") from e
    except OSError as e:
        raise VideoReadError("unreadable", f"{path}: {e}") from e
    if size == 0:
        raise VideoReadError("zero_byte", f"{path}: file is empty (0 bytes)")
    try:
        container = av.open(path)
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise VideoReadError("not_a_video", f"{path}: not a readable video container ({e})") from e
    except OSError as e:
        raise VideoReadError("unreadable", f"{path}: {e}") from e
    with container:
        return _decode_container(container, path, resolution, max_frames)


def decode_mp4_bytes(
    data: bytes, resolution: int | None = None, max_frames: int | None = None
) -> tuple[np.ndarray, float]:
    """Decode in-memory video bytes (a shard's ``mp4``) to (uint8 [T, H, W, 3] frames, fps)."""
    if not data:
        raise VideoReadError("zero_byte", "video bytes are empty")
    try:
        container = av.open(io.BytesIO(data))
    except av.error.FFmpegError as e:
        raise VideoReadError("not_a_video", f"bytes are not a readable video ({e})") from e
    with container:
        video = _decode_container(container, "<bytes>", resolution, max_frames)
    if video.error is not None:
        raise VideoReadError("decode_error", f"video bytes are corrupt: {video.error}")
    return video.frames, float(video.fps)


def _decode_container(
    container: av.container.InputContainer, name: str, resolution: int | None, max_frames: int | None
) -> DecodedVideo:
    if not container.streams.video:
        raise VideoReadError("not_a_video", f"{name}: container has no video stream")
    stream = container.streams.video[0]
    fps = _fps_of(stream)
    frames: list[np.ndarray] = []
    orig_size: tuple[int, int] | None = None
    out_size: tuple[int, int] | None = None
    error: str | None = None
    try:
        for frame in container.decode(stream):
            turns = int(round(frame.rotation / 90.0)) % 4
            if orig_size is None:
                orig_size = (frame.height, frame.width) if turns % 2 == 0 else (frame.width, frame.height)
                out_size = orig_size if resolution is None else short_side_size(*orig_size, resolution)
            assert out_size is not None
            # Scale (and convert to RGB) in the decoded orientation, then rotate upright. Resizing each
            # frame as it is decoded (swscale, area filter: antialiased when shrinking) keeps memory at
            # one full-size frame however large the source is.
            height, width = out_size if turns % 2 == 0 else (out_size[1], out_size[0])
            rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA")
            frames.append(rotate_upright(rgb.to_ndarray(), frame.rotation))
            if max_frames is not None and len(frames) >= max_frames:
                break
    except (av.error.FFmpegError, ValueError, MemoryError) as e:
        if not frames:
            raise VideoReadError("decode_error", f"{name}: decoding failed before any frame ({e})") from e
        error = f"decoding stopped after {plural(len(frames), 'frame')}: {e}"
    if orig_size is None or out_size is None:
        return DecodedVideo(np.zeros((0, 2, 2, 3), np.uint8), fps, (0, 0), error)
    return DecodedVideo(np.stack(frames), fps, orig_size, error)


def _natural_key(name: str) -> list[int | str]:
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def list_frame_files(path: str | os.PathLike[str]) -> list[Path]:
    """Image files directly inside ``path``, in natural order (frame_2 before frame_10)."""
    folder = Path(path)
    files = [
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    ]
    return sorted(files, key=lambda p: _natural_key(p.name))


def decode_frames_dir(
    path: str | os.PathLike[str],
    resolution: int | None = None,
    max_frames: int | None = None,
    fps: float = 25.0,
) -> DecodedVideo:
    """Read a folder of frame images (e.g. a SkyTimelapse clip) as one video at the given ``fps``."""
    folder = Path(path)
    if not folder.is_dir():
        raise VideoReadError("missing", f"{folder}: frame folder does not exist")
    files = list_frame_files(folder)
    if max_frames is not None:
        files = files[:max_frames]
    frames: list[np.ndarray] = []
    orig_size: tuple[int, int] | None = None
    out_size: tuple[int, int] | None = None
    error: str | None = None
    for file in files:
        try:
            with Image.open(file) as image:
                rgb = np.asarray(image.convert("RGB"))
        except (OSError, ValueError) as e:
            if not frames:
                raise VideoReadError("decode_error", f"{file}: unreadable frame image ({e})") from e
            error = f"frame {file.name} unreadable after {plural(len(frames), 'frame')}: {e}"
            break
        if orig_size is None:
            orig_size = (int(rgb.shape[0]), int(rgb.shape[1]))
            out_size = orig_size if resolution is None else short_side_size(*orig_size, resolution)
        elif rgb.shape[:2] != orig_size:
            rgb = resize_frame(rgb, orig_size)
        assert out_size is not None
        frames.append(resize_frame(rgb, out_size))
    rate = _as_fraction(fps)
    if orig_size is None:
        return DecodedVideo(np.zeros((0, 2, 2, 3), np.uint8), rate, (0, 0), error)
    return DecodedVideo(np.stack(frames), rate, orig_size, error)


def encode_mp4(
    frames: np.ndarray,
    fps: float | Fraction,
    crf: int = DEFAULT_CRF,
    preset: str = DEFAULT_PRESET,
) -> bytes:
    """Encode uint8 [T, H, W, 3] RGB frames (even H, W) as H.264 yuv420p mp4 bytes; same input -> same bytes."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    num, height, width = int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])
    if num == 0:
        raise ValueError("cannot encode a video with 0 frames")
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even frame sizes, got {height}x{width}; resize first")
    rate = _as_fraction(fps)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        stream.options = {"crf": str(crf), "preset": preset, "x264-params": X264_PARAMS}
        for index in range(num):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[index]), format="rgb24")
            frame.pts = index  # explicit timestamps: constant frame rate in the stream's time base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()
