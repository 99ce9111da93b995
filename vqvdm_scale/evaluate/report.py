"""What an evaluation writes: ``results.json`` with its whole protocol, and a guidance sweep's table and plot."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from vqvdm_scale.metrics.protocol import ProtocolConfig

__all__ = ["RESULTS_FORMAT", "code_version", "protocol_record", "sweep_plot", "sweep_table", "write_json"]

RESULTS_FORMAT = "vqvdm-eval-results/1"


def code_version() -> dict[str, Any]:
    """The package version and, in a git checkout, the commit and whether the tree had changes."""
    out: dict[str, Any] = {"package": "vqvdm-scale"}
    try:
        out["version"] = metadata.version("vqvdm-scale")
    except metadata.PackageNotFoundError:
        out["version"] = None
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        out["git_commit"], out["git_dirty"] = commit, bool(dirty)
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out


def protocol_record(p: ProtocolConfig) -> dict[str, Any]:
    """The protocol config plus the fixed choices behind each metric, with where they come from."""
    spec = p.is_spec
    return {
        **{k: getattr(p, k) for k in p.__dataclass_fields__},
        "fvd": (
            f"StyleGAN-V fvd{p.num_fake}_{p.frames}f: one clip per real video from the first {p.num_real} videos "
            f"with >= {p.frames * p.stride} frames, seeded uniform start; fakes from frame 0; I3D logits "
            "(rescale, resize to 224); float64 mean and covariance normalised by N"
        ),
        "fvd128": f"StyleGAN-V fvd{p.num_fake}_{p.long_frames}f: as fvd with {p.long_frames}-frame clips",
        "kvd": "TATS polynomial_mmd: unbiased MMD^2, kernel (x.y/400 + 1)^3, all real vs all fake, one pass",
        "is": {
            "preset": p.is_preset,
            "num_samples": spec.num_samples,
            "splits": spec.splits,
            "draws": spec.draws,
            "eps": spec.eps,
            "shuffle_seed": spec.shuffle_seed,
            "tgan_crop": spec.crop,
            "source": spec.source,
        },
        "real_resize": "short side to the resolution (bilinear, antialiased), centre square crop",
    }


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` (with the format and date added) through a temporary name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "format": RESULTS_FORMAT,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        **data,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def _value(metrics: dict[str, Any], name: str) -> str:
    v = metrics.get(name)
    if isinstance(v, dict) and "mean" in v:
        return f"{v['mean']:.3f} +- {v['std']:.3f}"
    return f"{v:.3f}" if isinstance(v, (int, float)) else "-"


def sweep_table(rows: Sequence[tuple[float, dict[str, Any]]], names: Sequence[str]) -> str:
    """A markdown table of guidance against each metric."""
    lines = ["| guidance | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for w, metrics in rows:
        lines.append(f"| {w:g} | " + " | ".join(_value(metrics, n) for n in names) + " |")
    return "\n".join(lines) + "\n"


def sweep_plot(rows: Sequence[tuple[float, dict[str, Any]]], name: str, path: Path) -> Path:
    """A small PNG line plot of metric ``name`` (a number) against the guidance weight."""
    from PIL import Image, ImageDraw

    pts = [(w, float(m[name])) for w, m in rows if isinstance(m.get(name), (int, float))]
    width, height, pad = 480, 320, 48
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([pad, pad // 2, width - pad // 2, height - pad], outline="black")
    d.text((pad, 4), f"{name.upper()} against guidance w", fill="black")
    if pts:
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

        def xy(w: float, v: float) -> tuple[float, float]:
            fx = pad + (w - x0) / (x1 - x0) * (width - 1.5 * pad)
            fy = height - pad - (v - y0) / (y1 - y0) * (height - 1.5 * pad)
            return fx, fy

        d.line([xy(w, v) for w, v in pts], fill=(200, 30, 30), width=2)
        for w, v in pts:
            x, y = xy(w, v)
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(200, 30, 30))
            d.text((x - 8, height - pad + 4), f"{w:g}", fill="black")
            d.text((x + 5, y - 14), f"{v:.1f}", fill="black")
    img.save(path)
    return path
