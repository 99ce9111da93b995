"""Checkpoints shared by both stages: engine states + client state + per-rank RNG.

Layout under ``<run>/checkpoints``::

    step_00000100/<engine name>/...   the engine's files (DeepSpeed: ZeRO shards per rank)
    step_00000100/rank_00000.pt       this rank's RNG and loader state (tensors only)
    step_00000100/ema.safetensors     exports the stage promises (written before COMPLETE)
    step_00000100/COMPLETE            written by rank 0 after every rank finished and fsynced
    latest                            tag of the newest COMPLETE checkpoint (atomic rename)

``COMPLETE`` and ``latest`` are written only after a barrier that every rank reaches once its files are
written and fsynced (with their folders), and each is itself written to a temporary, fsynced and renamed,
so a crash or a power loss mid-save leaves the previous checkpoint as the one a re-run resumes from. An
empty, garbled or dangling ``latest`` falls back to the newest COMPLETE checkpoint, with a warning.
Pruning keeps the newest ``keep_last`` checkpoints up to the current step, and never deletes the one the
run resumed from nor any newer than the current step.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Optional

import torch

from vqvdm_scale.engine.env import barrier, get_rank, get_world_size, is_main, print0
from vqvdm_scale.engine.protocol import Engine
from vqvdm_scale.engine.safe_load import weights_only_loads
from vqvdm_scale.formats.safetensors_file import fsync_dir, write_text

LATEST = "latest"
COMPLETE = "COMPLETE"


def _tag(step: int) -> str:
    return f"step_{step:08d}"


def _step(d: Path) -> int:
    try:
        return int(d.name.removeprefix("step_"))
    except ValueError:
        return -1


def complete_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint dirs under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [
        d for d in root.iterdir() if d.is_dir() and d.name.startswith("step_") and (d / COMPLETE).exists()
    ]
    return sorted((d for d in found if _step(d) >= 0), key=_step)


def any_checkpoint(root: str | Path) -> bool:
    """True when ``root`` holds checkpoint folders, complete or not."""
    root = Path(root)
    return root.is_dir() and any(d.is_dir() and d.name.startswith("step_") for d in root.iterdir())


def latest_checkpoint(root: str | Path) -> Path | None:
    """The checkpoint ``latest`` points to; if that is empty, garbled or not complete, the newest complete one."""
    root = Path(root)
    pointer = root / LATEST
    complete = complete_checkpoints(root)
    if not pointer.exists():
        return complete[-1] if complete else None
    try:
        name = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError):
        name = ""
    d = root / name if name and "/" not in name and name.startswith("step_") else None
    if d is not None and (d / COMPLETE).exists():
        return d
    if complete:
        print0(
            f"warning: {pointer} is {'empty or unreadable' if d is None else f'{name!r}, not a complete checkpoint'}; "
            f"resuming from the newest complete checkpoint, {complete[-1].name}"
        )
    return complete[-1] if complete else None


def fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder``, then the folders themselves (so renames and new names persist)."""
    folders = [folder]
    for path in folder.rglob("*"):
        if path.is_dir():
            folders.append(path)
        elif path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for d in folders:
        fsync_dir(d)


def save_checkpoint(
    engines: Mapping[str, Engine],
    root: str | Path,
    step: int,
    client_state: dict[str, Any],
    per_rank_state: dict[str, Any],
    keep_last: int,
    exports: Optional[Callable[[Path], None]] = None,
    keep: Optional[Path] = None,
) -> Path:
    """Save every engine and ``exports`` (every rank calls both) under one tag, then COMPLETE, ``latest``, prune.

    ``keep`` (the checkpoint this run resumed from) is never pruned.
    """
    root = Path(root)
    d = root / _tag(step)
    if is_main():
        d.mkdir(parents=True, exist_ok=True)
        (d / COMPLETE).unlink(missing_ok=True)
    barrier()
    for i, (name, engine) in enumerate(engines.items()):
        engine.save(str(d), name, client_state if i == 0 else {})
    torch.save(per_rank_state, d / f"rank_{get_rank():05d}.pt")
    if exports is not None:
        exports(d)  # every file the checkpoint promises exists before COMPLETE
    fsync_tree(d)
    barrier()  # every rank's files are on disk past this point
    if is_main():
        write_text(d / COMPLETE, f"world_size={get_world_size()}\n")
        write_text(root / LATEST, d.name)
        _prune(root, step, keep_last, keep)
    barrier()
    return d


def _prune(root: Path, step: int, keep_last: int, keep: Optional[Path]) -> None:
    """Delete complete checkpoints beyond the newest ``keep_last`` up to ``step``; never ``keep`` or newer ones."""
    candidates = [d for d in complete_checkpoints(root) if _step(d) <= step]
    for old in candidates[:-keep_last]:
        if keep is not None and old.resolve() == keep.resolve():
            continue
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    engines: Mapping[str, Engine], root: str | Path
) -> tuple[Path, dict[str, Any], dict[str, Any]] | None:
    """Load the latest complete checkpoint into ``engines``; return (its dir, client_state, per-rank state) or None.

    Every file is read with ``weights_only=True`` (DeepSpeed's own loads included): a file that holds
    anything but tensor data is refused before any code in it could run.
    """
    d = latest_checkpoint(root)
    if d is None:
        return None
    client_state: dict[str, Any] = {}
    for i, (name, engine) in enumerate(engines.items()):
        with weights_only_loads(f"checkpoint {d / name}"):
            cs = engine.load(str(d), name)
        if i == 0:
            client_state = cs
    rank_file = d / f"rank_{get_rank():05d}.pt"
    per_rank: dict[str, Any] = {}
    if rank_file.exists():
        with weights_only_loads(f"checkpoint file {rank_file}"):
            per_rank = torch.load(rank_file, map_location="cpu", weights_only=True)
    else:
        print0(
            f"note: {rank_file.name} missing (world size changed?); RNG and loader start fresh on this rank"
        )
    # every rank's loader state, so a loader on another world size can re-split the epoch's rest
    peers = []
    for f in sorted(d.glob("rank_*.pt")):
        with weights_only_loads(f"checkpoint file {f}"):
            peers.append(torch.load(f, map_location="cpu", weights_only=True).get("loader", {}))
    per_rank["loader_peers"] = peers
    if peers and len(peers) != get_world_size():
        print0(
            f"note: {d.name} was saved by {len(peers)} ranks and resumes on {get_world_size()}: the rest of the "
            "epoch is re-split over the new ranks, a rank without a saved RNG state starts as a fresh rank would, "
            f"and the global batch per step changes by x{get_world_size() / len(peers):g}"
        )
    print0(f"resumed from {d}")
    return d, client_state, per_rank
