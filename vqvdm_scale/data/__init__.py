"""Shard URLs, video clip and latent loading, and loader state (PyAV is imported only when an mp4 is decoded)."""

from vqvdm_scale.data.clip_loader import (
    ClipLoader,
    ClipLoaderConfig,
    ErrorCounter,
    LoaderState,
    build_clip_loader,
    eval_windows,
    shard_sample_pipeline,
)
from vqvdm_scale.data.latent_loader import (
    LatentLoader,
    LatentLoaderConfig,
    build_latent_loader,
    denormalize,
    latent_stats,
    read_latent_manifest,
)
from vqvdm_scale.data.urls import open_url, read_manifest, resolve_shards

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
