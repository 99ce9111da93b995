"""Checkpoints shared by both stages: engine states + client state + per-rank RNG.

Layout under ``<run>/checkpoints``::

    step_00000100/<engine name>/...   the engine's files (DeepSpeed: ZeRO shards per rank)
    step_00000100/rank_00000.pt       this rank's RNG and loader state (tensors only)
    step_00000100/COMPLETE            written by rank 0 after every rank finished
    latest                            tag of the newest COMPLETE checkpoint (atomic rename)

``latest`` moves only after a barrier that every rank reaches once its files are written, so a
crash mid-save leaves the previous checkpoint as the one a re-run resumes from.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vqvdm_scale.engine.env import barrier, get_rank, get_world_size, is_main, print0
from vqvdm_scale.engine.protocol import Engine

LATEST = "latest"
COMPLETE = "COMPLETE"


def _tag(step: int) -> str:
    return f"step_{step:08d}"


def complete_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint dirs under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        d for d in root.iterdir() if d.is_dir() and d.name.startswith("step_") and (d / COMPLETE).exists()
    )


def latest_checkpoint(root: str | Path) -> Path | None:
    """The checkpoint ``latest`` points to, if it is complete."""
    root = Path(root)
    pointer = root / LATEST
    if not pointer.exists():
        return None
    d = root / pointer.read_text().strip()
    return d if (d / COMPLETE).exists() else None


def save_checkpoint(
    engines: Mapping[str, Engine],
    root: str | Path,
    step: int,
    client_state: dict[str, Any],
    per_rank_state: dict[str, Any],
    keep_last: int,
) -> Path:
    """Save every engine under one tag, then move ``latest`` and prune to the last ``keep_last``."""
    root = Path(root)
    d = root / _tag(step)
    if is_main():
        d.mkdir(parents=True, exist_ok=True)
        (d / COMPLETE).unlink(missing_ok=True)
    barrier()
    for i, (name, engine) in enumerate(engines.items()):
        engine.save(str(d), name, client_state if i == 0 else {})
    torch.save(per_rank_state, d / f"rank_{get_rank():05d}.pt")
    barrier()  # every rank's files are on disk past this point
    if is_main():
        (d / COMPLETE).write_text(f"world_size={get_world_size()}\n")
        tmp = root / f".{LATEST}.tmp"
        tmp.write_text(d.name)
        os.replace(tmp, root / LATEST)
        for old in complete_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return d


def load_checkpoint(
    engines: Mapping[str, Engine], root: str | Path
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Load the latest complete checkpoint into ``engines``; return (client_state, per-rank state) or None."""
    d = latest_checkpoint(root)
    if d is None:
        return None
    client_state: dict[str, Any] = {}
    for i, (name, engine) in enumerate(engines.items()):
        cs = engine.load(str(d), name)
        if i == 0:
            client_state = cs
    rank_file = d / f"rank_{get_rank():05d}.pt"
    per_rank: dict[str, Any] = {}
    if rank_file.exists():
        per_rank = torch.load(rank_file, map_location="cpu", weights_only=True)
    else:
        print0(
            f"note: {rank_file.name} missing (world size changed?); RNG and loader start fresh on this rank"
        )
    # every rank's loader state, so a loader on another world size can re-split the epoch's rest
    ranks = sorted(d.glob("rank_*.pt"))
    per_rank["loader_peers"] = [
        torch.load(f, map_location="cpu", weights_only=True).get("loader", {}) for f in ranks
    ]
    print0(f"resumed from {d}")
    return client_state, per_rank
