"""Shard URLs, video clip loading and loader state (PyAV is imported only when an mp4 is decoded)."""

from vqvdm_scale.data.clip_loader import (
    ClipLoader,
    ClipLoaderConfig,
    ErrorCounter,
    LoaderState,
    build_clip_loader,
    eval_windows,
    shard_sample_pipeline,
)
from vqvdm_scale.data.urls import open_url, read_manifest, resolve_shards

__all__ = [
    "ClipLoader",
    "ClipLoaderConfig",
    "ErrorCounter",
    "LoaderState",
    "build_clip_loader",
    "eval_windows",
    "open_url",
    "read_manifest",
    "resolve_shards",
    "shard_sample_pipeline",
]
