"""Prediction and infilling from real frames (RaMViD / FDM-style): ``sample.py --condition VIDEO --known 0-3``.

The real clip is encoded with the run's tokenizer; the latent frames that cover the ``--known`` pixel frames
are held fixed, and the others are sampled in the way the model was trained for:

- ``random_mask`` models see the known latent frames through their context input (any frames: prediction
  from the first ones, infilling between known ones);
- ``previous_clip`` models take the whole real clip as the previous clip, and the output continues it;
- models without a context are steered to the known frames by reconstruction guidance (VDM eq. 7).

The known latent frames of the output are the encoded real ones exactly; further clips extend the video.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from vqvdm_scale.config.core import UserError
from vqvdm_scale.diffusion import GaussianDiffusion, make_clip_sampler, sample_long_video
from vqvdm_scale.formats.ldm_export import LatentSpec
from vqvdm_scale.models.tokenizer import VQTokenizer
from vqvdm_scale.sample.api import SampleConfig, extension_plan, in_precision

__all__ = ["conditioned_latents", "encode_condition", "known_latent_frames", "load_condition_clip"]

_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+))?\s*$")


def known_latent_frames(ranges: Sequence[str], frames: int, per_latent: int) -> list[int]:
    """Latent frames covering the ``--known`` pixel frame ranges (``"0-3"``, ``"12-15"``, ``"4"``).

    A range must cover whole groups of ``per_latent`` frames (the tokenizer's temporal factor): a latent
    frame is either known or not.
    """
    known: set[int] = set()
    for r in ranges:
        m = _RANGE.match(str(r))
        if not m:
            raise UserError(f"--known {r!r}: give pixel frame ranges such as 0-3 (first-last, inclusive)")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if a > b or b >= frames:
            raise UserError(f"--known {r}: frames must satisfy first <= last < {frames} (the clip's frames)")
        if a % per_latent or (b + 1) % per_latent:
            raise UserError(
                f"--known {r}: the tokenizer codes {per_latent} frames as one latent frame, so ranges must start "
                f"at a multiple of {per_latent} and end just before one (e.g. 0-{per_latent - 1})"
            )
        known.update(range(a // per_latent, (b + 1) // per_latent))
    if not known:
        raise UserError("--condition needs at least one --known range")
    return sorted(known)


def load_condition_clip(source: str, frames: int, resolution: int) -> Tensor:
    """The first ``frames`` frames of a video file, or of a shard sample (``SHARDS#KEY``), as the training
    clips are cut: short side resized, centre square crop; ``[3, T, S, S]`` in [-1, 1]."""
    from vqvdm_scale.data.clips import crop_clip, decode_frames

    if "#" in source:
        from vqvdm_scale.data.pipeline import shard_sample_pipeline
        from vqvdm_scale.data.urls import resolve_shards

        spec, key = source.rsplit("#", 1)
        for sample in shard_sample_pipeline(resolve_shards(spec), rank=0, world_size=1, shuffle_shards=False):
            if sample.get("__key__") == key:
                video, _ = decode_frames(sample, max_frames=frames)
                break
        else:
            raise UserError(f"--condition {source}: no sample with key {key!r} in {spec}")
    else:
        from vqvdm_scale.data.video_io import VideoReadError, decode_video

        try:
            video = decode_video(source, max_frames=frames).frames
        except VideoReadError as e:
            raise UserError(f"--condition: {e}") from e
    if video.shape[0] < frames:
        raise UserError(f"--condition {source} has {video.shape[0]} frames; the model's clips need {frames}")
    return crop_clip(np.ascontiguousarray(video[:frames]), resolution)


@torch.no_grad()
def encode_condition(tokenizer: VQTokenizer, spec: LatentSpec, clip: Tensor) -> Tensor:
    """Normalised quantised latents ``[1, C, t, h, w]`` of a real clip ``[3, T, S, S]``."""
    device = next(tokenizer.parameters()).device
    z = tokenizer.quantize(tokenizer.encode(clip[None].to(device))).z_q
    return spec.stats.normalize(z.float())


@torch.no_grad()
def conditioned_latents(
    net: torch.nn.Module,
    diffusion: GaussianDiffusion,
    spec: LatentSpec,
    known_z: Tensor,
    known: Sequence[int],
    labels: Tensor,
    cfg: SampleConfig,
    generator: Optional[torch.Generator] = None,
    cfg_fps: Optional[float] = None,
) -> Tensor:
    """Latents ``[B, C, n, h, w]`` whose ``known`` latent frames are ``known_z`` ``[1, C, t, h, w]`` exactly."""
    mode = diffusion.config.context_mode
    b, t = labels.shape[0], spec.shape[1]
    device = labels.device
    num_classes = int(getattr(getattr(net, "config", None), "num_classes", 0) or 0)
    z_known = known_z.to(device).expand(b, -1, -1, -1, -1)
    mask = torch.zeros(b, 1, *z_known.shape[2:], device=device)
    mask[:, :, list(known)] = 1.0
    if mode == "previous_clip" and len(known) != t:
        raise UserError(
            "this model (context_mode=previous_clip) continues a whole clip: give a --known range that covers "
            "all the clip's frames"
        )
    if mode == "none" and cfg.reconstruction_guidance <= 0:
        raise UserError(
            "this model has no context input (context_mode=none): condition it with --reconstruction-guidance W"
        )
    overlap, _ = extension_plan(mode, cfg, t)
    sampler = make_clip_sampler(
        in_precision(net, cfg.precision),
        diffusion,
        (b, *spec.shape),
        y=labels if num_classes > 0 else None,
        fps=torch.full((b,), cfg_fps if cfg_fps else spec.fps, device=device),
        guidance_scale=cfg.guidance if num_classes > 0 else 1.0,
        null_class=num_classes if num_classes > 0 else None,
        sampler=cfg.sampler,
        steps=cfg.steps,
        later_steps=cfg.later_steps,
        eta=cfg.eta,
        reconstruction_weight=cfg.reconstruction_guidance if mode == "none" else 0.0,
        generator=generator,
        device=device,
    )
    if mode == "previous_clip":  # the real clip is the previous clip; the output continues it
        rest = sample_long_video(sampler, cfg.num_clips, overlap=0, first_context=z_known)
        return torch.cat([z_known, rest], dim=2)
    first = sampler(z_known * mask, mask)
    first = first * (1 - mask) + z_known * mask  # the known frames, exactly
    if cfg.num_clips == 1:
        return first
    rest = sample_long_video(sampler, cfg.num_clips - 1, overlap=overlap, first_context=first)
    return torch.cat([first, rest], dim=2)
