"""The built-in synthetic dataset: class-conditional moving shapes, written as real mp4 files.

Class ``k`` fixes the shape, the motion and the colour (so a class-conditional model has something to learn);
each video draws its start position, speed and background from a seeded RNG. The videos are written as mp4
files into class folders so they go through the same make_shards path (layout=folder) as real data.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np

from vqvdm_scale.data.video_io import encode_mp4

# (shape, motion) of classes 0..7; class k >= 8 reuses entry k % 8 with another colour.
CLASS_SPECS: tuple[tuple[str, str], ...] = (
    ("square", "right"),
    ("circle", "down"),
    ("triangle", "diagonal"),
    ("bar", "rotate"),
    ("cross", "left"),
    ("diamond", "up"),
    ("ring", "antidiagonal"),
    ("square", "pulse"),
)
SYNTHETIC_FPS = 8.0


def class_name(label: int) -> str:
    """Folder / class name of synthetic class ``label`` (zero-padded so sorted order = label order)."""
    shape, motion = CLASS_SPECS[label % len(CLASS_SPECS)]
    return f"{label:03d}_{shape}_{motion}"


def class_colour(label: int) -> np.ndarray:
    """A saturated RGB colour (float 0..255) for the class; hues spread by the golden ratio."""
    hue = (label * 0.618033988749895) % 1.0
    return np.array(colorsys.hsv_to_rgb(hue, 0.85, 0.95)) * 255.0


def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, r: float, angle: float) -> np.ndarray:
    """Boolean mask of ``shape`` of radius ``r`` centred at the origin of the (yy, xx) offsets."""
    if shape == "square":
        return (np.abs(yy) <= r) & (np.abs(xx) <= r)
    if shape == "circle":
        return yy**2 + xx**2 <= r**2
    if shape == "triangle":  # apex up: inside the base line and the two slanted edges
        return (yy <= r * 0.8) & (yy >= -r) & (np.abs(xx) <= (yy + r) * 0.6)
    if shape == "bar":  # a long thin rectangle rotated by ``angle``
        u = xx * np.cos(angle) + yy * np.sin(angle)
        v = -xx * np.sin(angle) + yy * np.cos(angle)
        return (np.abs(u) <= 1.6 * r) & (np.abs(v) <= 0.3 * r)
    if shape == "cross":
        return ((np.abs(yy) <= r) & (np.abs(xx) <= r / 3)) | ((np.abs(xx) <= r) & (np.abs(yy) <= r / 3))
    if shape == "diamond":
        return np.abs(yy) + np.abs(xx) <= r
    if shape == "ring":
        d2 = yy**2 + xx**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    raise ValueError(f"unknown synthetic shape {shape!r}")


def make_synthetic_video(label: int, num_frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One synthetic video of class ``label``: uint8 [num_frames, size, size, 3]."""
    if label < 0:
        raise ValueError(f"label must be >= 0, got {label}")
    if num_frames < 1 or size < 8:
        raise ValueError(f"need num_frames >= 1 and size >= 8, got {num_frames} and {size}")
    shape, motion = CLASS_SPECS[label % len(CLASS_SPECS)]
    colour = class_colour(label)
    radius = size * rng.uniform(0.12, 0.18)
    speed = size * rng.uniform(0.02, 0.05)  # pixels per frame
    cy, cx = rng.uniform(0, size, 2)
    spin = rng.uniform(0.15, 0.3) * rng.choice([-1.0, 1.0])
    # A dim vertical gradient background that differs per video, so the model cannot key on it.
    top, bottom = rng.uniform(10, 60, 3), rng.uniform(10, 60, 3)
    ramp = np.linspace(0.0, 1.0, size)[:, None, None]
    background = (top * (1 - ramp) + bottom * ramp) * np.ones((1, size, 1))
    direction = {
        "right": (0.0, 1.0),
        "left": (0.0, -1.0),
        "down": (1.0, 0.0),
        "up": (-1.0, 0.0),
        "diagonal": (0.7071, 0.7071),
        "antidiagonal": (0.7071, -0.7071),
    }.get(motion, (0.0, 0.0))
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    video = np.empty((num_frames, size, size, 3), np.uint8)
    for t in range(num_frames):
        y = (cy + direction[0] * speed * t) % size
        x = (cx + direction[1] * speed * t) % size
        r = radius * (1.0 + 0.35 * np.sin(0.6 * t)) if motion == "pulse" else radius
        # Offsets on the torus, so a shape leaving one edge re-enters at the other (always fully drawn).
        dy = (ys - y + size / 2) % size - size / 2
        dx = (xs - x + size / 2) % size - size / 2
        mask = _shape_mask(shape, dy, dx, r, spin * t if motion == "rotate" else 0.0)
        frame = background.copy()
        frame[mask] = colour
        video[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return video


def write_synthetic_dataset(
    out_dir: str | Path,
    num_classes: int = 4,
    videos_per_class: int = 8,
    num_frames: int = 24,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write ``out_dir/<class>/video_XXXX.mp4`` for every class; same arguments -> same files. Returns out_dir."""
    if num_classes < 1 or videos_per_class < 1:
        raise ValueError(
            f"need num_classes >= 1 and videos_per_class >= 1, got {num_classes}, {videos_per_class}"
        )
    if size % 2:
        raise ValueError(f"size must be even (yuv420p mp4), got {size}")
    root = Path(out_dir)
    for label in range(num_classes):
        folder = root / class_name(label)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(videos_per_class):
            # One RNG stream per (seed, class, video): a video does not change when others are added.
            rng = np.random.default_rng([seed, label, i])
            frames = make_synthetic_video(label, num_frames, size, rng)
            (folder / f"video_{i:04d}.mp4").write_bytes(encode_mp4(frames, SYNTHETIC_FPS))
    return root
