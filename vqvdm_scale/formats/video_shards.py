"""The video-shard contract (written by make_shards, read by the clip loader and encode_latents).

A video shard is a tar whose samples hold ``__key__`` (:func:`sample_key`), the video (``mp4`` or uint8
``npy`` frames) and ``json`` (label, class name, fps, frame count, source, original and stored size).
Beside the shards, ``manifest.json`` (format :data:`VIDEO_FORMAT`) lists every shard with its count and
sha256, the classes, the make_shards parameters, and every skipped input with its reason.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from typing import Any

from vqvdm_scale.config.core import UserError
from vqvdm_scale.config.text import redact
from vqvdm_scale.formats.fs import join_url, read_manifest

__all__ = ["VIDEO_FORMAT", "sample_key", "shard_entries", "shard_name"]

VIDEO_FORMAT = "vqvdm-video-shards/1"


def shard_name(index: int) -> str:
    """File name of shard ``index``."""
    return f"shard-{index:06d}.tar"


def sample_key(index: int, rel: str) -> str:
    """The sample's ``__key__``: global index + the relative source path with only [A-Za-z0-9_-] kept."""
    return f"{index:08d}_{re.sub(r'[^A-Za-z0-9_-]', '_', rel)}"


def shard_entries(urls: Sequence[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Manifest shard entries of the input shards by URL, and the class list, where manifests exist.

    Folders whose manifests list different classes are refused (UserError): a label would mean one class
    in one folder's shards and another in the next.
    """
    entries: dict[str, dict[str, Any]] = {}
    classes: list[str] = []
    first = ""
    for d in dict.fromkeys(posixpath.dirname(u) or "." for u in urls):
        try:
            manifest = read_manifest(d)
        except (ValueError, OSError):
            continue
        if isinstance(manifest.get("classes"), list):
            listed = [str(c) for c in manifest["classes"]]
            if first and listed != classes:
                raise UserError(
                    f"video shards in {redact(first)} and {redact(d)} have different class lists, {classes} and "
                    f"{listed}, so their labels mean different classes: shard them together with one class list"
                )
            classes, first = listed, first or d
        for entry in manifest["shards"]:
            if isinstance(entry, dict) and "name" in entry:
                entries[join_url(d, str(entry["name"]))] = entry
    return entries, classes
