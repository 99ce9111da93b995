"""From a trained latent U-Net to video files: sample latents, decode with the tokenizer, write mp4/gif/png.

The same functions make the sample videos in TensorBoard during training and the files of
``launchers/sample.py``, so what a run shows while training is what the sampler produces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import torch

from vqvdm_scale.config import ConfigError, UserError
from vqvdm_scale.diffusion import GaussianDiffusion, SamplerName, make_clip_sampler, sample_long_video
from vqvdm_scale.formats.ldm_export import LatentSpec
from vqvdm_scale.models.tokenizer import VQTokenizer


@dataclass
class SampleConfig:
    """How videos are sampled.

    Args:
        sampler: "ddim" (respaced, ``steps``), "dpmpp2m" (DPM-Solver++(2M), second order, on the same
            ``steps`` timesteps, deterministic) or "ddpm" (ancestral, all timesteps).
        steps: DDIM / DPM-Solver++ steps (network calls per clip, doubled in batch by guidance).
        eta: DDIM eta (0 = deterministic); dpmpp2m takes only 0.
        guidance: classifier-free guidance weight w (VQ-VDM: eps = w * (eps(z,c) - eps(z)) + eps(z)).
        num_clips: clips per video; > 1 extends autoregressively, in the way the model was trained for
            (:func:`extension_plan`).
        overlap: latent frames shared by consecutive clips; 0 = condition on the whole previous clip
            (PVDM); null = the model's way (0 for ``previous_clip`` models, 1 otherwise).
        later_steps: DDIM / DPM-Solver++ steps of the clips after the first (PVDM: N for the first clip, M for the rest);
            null = ``steps``.
        reconstruction_guidance: w_r of VDM's reconstruction guidance, which extends videos with a model
            trained without a context (``context_mode=none``) through ``overlap`` known frames.
        quantize: snap sampled latents to the nearest codebook entries before decoding.
        seed: base seed; video i of a run uses its own generator seeded from (seed, i).
        precision: "fp32", or "bf16": the U-Net's calls and the tokenizer's decoder run under bf16
            autocast (CPUs with AMX or AVX512-BF16, and GPUs); the sampler's arithmetic, the nearest-code
            lookup and the outputs stay fp32.
        compile: ``torch.compile`` the U-Net and the decoder for inference, with Inductor's freezing (the
            weights become constants, pre-packed for oneDNN on CPU). A one-time compile per process
            (about 2 min for U-Net B on 2 CPU cores); for sample.py and evaluate.py, not training.
    """

    sampler: SamplerName = "ddim"
    steps: int = 100
    eta: float = 0.0
    guidance: float = 4.0
    num_clips: int = 1
    overlap: Optional[int] = None
    later_steps: Optional[int] = None
    reconstruction_guidance: float = 0.0
    quantize: bool = True
    seed: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1 or self.num_clips < 1 or (self.overlap is not None and self.overlap < 0):
            raise ConfigError("sample.steps and sample.num_clips must be >= 1 and sample.overlap >= 0")
        if self.later_steps is not None and self.later_steps < 1:
            raise ConfigError(f"sample.later_steps must be >= 1 (or null for steps), got {self.later_steps}")
        if self.sampler == "dpmpp2m" and self.eta != 0:
            raise ConfigError(
                f"sample.eta={self.eta} is DDIM's noise; sample.sampler=dpmpp2m is deterministic: use eta 0 or ddim"
            )
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"sample.precision must be fp32 or bf16, got {self.precision!r}")
        if self.reconstruction_guidance < 0:
            raise ConfigError(
                f"sample.reconstruction_guidance must be >= 0, got {self.reconstruction_guidance}"
            )


_MODES = {
    "previous_clip": "--overlap 0 (each clip conditioned on the whole previous clip)",
    "random_mask": "--overlap k, 1 <= k < the clip's latent frames (known frames shared by consecutive clips)",
    "none": "--reconstruction-guidance W with --overlap k (VDM eq. 7; the model has no context input)",
}


def extension_plan(context_mode: str, cfg: SampleConfig, latent_frames: int) -> tuple[int, float]:
    """(overlap, reconstruction weight) for extending videos with a model trained in ``context_mode``.

    Refuses (UserError) what the model cannot honour, naming what it can: a ``previous_clip`` model sees
    whole previous clips; a ``random_mask`` model sees some known frames of its own clip; a model without a
    context extends only through reconstruction guidance.
    """
    if cfg.num_clips == 1:
        return 0, 0.0
    default = 0 if context_mode == "previous_clip" else 1
    overlap = default if cfg.overlap is None else cfg.overlap
    rg = cfg.reconstruction_guidance
    ok = {
        "previous_clip": overlap == 0 and rg == 0,
        "random_mask": 0 < overlap < latent_frames and rg == 0,
        "none": 0 < overlap < latent_frames and rg > 0,
    }.get(context_mode, False)
    if not ok:
        asked = f"--overlap {overlap}" + (f" --reconstruction-guidance {rg:g}" if rg else "")
        raise UserError(
            f"this model was trained with context_mode={context_mode}, so it cannot extend videos with {asked}: "
            f"use {_MODES.get(context_mode, 'one clip')}"
        )
    return overlap, rg


class Bf16Network(torch.nn.Module):
    """A denoising network run under bf16 autocast, its output given back in fp32 (as are its ``config``)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.config = getattr(net, "config", None)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out: torch.Tensor = self.net(x, *args, **kwargs)
        return out.float()


def compile_for_sampling(net: torch.nn.Module, tokenizer: Optional[VQTokenizer] = None) -> torch.nn.Module:
    """``net`` compiled for inference with frozen weights; ``tokenizer``'s decoder compiled in place.

    Freezing folds the weights into the graph, so the modules must not be trained afterwards (the
    trainer's sample videos use the live weights and never come here).
    """
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    if tokenizer is not None:
        tokenizer.decoder = torch.compile(tokenizer.decoder)  # type: ignore[assignment]
    return torch.compile(net)  # type: ignore[return-value]


def in_precision(net: torch.nn.Module, precision: str) -> torch.nn.Module:
    """``net`` as sampling with ``sample.precision`` calls it."""
    return Bf16Network(net) if precision == "bf16" else net


@torch.no_grad()
def generate_latents(
    net: torch.nn.Module,
    diffusion: GaussianDiffusion,
    spec: LatentSpec,
    labels: torch.Tensor,
    cfg: SampleConfig,
    *,
    fps: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    progress: bool = False,
) -> torch.Tensor:
    """Normalised latents ``[B, C, frames, h, w]`` for ``labels``, extended to ``num_clips`` clips."""
    device = labels.device
    b = labels.shape[0]
    num_classes = int(getattr(getattr(net, "config", None), "num_classes", 0) or 0)
    overlap, rg = extension_plan(diffusion.config.context_mode, cfg, spec.shape[1])
    if fps is None:
        fps = torch.full((b,), spec.fps, device=device)
    sampler = make_clip_sampler(
        in_precision(net, cfg.precision),
        diffusion,
        (b, *spec.shape),
        y=labels if num_classes > 0 else None,
        fps=fps,
        guidance_scale=cfg.guidance if num_classes > 0 else 1.0,
        null_class=num_classes if num_classes > 0 else None,
        sampler=cfg.sampler,
        steps=cfg.steps,
        later_steps=cfg.later_steps,
        eta=cfg.eta,
        reconstruction_weight=rg,
        generator=generator,
        device=device,
        progress=progress,
    )
    return sample_long_video(sampler, cfg.num_clips, overlap=overlap)


@torch.no_grad()
def decode_latents(
    tokenizer: VQTokenizer,
    z: torch.Tensor,
    spec: LatentSpec,
    quantize: bool = True,
    precision: str = "fp32",
) -> torch.Tensor:
    """Tokenizer decode of normalised latents ``[B, C, n, h, w]`` clip by clip, to fp32 videos in [-1, 1].

    With ``precision="bf16"`` the decoder runs under bf16 autocast; the nearest-code lookup stays fp32.
    """
    z = spec.stats.denormalize(z)
    t = spec.shape[1]
    pieces = []
    for start in range(0, z.shape[2], t):
        chunk = z[:, :, start : start + t]
        if quantize:
            chunk = tokenizer.quantize(chunk).z_q
        with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            video = tokenizer.decode(chunk)
        pieces.append(video.float().clamp(-1, 1))
    return torch.cat(pieces, dim=2)


def write_videos(
    videos: torch.Tensor,
    out_dir: str | Path,
    names: Sequence[str],
    fps: float,
    formats: Sequence[str] = ("mp4",),
) -> list[Path]:
    """Each video in every one of ``formats`` (mp4; lossless npy / png frames for metrics), plus, when mp4
    is among them, an animated GIF and a PNG grid of the batch; returns the paths of the videos."""
    from vqvdm_scale.data.video_io import encode_mp4
    from vqvdm_scale.formats.frames import write_npy, write_png_dir
    from vqvdm_scale.monitor.media import gif_bytes, png_grid, tile_videos, to_uint8

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames = to_uint8(videos)  # N,T,H,W,3
    paths = []
    for name, f in zip(names, frames, strict=True):
        if "mp4" in formats:
            p = out / f"{name}.mp4"
            p.write_bytes(encode_mp4(_even(f), fps))
            paths.append(p)
        if "npy" in formats:
            paths.append(write_npy(out / f"{name}.npy", f))
        if "png" in formats:
            paths.append(write_png_dir(out / name, f))
    if "mp4" in formats:
        stem = names[0] if len(names) == 1 else f"{names[0]}__{names[-1]}"
        (out / f"{stem}.gif").write_bytes(gif_bytes(tile_videos(videos), fps))
        png_grid(videos, str(out / f"{stem}.png"))
    return paths


def _even(frames: Any) -> Any:
    """H.264 in yuv420p needs even sizes; pad by one edge pixel where needed."""
    import numpy as np

    h, w = frames.shape[1:3]
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return frames
