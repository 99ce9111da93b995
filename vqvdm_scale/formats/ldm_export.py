"""The LDM export: one pickle-free safetensors file with the EMA weights and everything sampling needs.

Written beside every stage-2 checkpoint (``ema.safetensors``): the U-Net weights, its model and diffusion
configs, the latent shape, fps and normalisation statistics, the tokenizer fingerprint, the step and the
class names, and the sha256 of all of these (a file cannot hold the hash of its own bytes, so the hash
covers the metadata and every tensor's name, dtype, shape and bytes). :func:`load_ema` checks it and
rebuilds a :class:`SamplingModel` without the training config.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from vqvdm_scale.config import from_dict, to_dict
from vqvdm_scale.config.core import UserError
from vqvdm_scale.diffusion import DiffusionConfig, GaussianDiffusion
from vqvdm_scale.formats.latent_shards import LatentStats
from vqvdm_scale.formats.remote_files import fetched, staged
from vqvdm_scale.formats.safetensors_file import (
    content_sha256,
    copy_file,
    read_safetensors,
    verify_sha256,
    write_safetensors,
)
from vqvdm_scale.models.unet.config import UNetConfig
from vqvdm_scale.models.unet.model import UNet3D

EMA_FILE = "ema.safetensors"
EMA_FORMAT = "vqvdm-ldm-ema/1"
HASH_KEY = "sha256"  # metadata key: sha256 of the other metadata and every tensor (see content_sha256)


@dataclass
class LatentSpec:
    """What the diffusion model generates and how to turn it back into tokenizer latents."""

    shape: tuple[int, int, int, int]  # C, t, h, w
    stats: LatentStats  # per-channel mean/std of the cache the model was trained on (normalisation)
    fps: float  # the clip fps the model was trained on most (used when none is given)


def save_ema(
    path: Path,
    ema: dict[str, torch.Tensor],
    model: UNetConfig,
    diffusion: DiffusionConfig,
    spec: LatentSpec,
    tokenizer_fingerprint: str,
    step: int,
    class_names: Sequence[str],
) -> None:
    """Write EMA weights + everything sampling needs into one safetensors file (no pickle), with its sha256.

    Atomic and durable (temporary, fsync, rename), mode as ``open()`` gives, same bytes for the same inputs.
    """
    meta = {
        "format": EMA_FORMAT,
        "model": json.dumps(to_dict(model)),
        "diffusion": json.dumps(to_dict(diffusion)),
        "latent_shape": json.dumps(list(spec.shape)),
        "latent_fps": str(spec.fps),
        "tokenizer_fingerprint": tokenizer_fingerprint,
        "step": str(step),
        "classes": json.dumps(list(class_names)),
    }
    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in ema.items()}
    tensors["latent.mean"] = spec.stats.mean.float().contiguous()
    tensors["latent.std"] = spec.stats.std.float().contiguous()
    meta[HASH_KEY] = content_sha256(_hashed_text(meta), tensors)
    write_safetensors(path, tensors, meta)


def copy_export(src: Path, dest: str | Path) -> None:
    """Copy the export ``src`` to ``dest`` (a path, written atomically, or an fsspec URL, uploaded whole)."""
    with staged(dest) as local:
        copy_file(src, local)


def _hashed_text(meta: dict[str, str]) -> str:
    """The metadata the export's sha256 covers: all of it but the hash, as canonical JSON."""
    return json.dumps({k: v for k, v in meta.items() if k != HASH_KEY}, sort_keys=True, separators=(",", ":"))


@dataclass
class SamplingModel:
    """A loaded EMA network with its diffusion process and latent spec."""

    net: UNet3D
    diffusion: GaussianDiffusion
    spec: LatentSpec
    tokenizer_fingerprint: str
    step: int
    classes: list[str]


def load_ema(path: str | Path, device: torch.device | str = "cpu") -> SamplingModel:
    """Load a file written by :func:`save_ema`, verified against the sha256 it records.

    A missing, truncated, edited or foreign file is a :class:`UserError` naming it.
    """
    with fetched(path, "LDM EMA export") as local:  # an fsspec URL is fetched once per process
        return _load(local, device)


def _load(path: Path, device: torch.device | str) -> SamplingModel:
    if not path.is_file():
        raise UserError(f"{path} does not exist: give a run dir or a checkpoint dir that holds {EMA_FILE}")
    meta, tensors = read_safetensors(path, "LDM EMA export")
    if meta.get("format") != EMA_FORMAT:
        raise UserError(
            f"{path} is not an LDM EMA file (format {meta.get('format')!r}, expected {EMA_FORMAT!r})"
        )
    if HASH_KEY in meta:
        verify_sha256(path, "LDM EMA export", meta[HASH_KEY], _hashed_text(meta), tensors)
    else:  # exports written before the hash was recorded
        warnings.warn(f"{path} records no sha256 (an older export): it is loaded unverified", stacklevel=2)
    try:
        mcfg = from_dict(UNetConfig, json.loads(meta["model"]))
        dcfg = from_dict(DiffusionConfig, json.loads(meta["diffusion"]))
        net = UNet3D(mcfg)
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        spec = LatentSpec(
            shape=tuple(json.loads(meta["latent_shape"])),  # type: ignore[arg-type]
            stats=LatentStats(tensors["latent.mean"], tensors["latent.std"]),
            fps=float(meta["latent_fps"]),
        )
        sm = SamplingModel(
            net.to(device).eval(),
            GaussianDiffusion(dcfg),
            spec,
            meta["tokenizer_fingerprint"],
            int(meta["step"]),
            json.loads(meta["classes"]),
        )
    except (KeyError, ValueError, RuntimeError) as e:  # only reachable for an unverified (older) export
        reason = " ".join(str(e).split())
        raise UserError(f"{path} is not a complete LDM EMA export ({type(e).__name__}: {reason})") from e
    return sm
