"""Export files (tokenizer, LDM EMA) at fsspec URLs: fetched once per process, published whole.

safetensors reads a file by path (it memory-maps the header), so a ``s3://``/``gs://`` export is copied
into a per-process temporary folder (``$TMPDIR``) on first use and read from there; every later read of the
same URL in the process reuses the copy. Writing goes the other way: the file is written locally,
atomically, then uploaded in one ``put``, which an object store makes visible whole or not at all.
Errors that name the local copy are reworded to name the URL the user gave.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import fsspec

from vqvdm_scale.config.core import UserError
from vqvdm_scale.config.text import redact
from vqvdm_scale.formats.faults import StorageUnreachable, storage_errors

__all__ = ["fetched", "is_url", "local_copy", "publish", "staged"]

_copies: dict[str, Path] = {}
_folder: Optional[Path] = None


def is_url(path: str | Path) -> bool:
    """True for ``proto://...`` other than ``file://`` (a ``Path`` is always local)."""
    text = str(path)
    return not isinstance(path, Path) and "://" in text and not text.startswith("file://")


def _cache_folder() -> Path:
    global _folder
    if _folder is None:
        _folder = Path(tempfile.mkdtemp(prefix="vqvdm-exports-"))
        atexit.register(shutil.rmtree, _folder, True)
    return _folder


def local_copy(path: str | Path, what: str) -> Path:
    """``path`` itself when local; for a URL, a local copy of it (downloaded once per process).

    A missing object is a :class:`UserError` naming the URL and ``what`` it should be; an unreachable
    store is :class:`StorageUnreachable`, one line.
    """
    if not is_url(path):
        return Path(path)
    url = str(path)
    if url in _copies and _copies[url].is_file():
        return _copies[url]
    name = url.rstrip("/").rsplit("/", 1)[-1] or "export"
    target = _cache_folder() / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    target.parent.mkdir(parents=True, exist_ok=True)
    fs, remote = fsspec.core.url_to_fs(url)
    try:
        with storage_errors(url):
            fs.get_file(remote, str(target))
    except FileNotFoundError as e:
        raise UserError(redact(f"{what} {url} does not exist")) from e
    try:  # the tokenizer's human-readable sidecar travels with it when present
        with storage_errors(url):
            fs.get_file(remote + ".json", str(target) + ".json")
    except FileNotFoundError:
        pass
    _copies[url] = target
    return target


@contextmanager
def fetched(path: str | Path, what: str) -> Iterator[Path]:
    """:func:`local_copy` of ``path``; a :class:`UserError` raised inside that names the copy names ``path``."""
    local = local_copy(path, what)
    try:
        yield local
    except (UserError, StorageUnreachable) as e:
        if not is_url(path) or str(local) not in str(e):
            raise
        raise type(e)(str(e).replace(str(local), redact(str(path)))) from e


@contextmanager
def staged(path: str | Path) -> Iterator[Path]:
    """Where to write the file ``path``: itself when local; for a URL, a local file uploaded on success.

    Every file written beside the staged one (a sidecar ``<name>.json``) is uploaded beside the URL too.
    """
    if not is_url(path):
        yield Path(path)
        return
    url = str(path)
    with tempfile.TemporaryDirectory(prefix="vqvdm-upload-") as tmp:
        local = Path(tmp) / url.rstrip("/").rsplit("/", 1)[-1]
        yield local
        base = url.rsplit("/", 1)[0]
        for file in sorted(Path(tmp).iterdir(), key=lambda p: p != local):  # the export itself first
            publish(file, f"{base}/{file.name}")


def publish(local: Path, url: str) -> None:
    """Upload ``local`` to ``url`` in one put (an object appears whole or not at all); size checked."""
    fs, remote = fsspec.core.url_to_fs(url)
    with storage_errors(url):
        parent = remote.rsplit("/", 1)[0]
        if parent and not fs.exists(parent) and "/" not in parent:
            raise UserError(
                redact(f"cannot write {url}: the bucket {parent!r} does not exist; create it first")
            )
        fs.put_file(str(local), remote)
        fs.invalidate_cache()
        size = fs.size(remote)
    if size != os.path.getsize(local):
        raise UserError(
            redact(f"upload of {url} incomplete ({size} of {os.path.getsize(local)} bytes); retry")
        )
    _copies.pop(url, None)  # a later read in this process fetches what was just written
