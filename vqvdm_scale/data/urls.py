"""Shard URL specs -> concrete shard URLs, and fsspec I/O for local paths, memory://, s3://, gs://.

A shard spec (see docs/CONTRACTS.md, "Shard URLs") is one of:

(a) a directory URL holding ``manifest.json`` -> the manifest's non-empty shards, in manifest order;
(b) a brace pattern such as ``s3://b/ucf/shard-{000000..000127}.tar`` -> its expansion;
(c) a list of URLs / patterns / directories, as a Python sequence or one comma-separated string
    (commas inside ``{...}`` belong to the brace pattern, not to the list).

Every URL is opened through fsspec, so the same code reads local files, ``memory://`` (tests) and
object stores (``s3://`` needs ``pip install s3fs``, ``gs://`` needs ``gcsfs``).
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

import braceexpand
from fsspec.core import url_to_fs

from vqvdm_scale.config.core import UserError
from vqvdm_scale.config.text import plural
from vqvdm_scale.formats.faults import storage_errors
from vqvdm_scale.formats.fs import MANIFEST_NAME, SHARD_SPEC_FORMS, join_url, read_manifest


def _split_list(spec: str) -> list[str]:
    """Split a comma-separated list, keeping commas that sit inside brace patterns."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in spec:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _manifest_shards(dir_url: str) -> list[str]:
    manifest = read_manifest(dir_url)
    urls: list[str] = []
    for entry in manifest["shards"]:
        if not isinstance(entry, dict) or "name" not in entry:
            raise UserError(f"{join_url(dir_url, MANIFEST_NAME)}: bad shard entry {entry!r}")
        if int(entry.get("count", 1)) > 0:  # empty shards would only cost an open per epoch
            urls.append(join_url(dir_url, str(entry["name"])))
    if not urls:
        raise UserError(f"no shards found at {dir_url}: its {MANIFEST_NAME} lists no non-empty shard")
    return urls


def _check_exist(urls: list[str], spec: str) -> None:
    """Raise if any URL is missing; lists each parent directory once instead of stat-ing every shard."""
    listings: dict[tuple[int, str], set[str]] = {}
    missing: list[str] = []
    for url in urls:
        fs, path = url_to_fs(url)
        parent = posixpath.dirname(path.rstrip("/"))
        key = (id(fs), parent)
        if key not in listings:
            try:
                listings[key] = {p.rstrip("/") for p in fs.ls(parent, detail=False)}
            except (FileNotFoundError, NotADirectoryError):
                listings[key] = set()
        # ls output and stripped paths can differ in form on some backends; confirm with exists()
        if path.rstrip("/") not in listings[key] and not fs.exists(path):
            missing.append(url)
    if missing:
        shown = ", ".join(missing[:3]) + (f" (and {len(missing) - 3} more)" if len(missing) > 3 else "")
        verb = "does" if len(missing) == 1 else "do"
        raise UserError(
            f"{len(missing)} of {plural(len(urls), 'shard')} given by {spec!r} {verb} not exist: {shown}"
        )


def _resolve_one(spec: str) -> list[str]:
    if "{" in spec:
        urls = list(braceexpand.braceexpand(spec))
        _check_exist(urls, spec)
        return urls
    fs, path = url_to_fs(spec)
    if fs.isdir(path):
        return _manifest_shards(spec)
    if fs.isfile(path):
        if posixpath.basename(path) == MANIFEST_NAME:
            return _manifest_shards(posixpath.dirname(spec.rstrip("/")) or ".")
        return [spec]
    raise UserError(f"no shards found at {spec}: {SHARD_SPEC_FORMS}")


def resolve_shards(spec: str | Sequence[str]) -> list[str]:
    """Shard URLs named by ``spec``: a manifest directory, a brace pattern, or a list (sequence or comma string)."""
    if isinstance(spec, str):
        items = _split_list(spec)
    else:
        items = [s.strip() for s in spec if isinstance(s, str) and s.strip()]
        if len(items) != len(list(spec)):
            raise UserError(f"shard list {list(spec)!r} contains empty or non-string entries")
    if not items:
        raise UserError(f"no shards found at {spec!r}: {SHARD_SPEC_FORMS}")
    urls: list[str] = []
    for item in items:
        with storage_errors(item):  # an unreachable store is one line, not a client traceback
            urls.extend(_resolve_one(item))
    return urls
