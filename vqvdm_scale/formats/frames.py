"""Lossless video files for evaluation: uint8 frames as one ``.npy`` per video, or a folder of PNGs.

``launchers/sample.py --format npy`` (or ``png``) writes them, and ``launchers/evaluate.py --fake DIR``
reads them, so metrics never see H.264 re-compression. An ``.npy`` holds ``[T, H, W, 3]`` uint8; a PNG
folder holds ``frame_00000.png`` ... in order. Both round-trip bit-exactly.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np

from vqvdm_scale.config.core import UserError

__all__ = ["FRAME_FORMATS", "find_videos", "read_frames", "write_npy", "write_png_dir"]

FRAME_FORMATS = ("mp4", "npy", "png")
_FRAME_NAME = re.compile(r"^frame_(\d+)\.png$")


def _check(frames: np.ndarray) -> np.ndarray:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 [T, H, W, 3] frames, got {frames.dtype} {list(frames.shape)}")
    return frames


def write_npy(path: str | Path, frames: np.ndarray) -> Path:
    """Write ``[T, H, W, 3]`` uint8 frames to ``path`` (an ``.npy``), through a temporary name."""
    p = Path(path)
    buf = io.BytesIO()
    np.save(buf, _check(frames), allow_pickle=False)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(p)
    return p


def write_png_dir(path: str | Path, frames: np.ndarray) -> Path:
    """Write ``[T, H, W, 3]`` uint8 frames as ``path/frame_00000.png`` ... (lossless), replacing any folder
    there: the frames go to a temporary folder that is renamed into place when complete."""
    import shutil

    from PIL import Image

    frames = _check(frames)
    d = Path(path)
    tmp = d.with_name(f".{d.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp / f"frame_{i:05d}.png")
    shutil.rmtree(d, ignore_errors=True)
    tmp.rename(d)
    return d


def read_frames(path: str | Path) -> np.ndarray:
    """``[T, H, W, 3]`` uint8 frames of one ``.npy`` file or PNG folder; UserError if it is neither."""
    p = Path(path)
    if p.is_dir():
        from PIL import Image

        files = sorted(
            (int(m.group(1)), f) for f in p.iterdir() if (m := _FRAME_NAME.match(f.name)) is not None
        )
        if not files:
            raise UserError(f"{p} holds no frame_NNNNN.png files")
        return _check(np.stack([np.asarray(Image.open(f).convert("RGB")) for _, f in files]))
    if p.suffix == ".npy":
        try:
            return _check(np.load(p, allow_pickle=False))
        except (ValueError, OSError) as e:
            raise UserError(f"{p} is not a uint8 [T, H, W, 3] frame array ({e})") from e
    raise UserError(f"{p}: lossless videos are .npy files or folders of frame_NNNNN.png")


def find_videos(folder: str | Path) -> list[Path]:
    """The lossless videos in ``folder`` (``*.npy`` and PNG folders), sorted by name; a video written in
    both forms (``sample.py --format npy,png``) is counted once, from its ``.npy``.

    A folder of only mp4 files is refused: metrics on re-compressed H.264 are not comparable.
    """
    d = Path(folder)
    if not d.is_dir():
        raise UserError(f"--fake {str(d)!r} is not a directory of generated videos")
    npy = {p.stem: p for p in d.iterdir() if p.suffix == ".npy" and p.is_file()}
    png = {
        p.name: p
        for p in d.iterdir()
        if p.is_dir() and not p.name.startswith(".") and any(_FRAME_NAME.match(f.name) for f in p.iterdir())
    }
    found = sorted([*npy.values(), *(p for name, p in png.items() if name not in npy)])  # one form per video
    if not found:
        mp4 = any(d.glob("*.mp4"))
        hint = (
            "it holds only mp4 files, and metrics on re-compressed H.264 are not comparable: re-sample with "
            "launchers/sample.py --format npy"
            if mp4
            else "write them with launchers/sample.py --format npy (or png)"
        )
        raise UserError(f"--fake {str(d)!r} has no .npy videos or PNG frame folders: {hint}")
    return found
