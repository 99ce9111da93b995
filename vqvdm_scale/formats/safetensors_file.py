"""Safetensors files that check themselves: a content hash, reproducible bytes, durable atomic writes.

Every export (the tokenizer's ``tokenizer.safetensors``, the LDM's ``ema.safetensors``) goes through here:

- :func:`content_sha256` hashes a text (the export's config / metadata) and every tensor's name, dtype,
  shape and bytes in sorted name order. A file cannot hold the hash of its own bytes, so the export stores
  this hash in its metadata, and :func:`read_safetensors` recomputes it (:func:`verify_sha256`): a flipped bit, an edited tensor
  or edited metadata is caught, and a truncated file is refused when it is opened.
- :func:`write_safetensors` writes to a temporary beside the target, fsyncs it, renames it and fsyncs the
  folder; the file gets the mode a plain ``open()`` would give (safetensors' own writer gives 0600), and
  its header's metadata keys are sorted (safetensors writes them in hash order), so identical exports are
  identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from vqvdm_scale.config.core import UserError

__all__ = [
    "content_sha256",
    "copy_file",
    "fsync_dir",
    "read_safetensors",
    "verify_sha256",
    "write_safetensors",
    "write_text",
]


def content_sha256(text: str, tensors: Mapping[str, Tensor]) -> str:
    """sha256 over ``text`` and every tensor's name, dtype, shape and bytes in sorted name order."""
    h = hashlib.sha256()
    h.update(text.encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"\n{name}|{str(t.dtype).removeprefix('torch.')}|{list(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # a view: no copy of the bytes
    return h.hexdigest()


def _sort_metadata(fd: int) -> None:
    """Rewrite a safetensors header in place with its metadata keys sorted (same length, same offsets)."""
    (n,) = struct.unpack("<Q", os.pread(fd, 8, 0))
    header = json.loads(os.pread(fd, n, 8))
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) <= n:  # always, as the same JSON re-ordered; else keep safetensors' (valid) header
        os.pwrite(fd, text.ljust(n, b" "), 8)  # the data offsets count from the header's end: unchanged


def _open_mode(folder: Path) -> int:
    """The permission bits a plain ``open(path, "w")`` gives a new file in ``folder`` (0666 minus the umask)."""
    probe = folder / f".mode-probe.{os.getpid()}"
    with open(probe, "w"):
        pass
    try:
        return probe.stat().st_mode & 0o777
    finally:
        probe.unlink()


def write_safetensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Write ``path`` atomically and durably, with sorted metadata and the mode ``open()`` would give."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    mode = _open_mode(path.parent)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        fd = os.open(tmp, os.O_RDWR)
        try:
            _sort_metadata(fd)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically and durably (temporary, fsync, rename, fsync the folder)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def copy_file(src: Path, path: Path) -> None:
    """Copy ``src`` to ``path`` atomically and durably, as :func:`write_text` writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """fsync a folder, so a rename into it survives a power loss (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_safetensors(path: Path, what: str) -> tuple[dict[str, str], dict[str, Tensor]]:
    """Metadata and tensors of ``path``; a truncated or non-safetensors file is a UserError naming it.

    ``what`` names the kind of file in the message ("LDM EMA export").
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - no iterator
    except (SafetensorError, OSError, ValueError) as e:
        reason = " ".join(str(e).split())
        raise UserError(
            f"{path} is not a readable {what} (truncated or not a safetensors file: {reason}); "
            "copy it again or re-export it"
        ) from e
    return meta, tensors


def verify_sha256(path: Path, what: str, recorded: str, text: str, tensors: Mapping[str, Tensor]) -> str:
    """:func:`content_sha256` of ``text`` and ``tensors``; a UserError naming ``path`` unless it is ``recorded``."""
    actual = content_sha256(text, tensors)
    if actual != recorded:
        raise UserError(
            f"{path}: sha256 mismatch (recorded {recorded[:16]}..., contents hash to {actual[:16]}...): "
            f"the {what} is corrupt or was edited after export; copy it again or re-export it"
        )
    return actual
