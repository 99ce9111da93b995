"""Checkpoints you can trust (issue 12): a bad ``latest``, interrupted saves, fsync order, no code at resume.

The toy stage of test_train_loop.py (a real DeepSpeed engine on a small MLP) keeps these fast.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import run_on_ranks
from tests.integration.test_train_loop import _run
from vqvdm_scale.engine import checkpoint as ckpt
from vqvdm_scale.engine.checkpoint import (
    COMPLETE,
    LATEST,
    complete_checkpoints,
    latest_checkpoint,
    save_checkpoint,
)

pytestmark = pytest.mark.timeout(600)
COMMON = ["train.zero_stage=2", "run.ckpt_every=2", "run.keep_last=2", "train.optim.lr=0.01"]


def _train(run: Path, *extra: str, world: int = 1) -> list[list[float]]:
    return run_on_ranks(_run, world, timeout=240, args=(str(run), [*COMMON, *extra]))


@pytest.mark.parametrize("pointer", ["", "step_00000099", "garbage\n\x00", "../../etc", None])
def test_a_bad_latest_points_to_the_newest_complete_checkpoint(tmp_path: Path, pointer: str | None) -> None:
    root = tmp_path / "checkpoints"
    for step in (2, 4):
        (root / f"step_{step:08d}").mkdir(parents=True)
        (root / f"step_{step:08d}" / COMPLETE).write_text("world_size=1\n")
    (root / "step_00000006").mkdir()  # an interrupted save: no COMPLETE
    if pointer is not None:
        (root / LATEST).write_text(pointer)
    assert latest_checkpoint(root) == root / "step_00000004"


def test_training_resumes_from_the_newest_complete_checkpoint_when_latest_is_garbled(tmp_path: Path) -> None:
    run = tmp_path / "run"
    full = _train(tmp_path / "full", "train.max_steps=8")[0]
    _train(run, "train.max_steps=8", "run.stop_after=6")
    (run / "checkpoints" / LATEST).write_text("garbage\n\x00")
    rest = _train(run, "train.max_steps=8")[0]
    assert len(rest) == 2 and rest == full[6:]  # resumed at step 6, not from scratch


def test_interrupted_saves_only_never_restart_silently_nor_lose_checkpoints(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _train(run, "train.max_steps=6")
    root = run / "checkpoints"
    for d in complete_checkpoints(root):
        (d / COMPLETE).unlink()  # as if every save had been interrupted
    with pytest.raises(RuntimeError, match="none is complete .* set run.restart=true"):
        _train(run, "train.max_steps=8")
    losses = _train(run, "train.max_steps=2", "run.restart=true")[0]
    assert len(losses) == 2  # from step 0, as asked
    # the restarted run pruned nothing newer than itself: the old folders are still there
    assert {d.name for d in root.iterdir() if d.name.startswith("step_")} >= {
        "step_00000004",
        "step_00000006",
    }


def test_pruning_keeps_the_checkpoint_the_run_resumed_from(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        (root / f"step_{step:08d}").mkdir(parents=True)
        (root / f"step_{step:08d}" / COMPLETE).write_text("world_size=1\n")
    ckpt._prune(root, step=6, keep_last=1, keep=root / "step_00000002")
    assert [d.name for d in complete_checkpoints(root)] == ["step_00000002", "step_00000006"]
    ckpt._prune(root, step=3, keep_last=1, keep=None)  # a run at step 3 never deletes later checkpoints
    assert [d.name for d in complete_checkpoints(root)] == ["step_00000002", "step_00000006"]


class _FileEngine:
    """Writes one file per save (what save_checkpoint needs of an engine)."""

    def save(self, directory: str, tag: str, client_state: dict[str, Any]) -> None:
        Path(directory, tag).mkdir(parents=True, exist_ok=True)
        Path(directory, tag, "weights.pt").write_bytes(b"w")


def test_files_are_fsynced_before_complete_and_latest_are_renamed_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(("rename", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    root = tmp_path / "checkpoints"
    exports = lambda d: (d / "ema.safetensors").write_bytes(b"e")  # noqa: E731
    d = save_checkpoint({"net": _FileEngine()}, root, 2, {}, {"rng": 1}, keep_last=2, exports=exports)  # type: ignore[dict-item]
    order = [e[1] for e in events]
    complete_at = order.index(str(d / COMPLETE))
    for name in ("net/weights.pt", "rank_00000.pt", "ema.safetensors"):
        assert order.index(str(d / name)) < complete_at, name  # the data is on disk before COMPLETE says so
    assert order.index(str(d)) < complete_at  # and so are the folder's entries
    assert order.index(str(root / LATEST)) > complete_at
    assert (root / LATEST).read_text() == d.name


class _Payload:
    """Unpickling this creates a file: what a crafted checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def _plant(path: Path, marker: Path) -> None:
    state = torch.load(path, map_location="cpu", weights_only=False)
    state = {**state, "extra": _Payload(marker)} if isinstance(state, dict) else _Payload(marker)
    with open(path, "wb") as f:
        pickle.dump(state, f)  # plain pickle: torch.load(weights_only=False) would run it


@pytest.mark.parametrize(
    "target", ["net/mp_rank_00_model_states.pt", "net/*optim_states.pt", "rank_00000.pt"]
)
def test_resume_refuses_a_checkpoint_that_would_run_code(tmp_path: Path, target: str) -> None:
    run = tmp_path / "run"
    _train(run, "train.max_steps=2")
    marker = tmp_path / "pwned"
    for f in (run / "checkpoints" / "step_00000002").glob(target):
        _plant(f, marker)
    with pytest.raises(RuntimeError, match="not plain tensor data"):
        _train(run, "train.max_steps=4")
    assert not marker.exists()


def test_a_universal_resume_refuses_a_planted_file_too(tmp_path: Path) -> None:
    from vqvdm_scale.engine.universal import to_universal

    run = tmp_path / "run"
    _train(run, "train.max_steps=2", world=2)
    step = run / "checkpoints" / "step_00000002"
    universal = to_universal(step / "net")  # what a 1-rank resume would do first
    files = sorted(universal.rglob("*.pt"))
    assert files
    marker = tmp_path / "pwned"
    for f in files:
        _plant(f, marker)
    with pytest.raises(RuntimeError, match="not plain tensor data"):
        _train(run, "train.max_steps=4")
    assert not marker.exists()


def test_tensorboard_keeps_one_point_per_step_after_a_resume_that_redoes_steps(tmp_path: Path) -> None:
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    _train(run, "train.max_steps=8", "run.stop_after=6", "run.ckpt_every=4")
    root = run / "checkpoints"
    shutil.rmtree(root / "step_00000006")  # as if killed after logging step 6, before its checkpoint
    (root / LATEST).write_text("step_00000004")
    _train(run, "train.max_steps=8", "run.ckpt_every=4")
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 9))  # steps 5 and 6 once, not twice
