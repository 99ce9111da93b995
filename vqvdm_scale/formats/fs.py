"""fsspec I/O every on-disk format shares: open a URL, join a name onto a folder URL, read a manifest."""

from __future__ import annotations

import json
from typing import IO, Any

import fsspec

from vqvdm_scale.config.core import UserError
from vqvdm_scale.formats.faults import storage_errors

MANIFEST_NAME = "manifest.json"

SHARD_SPEC_FORMS = "expected a directory with manifest.json, a brace pattern, or a list"


def open_url(url: str, mode: str = "rb") -> IO[Any]:
    """Open ``url`` (local path or any fsspec URL) and return the open file object; the caller closes it."""
    try:
        return fsspec.open(url, mode).open()
    except ImportError as e:  # e.g. s3:// without s3fs installed
        raise UserError(f"cannot open {url}: {e}. Install the fsspec backend for this protocol") from e


def join_url(dir_url: str, name: str) -> str:
    """``dir_url/name`` without doubling the slash (works for local paths and ``proto://`` URLs)."""
    return dir_url.rstrip("/") + "/" + name


def read_manifest(dir_url: str) -> dict[str, Any]:
    """Load ``dir_url/manifest.json`` (a shard directory's manifest) as a dict; ValueError if absent/bad."""
    url = join_url(dir_url, MANIFEST_NAME)
    try:
        with storage_errors(url), open_url(url, "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError as e:
        raise UserError(f"no {MANIFEST_NAME} at {dir_url}: {SHARD_SPEC_FORMS}") from e
    except json.JSONDecodeError as e:
        raise UserError(f"{url} is not valid JSON ({e}); re-run the shard writer") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise UserError(f"{url} has no 'shards' list; it is not a shard manifest")
    return manifest
