"""The LDM export: one pickle-free safetensors file with the EMA weights and everything sampling needs.

Written beside every stage-2 checkpoint (``ema.safetensors``): the U-Net weights, its model and diffusion
configs, the latent shape, fps and normalisation statistics, the tokenizer fingerprint, the step and the
class names. :func:`load_ema` rebuilds a :class:`SamplingModel` from it without the training config.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vqvdm_scale.config import from_dict, to_dict
from vqvdm_scale.config.core import UserError
from vqvdm_scale.diffusion import DiffusionConfig, GaussianDiffusion
from vqvdm_scale.formats.latent_shards import LatentStats
from vqvdm_scale.models.unet.config import UNetConfig
from vqvdm_scale.models.unet.model import UNet3D

EMA_FILE = "ema.safetensors"
EMA_FORMAT = "vqvdm-ldm-ema/1"


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
    """Write EMA weights + everything sampling needs into one safetensors file (no pickle)."""
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
    tensors = {f"net.{k}": v.contiguous() for k, v in ema.items()}
    tensors["latent.mean"] = spec.stats.mean.float().contiguous()
    tensors["latent.std"] = spec.stats.std.float().contiguous()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


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
    """Load a file written by :func:`save_ema`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: give a run dir or a checkpoint dir that holds {EMA_FILE}"
        )
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != EMA_FORMAT:
            raise UserError(f"{path} is not an LDM EMA file (format {meta.get('format')!r})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    mcfg = from_dict(UNetConfig, json.loads(meta["model"]))
    dcfg = from_dict(DiffusionConfig, json.loads(meta["diffusion"]))
    net = UNet3D(mcfg)
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    net.to(device).eval()
    spec = LatentSpec(
        shape=tuple(json.loads(meta["latent_shape"])),  # type: ignore[arg-type]
        stats=LatentStats(tensors["latent.mean"], tensors["latent.std"]),
        fps=float(meta["latent_fps"]),
    )
    return SamplingModel(
        net,
        GaussianDiffusion(dcfg),
        spec,
        meta["tokenizer_fingerprint"],
        int(meta["step"]),
        json.loads(meta["classes"]),
    )
