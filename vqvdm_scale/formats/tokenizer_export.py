"""Tokenizer export: one safetensors file holding weights + config + a sha256 fingerprint of both.

Everything downstream (latent shards, stage-2 checkpoints, samplers) records the fingerprint it was
made with and refuses a tokenizer whose fingerprint differs.

An export written by VQGAN training also records its clip geometry (:class:`ClipGeometry`: the frames,
frame stride and resolution of the clips it was trained on, and the latent grid ``[D, t, h, w]`` they
become), in the ``geometry`` metadata (format ``vqvdm-tokenizer/2``). The fingerprint covers it. Exports
without it (format ``/1``, as every export before it) still load; their geometry is unknown (None).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from vqvdm_scale.config.core import UserError, from_dict, to_dict
from vqvdm_scale.config.text import redact
from vqvdm_scale.formats.remote_files import fetched, staged
from vqvdm_scale.formats.safetensors_file import (
    content_sha256,
    read_safetensors,
    verify_sha256,
    write_safetensors,
    write_text,
)
from vqvdm_scale.models.tokenizer.config import TokenizerConfig
from vqvdm_scale.models.tokenizer.vqgan import VQTokenizer

EXPORT_FORMAT = "vqvdm-tokenizer/2"  # with its clip geometry
_NO_GEOMETRY_FORMAT = "vqvdm-tokenizer/1"  # without (every export before geometry was recorded)
_FORMATS = (_NO_GEOMETRY_FORMAT, EXPORT_FORMAT)
TOKENIZER_FILE = "tokenizer file"  # what a missing export at a URL is called


@dataclass(frozen=True)
class ClipGeometry:
    """The clips a tokenizer was trained on (its VQGAN run's ``data`` section) and the latent grid of one."""

    frames: int
    resolution: int  # square clips: resolution x resolution pixels
    frame_stride: int
    latent_shape: tuple[int, int, int, int]  # D, t, h, w

    def describe(self) -> str:
        """``32x32 clips of 16 frames`` (with the frame stride when it is not 1)."""
        stride = f" at frame stride {self.frame_stride}" if self.frame_stride != 1 else ""
        return f"{self.resolution}x{self.resolution} clips of {self.frames} frames{stride}"

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no whitespace variance): what the export stores and hashes."""
        return json.dumps(
            {
                "frames": self.frames,
                "frame_stride": self.frame_stride,
                "resolution": self.resolution,
                "latent_shape": list(self.latent_shape),
            },
            sort_keys=True,
            separators=(",", ":"),
        )


def clip_geometry(cfg: TokenizerConfig, frames: int, resolution: int, frame_stride: int = 1) -> ClipGeometry:
    """The geometry of ``frames x resolution x resolution`` clips; a UserError unless ``cfg`` divides them."""
    if min(frames, resolution, frame_stride) < 1:
        raise UserError(
            f"clip geometry needs frames, resolution and frame_stride >= 1, got {frames}, {resolution}, {frame_stride}"
        )
    try:
        shape = cfg.latent_shape(frames, resolution, resolution)
    except ValueError as e:
        raise UserError(str(e)) from e
    return ClipGeometry(frames, resolution, frame_stride, shape)


def config_json(cfg: TokenizerConfig) -> str:
    """Canonical JSON of a tokenizer config (sorted keys, no whitespace variance)."""
    return json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))


def _hashed_text(config_text: str, geometry_text: Optional[str]) -> str:
    """The metadata the fingerprint covers: the config JSON, then the geometry JSON when there is one.

    Both are compact JSON (no newline), so the newline between them is unambiguous; without a geometry
    the text is the config alone, as in the exports written before geometry was recorded.
    """
    return config_text if geometry_text is None else f"{config_text}\ngeometry {geometry_text}"


def fingerprint(config_text: str, tensors: dict[str, Tensor], geometry_text: Optional[str] = None) -> str:
    """sha256 over the config JSON (and geometry JSON) and every tensor's name, dtype, shape and bytes."""
    return content_sha256(_hashed_text(config_text, geometry_text), tensors)


def _export_state(model: VQTokenizer) -> dict[str, Tensor]:
    """fp32 CPU copies of the state dict (clones: safetensors refuses tensors that share storage)."""
    out = {}
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu")
        out[name] = (t.float() if t.is_floating_point() else t).clone().contiguous()
    return out


def export_tokenizer(
    model: VQTokenizer,
    cfg: TokenizerConfig,
    path: str | Path,
    *,
    frames: Optional[int] = None,
    resolution: Optional[int] = None,
    frame_stride: int = 1,
) -> str:
    """Write ``path`` (safetensors) and ``<path>.json`` (config + fingerprint) atomically; return the fingerprint.

    ``path`` may be an fsspec URL (``s3://bucket/tokenizer.safetensors``): both files are uploaded whole.

    The fingerprint is the export's own sha256 (of its config text, geometry and tensors), checked on every
    load. ``frames`` and ``resolution`` (both or neither) are the clip size the model was trained on,
    recorded with ``frame_stride`` and the latent grid as its :class:`ClipGeometry`.
    """
    if to_dict(model.cfg) != to_dict(cfg):
        raise UserError("the config passed to export_tokenizer differs from the one the model was built with")
    if (frames is None) != (resolution is None):
        raise UserError(
            "export_tokenizer records a clip geometry from both frames and resolution, or neither"
        )
    geometry = None
    if frames is not None and resolution is not None:
        geometry = clip_geometry(cfg, frames, resolution, frame_stride)
    tensors = _export_state(model)
    text = config_json(cfg)
    geometry_text = geometry.to_json() if geometry is not None else None
    fp = fingerprint(text, tensors, geometry_text)
    meta = {"config": text, "fingerprint": fp, "format": _NO_GEOMETRY_FORMAT}
    sidecar: dict[str, object] = {"format": _NO_GEOMETRY_FORMAT, "weights": "", "fingerprint": fp}
    if geometry_text is not None:
        meta.update(format=EXPORT_FORMAT, geometry=geometry_text)
        sidecar.update(format=EXPORT_FORMAT, geometry=json.loads(geometry_text))
    sidecar["config"] = to_dict(cfg)
    with staged(path) as local:  # a URL is written locally (under its own name), then uploaded
        sidecar["weights"] = local.name
        write_safetensors(local, tensors, meta)
        write_text(local.with_name(local.name + ".json"), json.dumps(sidecar, indent=2) + "\n")
    return fp


def _read_metadata(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise FileNotFoundError(
            f"tokenizer file {str(path)!r} does not exist; it is written by training the VQGAN "
            "(python launchers/train_vqgan.py ...) at <run.dir>/tokenizer.safetensors"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        reason = " ".join(str(e).split())
        raise UserError(f"{path} is not a readable safetensors tokenizer file (truncated?): {reason}") from e
    if meta.get("format") not in _FORMATS or "config" not in meta or "fingerprint" not in meta:
        raise UserError(
            f"{path} is not a vqvdm tokenizer export (format {meta.get('format')!r}, "
            f"expected one of {', '.join(map(repr, _FORMATS))})"
        )
    if meta["format"] == EXPORT_FORMAT and "geometry" not in meta:
        raise UserError(
            f"{path} is not a complete tokenizer export: its clip geometry is missing; re-export it"
        )
    return meta


def _parse_geometry(path: Path, meta: dict[str, str]) -> Optional[ClipGeometry]:
    """The recorded geometry (None for an export without one); a UserError if it is malformed."""
    if "geometry" not in meta:
        return None
    try:
        raw = json.loads(meta["geometry"])
        cfg = from_dict(TokenizerConfig, json.loads(meta["config"]))
        geometry = clip_geometry(cfg, int(raw["frames"]), int(raw["resolution"]), int(raw["frame_stride"]))
        recorded = tuple(int(v) for v in raw["latent_shape"])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"{path}: the recorded clip geometry is malformed ({e}); re-export the tokenizer"
        ) from e
    if recorded != geometry.latent_shape:
        raise UserError(
            f"{path}: the recorded latent grid {list(recorded)} is not what its config makes of "
            f"{geometry.describe()} ({list(geometry.latent_shape)}); re-export the tokenizer"
        )
    return geometry


def read_fingerprint(path: str | Path) -> str:
    """The fingerprint recorded in an exported tokenizer (reads only the header)."""
    with fetched(path, TOKENIZER_FILE) as local:
        return _read_metadata(local)["fingerprint"]


def read_geometry(path: str | Path) -> Optional[ClipGeometry]:
    """The clip geometry an exported tokenizer was trained on, or None when it records none (header only).

    The header is not hashed here: :func:`load_tokenizer` checks the fingerprint, which covers the geometry.
    """
    with fetched(path, TOKENIZER_FILE) as local:
        return _parse_geometry(local, _read_metadata(local))


def clip_size(
    path: str | Path, frames: Optional[int] = None, resolution: Optional[int] = None
) -> tuple[int, int]:
    """``(frames, resolution)`` to encode clips with the tokenizer at ``path`` (header only).

    None means the tokenizer's recorded clip size; a value it was not trained on is refused (it would encode
    without error, into latents no stage-2 model of this tokenizer expects). An export without a geometry
    takes explicit values only. Every refusal is a one-line UserError naming the ``--frames`` /
    ``--resolution`` options of the commands that ask.
    """
    geometry = read_geometry(path)  # load_tokenizer checks the hash that covers it
    name = redact(str(path))
    asked = {"frames": frames, "resolution": resolution}
    if geometry is None:
        if frames is None or resolution is None:
            missing = " and ".join(f"--{k}" for k, v in asked.items() if v is None)
            raise UserError(
                f"tokenizer {name} records no clip size (it was exported before tokenizers carried one): give "
                f"{missing}, the data.frames and data.resolution of its VQGAN run (<run.dir>/config.yaml)"
            )
        return frames, resolution
    trained = {"frames": geometry.frames, "resolution": geometry.resolution}
    wrong = [f"--{k} {v}" for k, v in asked.items() if v is not None and v != trained[k]]
    if wrong:
        raise UserError(
            f"{' '.join(wrong)}, but tokenizer {name} was trained on {geometry.describe()}: leave "
            "--frames and --resolution out to encode at its clip size, or train a tokenizer at this one"
        )
    return geometry.frames, geometry.resolution


def load_tokenizer(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[VQTokenizer, TokenizerConfig, str]:
    """Load an exported tokenizer, verify its fingerprint, and return ``(model in eval mode, config, fingerprint)``."""
    with fetched(path, TOKENIZER_FILE) as local:
        return _load(local, device)


def _load(path: Path, device: str | torch.device) -> tuple[VQTokenizer, TokenizerConfig, str]:
    _read_metadata(path)  # a missing file or another kind of file is said before the tensors are read
    meta, tensors = read_safetensors(path, "tokenizer export")
    # Hash the stored JSON text itself, so any edit of the config metadata is caught too.
    text = _hashed_text(meta["config"], meta.get("geometry"))
    actual = verify_sha256(path, "tokenizer export", meta["fingerprint"], text, tensors)
    _parse_geometry(path, meta)  # hashed, but still checked against the config it was made with
    cfg = from_dict(TokenizerConfig, json.loads(meta["config"]))
    model = VQTokenizer(cfg)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not fit the recorded config: {e}") from e
    return model.to(device).eval(), cfg, actual


__all__ = [
    "EXPORT_FORMAT",
    "ClipGeometry",
    "clip_geometry",
    "clip_size",
    "config_json",
    "export_tokenizer",
    "fingerprint",
    "load_tokenizer",
    "read_fingerprint",
    "read_geometry",
]
