"""Long videos from a clip model: autoregressive extension in latent space.

Two schemes, both driving a callable that samples one clip given ``(context, context_mask)``:

- ``overlap=0`` (PVDM, Yu et al. 2023, Algorithm 1): the first clip is sampled with no context
  (zeros, mask 0), each next clip is conditioned on the whole previous clip's z0 (mask 1 everywhere);
  the clips are concatenated along time: ``num_clips * t`` frames.
- ``overlap=k > 0`` (frame overlap, RaMViD-style known frames): the last k latent frames of the
  previous clip become the known first k frames of the next clip (mask 1 on those frames only); the
  output keeps the previous clip's copy of the shared frames: ``t + (num_clips - 1) * (t - k)`` frames.

- reconstruction guidance (``reconstruction_weight > 0``, VDM eq. 7): for a model trained without a
  context, the known frames of the overlap scheme steer the sampler through the model's own denoised
  estimate (:mod:`vqvdm_scale.diffusion.reconstruction_guidance`) instead of a context input.

PVDM samples the first clip with N DDIM steps and later clips with M (``later_steps``); the DPM-Solver++(2M)
sampler takes the same N and M. Every scheme works through the model function alone, so any sampler drives it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import torch
from torch import Tensor, nn

from vqvdm_scale.diffusion.gaussian import GaussianDiffusion
from vqvdm_scale.diffusion.guidance import Net, cfg_model_fn, conditional_model_fn
from vqvdm_scale.diffusion.reconstruction_guidance import reconstruction_guided_fn
from vqvdm_scale.diffusion.samplers import SAMPLERS, SamplerName, ddim_sample, ddpm_sample, dpmpp2m_sample

__all__ = ["ClipSampler", "make_clip_sampler", "sample_long_video"]

# sample_clip_fn(context [B,C,t,h,w] | None, context_mask [B,1,t,h,w] | None) -> z0 [B,C,t,h,w]
ClipSampler = Callable[[Optional[Tensor], Optional[Tensor]], Tensor]


def sample_long_video(
    sample_clip_fn: ClipSampler,
    num_clips: int,
    *,
    overlap: int = 0,
    first_context: Optional[Tensor] = None,
) -> Tensor:
    """Latents ``[B, C, frames, h, w]`` of ``num_clips`` autoregressively conditioned clips (see module doc).

    ``first_context`` (optional, [B,C,t,h,w] latents, e.g. an encoded real clip) conditions the first clip
    as if it were a previous clip; it is not part of the output, which is then its pure continuation
    (with overlap, the first clip's copy of the shared frames is dropped too).
    """
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0 latent frames, got {overlap}")
    pieces: list[Tensor] = []
    prev = first_context
    for k in range(num_clips):
        if prev is None:
            context, mask = None, None
        else:
            b, _, t, h, w = prev.shape
            if overlap >= t:
                raise ValueError(f"overlap={overlap} must be smaller than the clip's {t} latent frames")
            if overlap == 0:
                context = prev
                mask = torch.ones(b, 1, t, h, w, dtype=prev.dtype, device=prev.device)
            else:
                context = torch.zeros_like(prev)
                context[:, :, :overlap] = prev[:, :, t - overlap :]
                mask = torch.zeros(b, 1, t, h, w, dtype=prev.dtype, device=prev.device)
                mask[:, :, :overlap] = 1.0
        clip = sample_clip_fn(context, mask)
        if prev is not None and clip.shape != prev.shape:
            raise ValueError(f"clip sampler returned shape {tuple(clip.shape)}, expected {tuple(prev.shape)}")
        # The overlapped frames were already emitted by the previous clip; do not duplicate them.
        skip = overlap if (overlap and (k > 0 or first_context is not None)) else 0
        if skip >= clip.shape[2]:
            raise ValueError(
                f"overlap={overlap} must be smaller than the clip's {clip.shape[2]} latent frames"
            )
        pieces.append(clip[:, :, skip:])
        prev = clip
    return torch.cat(pieces, dim=2)


def make_clip_sampler(
    net: Net,
    diffusion: GaussianDiffusion,
    shape: Sequence[int],
    *,
    y: Optional[Tensor] = None,
    fps: Optional[Tensor] = None,
    guidance_scale: float = 1.0,
    null_class: Optional[int] = None,
    sampler: SamplerName = "ddim",
    steps: int = 50,
    later_steps: Optional[int] = None,
    eta: float = 0.0,
    reconstruction_weight: float = 0.0,
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device] = None,
    progress: bool = False,
) -> ClipSampler:
    """A ``sample_clip_fn`` for :func:`sample_long_video`: fresh noise of ``shape``, optional CFG, DDPM, DDIM
    or DPM-Solver++(2M).

    A clip with a context (every clip after the first) takes ``later_steps`` steps (default ``steps``).
    With ``reconstruction_weight`` > 0 the context is not given to the network: it guides the sampler
    towards the known frames instead (VDM reconstruction guidance, for models trained without a context).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if sampler == "dpmpp2m" and eta != 0:
        raise ValueError(f"eta={eta} is DDIM's stochasticity; dpmpp2m solves the deterministic ODE (eta 0)")
    if guidance_scale != 1.0 and (y is None or null_class is None):
        raise ValueError(
            "classifier-free guidance (guidance_scale != 1) needs labels y and the null_class index"
        )
    if device is None:
        device = next(net.parameters()).device if isinstance(net, nn.Module) else torch.device("cpu")

    def sample_clip(context: Optional[Tensor], context_mask: Optional[Tensor]) -> Tensor:
        noise = torch.randn(tuple(shape), generator=generator, device=device)
        guide = reconstruction_weight > 0 and context is not None and context_mask is not None
        net_context, net_mask = (None, None) if guide else (context, context_mask)
        if guidance_scale != 1.0:
            assert y is not None and null_class is not None  # checked above
            model_fn = cfg_model_fn(net, y, fps, guidance_scale, null_class, net_context, net_mask)
        else:
            model_fn = conditional_model_fn(net, y, fps, net_context, net_mask)
        if guide:
            assert context is not None and context_mask is not None
            model_fn = reconstruction_guided_fn(
                model_fn, diffusion, context, context_mask, reconstruction_weight
            )
        if sampler == "ddpm":
            return ddpm_sample(model_fn, noise, diffusion, generator=generator, progress=progress)
        n = steps if context is None or later_steps is None else later_steps
        if sampler == "dpmpp2m":
            return dpmpp2m_sample(model_fn, noise, diffusion, steps=n, progress=progress)
        return ddim_sample(
            model_fn, noise, diffusion, steps=n, eta=eta, generator=generator, progress=progress
        )

    return sample_clip
