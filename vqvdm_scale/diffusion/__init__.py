"""Diffusion process, training loss, samplers, guidance and long-video extension (separate from the network)."""

from vqvdm_scale.diffusion.gaussian import DiffusionConfig, GaussianDiffusion
from vqvdm_scale.diffusion.guidance import ModelFn, cfg_model_fn, conditional_model_fn
from vqvdm_scale.diffusion.long_video import ClipSampler, make_clip_sampler, sample_long_video
from vqvdm_scale.diffusion.loss import DiffusionLoss
from vqvdm_scale.diffusion.samplers import (
    SAMPLERS,
    SamplerName,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    dpmpp2m_sample,
)
from vqvdm_scale.diffusion.schedules import make_betas

__all__ = [
    "SAMPLERS",
    "ClipSampler",
    "DiffusionConfig",
    "DiffusionLoss",
    "GaussianDiffusion",
    "ModelFn",
    "SamplerName",
    "cfg_model_fn",
    "conditional_model_fn",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_sample",
    "dpmpp2m_sample",
    "make_betas",
    "make_clip_sampler",
    "sample_long_video",
]
