"""TGANv2's Chainer C3D (``conv3d_deepnetA_ucf.npz`` + ``mean2.npz``) -> one safetensors file in our C3D layout.

The video Inception Score (TGANv2, StyleGAN-V) classifies clips with the Caffe C3D fine-tuned on UCF-101,
which TGANv2 publishes as Chainer npz files (github.com/rezoo/tgan2, release v1.0):

- ``conv3d_deepnetA_ucf.npz`` is ``save_npz`` of ``C3DVersion1UCF101``: ``conv1a/W``, ``conv1a/b``,
  ``conv2a/W``, ``conv3a/W``, ``conv3b/W``, ... ``fc8/W``, ``fc8/b``. Chainer's ``ConvolutionND`` and
  ``Linear`` keep ``W`` as ``(out, in, ...)`` cross-correlation kernels, as torch does, so the arrays are
  copied unchanged (as float32); only the names change: ``conv1a`` -> ``conv1`` and ``conv2a`` -> ``conv2``
  (the PyTorch C3D port's names), ``W`` -> ``weight``, ``b`` -> ``bias``. A path prefix before the layer
  name (``predictor/conv1a/W``, from saving a wrapping chain) is dropped.
- ``mean2.npz`` holds ``mean``, the per-voxel BGR mean ``[3, 16, H, W]`` on the 0..255 scale; TGANv2
  subtracts ``mean[:, :, 8:120, 8:120]``, which becomes the ``mean`` buffer ``[3, 16, 112, 112]``.
  Leading singleton axes (a ``[1, 3, 16, H, W]`` blob) are dropped first.

The result is checked with ``C3D().load_state_dict(strict=True)`` before it is written (atomically, with
the sha256 of both sources in its metadata); :func:`vqvdm_scale.metrics.detectors.load_detector` loads it.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqvdm_scale.config import ConfigError, UserError
from vqvdm_scale.formats.safetensors_file import write_safetensors
from vqvdm_scale.models.detectors import C3D

__all__ = ["LAYERS", "ConvertC3DConfig", "Tgan2Weights", "convert_c3d", "main", "tgan2_mean", "tgan2_weights"]

# TGANv2 (Chainer) layer name -> our C3D module name; parameter W/b -> weight/bias
LAYERS = {
    "conv1a": "conv1",
    "conv2a": "conv2",
    "conv3a": "conv3a",
    "conv3b": "conv3b",
    "conv4a": "conv4a",
    "conv4b": "conv4b",
    "conv5a": "conv5a",
    "conv5b": "conv5b",
    "fc6": "fc6",
    "fc7": "fc7",
    "fc8": "fc8",
}
PARAMS = {"W": "weight", "b": "bias"}
CROP = (8, 120)  # TGANv2: mean[:, :, 8:8 + 112, 8:8 + 112]

NPZ_HINT = "TGANv2's conv3d_deepnetA_ucf.npz (github.com/rezoo/tgan2 release v1.0)"
MEAN_HINT = "TGANv2's mean2.npz (github.com/rezoo/tgan2 release v1.0)"


@dataclass
class ConvertC3DConfig:
    """Options of convert_c3d (CLI: data_prep/convert_c3d.py)."""

    npz: str = ""  # TGANv2's conv3d_deepnetA_ucf.npz (Chainer weights)
    mean: str = ""  # TGANv2's mean2.npz (the per-voxel BGR mean)
    output: str = ""  # the .safetensors file to write (a local path)

    def __post_init__(self) -> None:
        if self.output and not self.output.endswith(".safetensors"):
            raise ConfigError(f"output: must be a .safetensors file, got {self.output!r}")
        if "://" in self.output:
            raise ConfigError(f"output: must be a local path, got {self.output!r}")


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    """Every C3D state-dict key and shape, from a module on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = C3D()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _load_npz(path: str, hint: str) -> Any:
    """The open ``np.load`` archive at ``path`` (closed by the caller), or a UserError naming ``hint``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{path!r}: no such file; expected {hint}")
    if not zipfile.is_zipfile(p):
        with open(p, "rb") as f:
            what = "a single .npy array" if f.read(6) == b"\x93NUMPY" else "not a zip file"
        raise UserError(f"{path}: not an npz archive ({what}); expected {hint}")
    try:
        return np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: not an npz archive ({' '.join(str(e).split())}); expected {hint}") from e


def _finite32(array: np.ndarray, what: str) -> np.ndarray:
    out = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(out).all():
        raise UserError(f"{what} holds NaN or inf")
    return out


@dataclass
class Tgan2Weights:
    """The C3D weights read from TGANv2's npz: our names -> float32 tensors, and where each came from."""

    tensors: dict[str, torch.Tensor]
    keys: dict[str, str]  # npz key -> our name
    ignored: list[str]  # npz keys that are not C3D weights

    @property
    def prefixes(self) -> list[str]:
        """The path prefixes dropped before the layer names (``predictor/``), if any."""
        return sorted({k.rsplit("/", 2)[0] + "/" for k in self.keys if k.count("/") >= 2})


def tgan2_weights(npz_path: str) -> Tgan2Weights:
    """The C3D weights of TGANv2's npz under our names, as float32 (see the module docstring)."""
    expected = _expected_shapes()
    tensors: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    ignored: list[str] = []
    with _load_npz(npz_path, NPZ_HINT) as npz:
        keys = list(npz.files)
        for key in keys:
            parts = key.split("/")
            if len(parts) < 2 or parts[-2] not in LAYERS or parts[-1] not in PARAMS:
                ignored.append(key)
                continue
            name = f"{LAYERS[parts[-2]]}.{PARAMS[parts[-1]]}"
            if name in source:
                raise UserError(f"{npz_path}: {source[name]!r} and {key!r} are both {parts[-2]}/{parts[-1]}")
            array = npz[key]
            if tuple(array.shape) != expected[name]:
                raise UserError(
                    f"{npz_path}: {key} has shape {list(array.shape)}, but C3D's {name} is "
                    f"{list(expected[name])}; expected {NPZ_HINT}, the UCF-101 (101-class) C3D"
                )
            tensors[name] = torch.from_numpy(_finite32(array, f"{npz_path}: {key}"))
            source[name] = key
    back = {f"{ours}.{p}": f"{theirs}/{q}" for theirs, ours in LAYERS.items() for q, p in PARAMS.items()}
    missing = [back[n] for n in expected if n != "mean" and n not in tensors]
    if missing:
        shown = ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "") if keys else "nothing"
        raise UserError(
            f"{npz_path}: no {', '.join(missing)} (it holds {shown}); expected {NPZ_HINT} with keys "
            f"conv1a/W, conv1a/b, ..., fc8/b"
        )
    return Tgan2Weights(tensors, {v: k for k, v in source.items()}, ignored)


def tgan2_mean(mean_path: str) -> np.ndarray:
    """TGANv2's mean: ``mean`` of ``mean2.npz``, leading singleton axes dropped, cropped to ``[3, 16, 112, 112]``."""
    with _load_npz(mean_path, MEAN_HINT) as archive:
        if "mean" not in archive.files:
            raise UserError(
                f"{mean_path}: no 'mean' array (it holds {', '.join(archive.files)}); expected {MEAN_HINT}"
            )
        source = archive["mean"]
    mean = source
    while mean.ndim > 4 and mean.shape[0] == 1:
        mean = mean[0]
    lo, hi = CROP
    if mean.ndim != 4 or mean.shape[:2] != (3, 16) or min(mean.shape[2:]) < hi:
        raise UserError(
            f"{mean_path}: 'mean' has shape {list(source.shape)}, but TGANv2 crops a [3, 16, H, W] mean with "
            f"H, W >= {hi} to [:, :, {lo}:{hi}, {lo}:{hi}]; expected {MEAN_HINT}"
        )
    return _finite32(mean[:, :, lo:hi, lo:hi], f"{mean_path}: mean")


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def convert_c3d(npz_path: str, mean_path: str, out_path: str) -> dict[str, Any]:
    """Write TGANv2's C3D weights + mean as our C3D state dict to ``out_path`` (safetensors); a summary.

    Raises :class:`UserError` (one line) for a missing or unreadable source, a missing key or a shape
    that is not the UCF-101 C3D's.
    """
    mean = tgan2_mean(mean_path)
    weights = tgan2_weights(npz_path)
    state = {**weights.tensors, "mean": torch.from_numpy(mean)}
    with torch.device("meta"):
        model = C3D()
    try:  # the exact key set and shapes C3D loads (assign: no copy into the meta tensors)
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise UserError(f"{npz_path}: not the C3D layout ({' '.join(str(e).split())[:300]})") from e
    sources = {"npz_sha256": _sha256(npz_path), "mean_sha256": _sha256(mean_path)}
    metadata = {
        "format": "vqvdm_scale C3D state dict (TGANv2 C3DVersion1UCF101, UCF-101)",
        "source_npz": Path(npz_path).name,
        "source_mean": Path(mean_path).name,
        **sources,
    }
    out = Path(out_path).expanduser()
    write_safetensors(out, state, metadata)
    return {
        "output": str(out),
        "sha256": _sha256(out),
        "tensors": len(state),
        "parameters": sum(t.numel() for n, t in state.items() if n != "mean"),
        "prefixes": weights.prefixes,
        "ignored": weights.ignored,
        **sources,
    }


def main(cfg: ConvertC3DConfig) -> dict[str, Any]:
    """Convert, then print one line: the file written, its size in tensors and parameters, its sha256."""
    summary = convert_c3d(cfg.npz, cfg.mean, cfg.output)
    extra = f"; ignored npz keys: {', '.join(summary['ignored'])}" if summary["ignored"] else ""
    print(
        f"wrote {summary['output']}: {summary['tensors']} tensors, {summary['parameters']:,} parameters, "
        f"sha256 {summary['sha256']}{extra}",
        flush=True,
    )
    return summary
