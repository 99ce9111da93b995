"""Atomic, byte-reproducible shard writing shared by make_shards (video shards) and encode_latents (latent shards).

The protocol both writers follow, so a reader (or a re-run) never sees half a shard:

1. the tar is written to ``.NAME.tmp`` through a :class:`HashingWriter` (its sha256 needs no second read),
   by a :func:`tar_writer` whose member metadata is fixed, so the bytes depend only on the samples;
2. the sidecar JSON (count, sha256, plan, ...) is written atomically (:func:`write_json`);
3. the tar is renamed to ``NAME`` (:func:`publish_shard` does 2 and 3 in this order).

A re-run keeps a shard when :func:`finished_sidecar` finds its tar, its sidecar, the caller's plan in the
sidecar and a matching sha256, and redoes the others; :func:`remove_tmps` clears a killed run's temporaries.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing as mp
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Optional

import fsspec
import webdataset as wds

from vqvdm_scale.config.text import redact
from vqvdm_scale.formats.fs import MANIFEST_NAME, join_url

__all__ = [
    "MANIFEST_NAME",
    "TAR_MTIME",
    "TAR_USER",
    "HashingWriter",
    "finished_sidecar",
    "join_url",
    "member_key",
    "mp_context",
    "publish_shard",
    "remove_tmps",
    "sha256_of",
    "shard_writer",
    "tar_writer",
    "tmp_name",
    "write_json",
]

# Fixed tar member metadata: shard bytes must not depend on when or by whom they were written.
TAR_MTIME = 0.0
TAR_USER = "vqvdm"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class HashingWriter:
    """File wrapper that hashes what is written, so a shard's sha256 needs no second read."""

    def __init__(self, fileobj: Any) -> None:
        self.fileobj = fileobj
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        """Hash, count and pass on ``data``."""
        self.sha.update(data)
        self.size += len(data)
        self.fileobj.write(data)
        return len(data)

    def flush(self) -> None:
        """Flush the wrapped file."""
        self.fileobj.flush()


def member_key(text: str) -> str:
    """``text`` as a sample key, the stem of its tar member names: only ``[A-Za-z0-9_-]`` are kept.

    A key derived from a source (a path, another shard's ``__key__``) could otherwise carry ``../`` or ``/``
    into member names (extracting the shard would write outside its folder), or a ``.``, which readers take
    for the start of the extension. A clean key is kept as it is; a cleaned one gets a short hash of the
    original, so two sources that clean to the same text stay two samples.
    """
    clean = _UNSAFE.sub("_", text)
    if clean == text and clean:
        return clean
    return f"{clean}-{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


class _CleanTarWriter(wds.TarWriter):
    """A TarWriter that refuses a sample whose key is not a clean :func:`member_key` (a bug in the writer)."""

    def write(self, obj: dict[str, Any]) -> int:
        """Write one sample, after checking its key."""
        key = str(obj.get("__key__", ""))
        if not key or _UNSAFE.search(key):
            raise ValueError(f"sample key {key!r} is not a clean member name: pass it through member_key()")
        return int(super().write(obj))


def tar_writer(out: Any) -> wds.TarWriter:
    """A webdataset TarWriter on ``out`` with fixed member metadata and no encoding (samples are bytes).

    Sample keys must be clean (:func:`member_key`): no path, no dot, in any member name it writes.
    """
    return _CleanTarWriter(out, encoder=False, mtime=TAR_MTIME, user=TAR_USER, group=TAR_USER)


@contextlib.contextmanager
def shard_writer(
    fs: fsspec.AbstractFileSystem, root: str, name: str
) -> Iterator[tuple[wds.TarWriter, HashingWriter]]:
    """A tar writer on ``root/name``'s temporary file, and the hashing stream under it (for sha256 and size).

    Finish with :func:`publish_shard`, which writes the sidecar and renames the temporary to ``name``.
    """
    with fs.open(join_url(root, tmp_name(name)), "wb") as raw:
        out = HashingWriter(raw)
        writer = tar_writer(out)
        yield writer, out
        writer.close()


def sha256_of(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Hex sha256 of the file at ``path`` on ``fs``, read in 1 MiB blocks."""
    sha = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def tmp_name(name: str) -> str:
    """The hidden temporary name ``name`` is written under before its rename."""
    return f".{name}.tmp"


def write_json(fs: fsspec.AbstractFileSystem, root: str, name: str, data: dict[str, Any]) -> None:
    """Write ``data`` as ``root/name`` atomically: to its tmp name first, then renamed.

    Credentials in URLs are masked (:func:`~vqvdm_scale.config.text.redact`): manifests and sidecars are
    reports, and nothing reads a URL back out of them.
    """
    tmp = join_url(root, tmp_name(name))
    with fs.open(tmp, "wb") as f:
        f.write(json.dumps(redact(data), indent=1, sort_keys=True).encode())
    fs.mv(tmp, join_url(root, name))


def publish_shard(
    fs: fsspec.AbstractFileSystem, root: str, name: str, sidecar_name: str, sidecar: dict[str, Any]
) -> None:
    """Write the sidecar of the finished ``root/.name.tmp``, then rename the tar to ``name`` (in that order)."""
    write_json(fs, root, sidecar_name, sidecar)
    fs.mv(join_url(root, tmp_name(name)), join_url(root, name))


def finished_sidecar(
    fs: fsspec.AbstractFileSystem,
    root: str,
    name: str,
    sidecar_name: str,
    matches: Callable[[dict[str, Any]], bool],
) -> Optional[dict[str, Any]]:
    """The sidecar of a whole shard ``name`` whose sidecar ``matches`` the plan, or None if it must be (re)written.

    ``matches`` is checked before the sha256, so a shard of another plan is not read at all.
    """
    tar, side = join_url(root, name), join_url(root, sidecar_name)
    if not fs.exists(tar) or not fs.exists(side):
        return None
    try:
        with fs.open(side, "rb") as f:
            sidecar = json.loads(f.read())
    except (OSError, ValueError):
        return None
    if not matches(sidecar) or sha256_of(fs, tar) != sidecar.get("sha256"):
        return None
    return sidecar


def remove_tmps(fs: fsspec.AbstractFileSystem, root: str, names: Iterable[str]) -> None:
    """Delete the temporaries of ``names`` that a killed run left behind."""
    for name in names:
        tmp = join_url(root, tmp_name(name))
        if fs.exists(tmp):
            fs.rm(tmp)


def mp_context() -> mp.context.BaseContext:
    """forkserver (or spawn) start method for writer worker processes."""
    # Never fork: the parent may hold threads (torch, tqdm) and fsspec clients that do not survive it.
    methods = mp.get_all_start_methods()
    return mp.get_context("forkserver" if "forkserver" in methods else "spawn")
