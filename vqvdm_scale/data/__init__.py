"""Shard URLs, video clip and latent loading, and loader state (PyAV is imported only when an mp4 is decoded)."""

from vqvdm_scale.data.clips import (
    ClipLoader,
    ClipLoaderConfig,
    ErrorCounter,
    LoaderState,
    build_clip_loader,
    eval_windows,
    shard_sample_pipeline,
)
from vqvdm_scale.data.latents import (
    LatentLoader,
    LatentLoaderConfig,
    build_latent_loader,
    denormalize,
    latent_stats,
    read_latent_manifest,
)
from vqvdm_scale.data.urls import resolve_shards
from vqvdm_scale.formats.fs import open_url, read_manifest

__all__ = [
    "ClipLoader",
    "ClipLoaderConfig",
    "ErrorCounter",
    "LatentLoader",
    "LatentLoaderConfig",
    "LoaderState",
    "build_clip_loader",
    "build_latent_loader",
    "denormalize",
    "eval_windows",
    "latent_stats",
    "open_url",
    "read_latent_manifest",
    "read_manifest",
    "resolve_shards",
    "shard_sample_pipeline",
]
