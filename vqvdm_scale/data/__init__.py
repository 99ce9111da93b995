"""Streaming only: shard URLs, the shard pipeline, one resumable loader, clip and latent decoding.

Never imports models/, engine/ or train/ (checked by import-linter); PyAV is imported only when an mp4
is decoded.
"""

from vqvdm_scale.data.clips import ClipDecode, ClipLoaderConfig, build_clip_loader, eval_windows
from vqvdm_scale.data.latents import (
    LatentDecode,
    LatentLoader,
    LatentLoaderConfig,
    build_latent_loader,
    read_latent_manifest,
)
from vqvdm_scale.data.loader import LoaderState, ResumableLoader
from vqvdm_scale.data.pipeline import ErrorCounter, shard_sample_pipeline
from vqvdm_scale.data.reader import StreamConfig
from vqvdm_scale.data.urls import resolve_shards

__all__ = [
    "ClipDecode",
    "ClipLoaderConfig",
    "ErrorCounter",
    "LatentDecode",
    "LatentLoader",
    "LatentLoaderConfig",
    "LoaderState",
    "ResumableLoader",
    "StreamConfig",
    "build_clip_loader",
    "build_latent_loader",
    "eval_windows",
    "read_latent_manifest",
    "resolve_shards",
    "shard_sample_pipeline",
]
