"""The shared loop with a toy stage: DeepSpeed engine, checkpoints, latest/keep-K, resume, NaN guard.

The toy model is a real nn.Linear trained by a real DeepSpeed engine; only the data is a tiny
deterministic in-memory stream, so the loop's own guarantees are tested without video machinery.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import run_on_ranks
from vqvdm_scale.config import load_config
from vqvdm_scale.engine.checkpoint import complete_checkpoints, latest_checkpoint
from vqvdm_scale.engine.config import TrainConfig
from vqvdm_scale.engine.deepspeed_engine import build_engine
from vqvdm_scale.train.config import RunConfig
from vqvdm_scale.train.loop import NonFiniteLossError, Trainer, Update


@dataclass
class ToyConfig:
    run: RunConfig = field(default_factory=RunConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    nan_at: int = -1  # micro-steps (0-based, counted per process) whose loss is made NaN; -1 = never
    sigterm_at: int = (
        -1
    )  # the micro-step (0-based) at which rank sigterm_rank sends itself SIGTERM; -1 = never
    sigterm_rank: int = 0


class ToyLoader:
    """Deterministic stream: batch i is a function of (rank, i); state = batches consumed."""

    def __init__(self, rank: int, state: dict[str, Any] | None) -> None:
        self.rank = rank
        self.i = int(state["i"]) if state else 0

    def __iter__(self) -> Any:
        while True:
            g = torch.Generator().manual_seed(1000 * self.rank + self.i)
            self.i += 1
            yield {"x": torch.randn(4, 8, generator=g)}

    def state_dict(self) -> dict[str, Any]:
        return {"i": self.i}


class ToyTrainer(Trainer):
    stage = "toy"

    def build(self) -> None:
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))
        self.engines = {"net": build_engine(self.net, self.train_cfg, self.train_cfg.optim, self.world_size)}
        self.calls = 0
        self.losses: list[float] = []

    def build_loader(self, state: dict[str, Any] | None) -> ToyLoader:
        return ToyLoader(self.rank, state)

    def updates(self) -> list[Update]:
        return [Update("net", self._loss)]

    def _loss(
        self, batch: dict[str, torch.Tensor], ctx: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch["x"]
        # Noise from the global RNG makes the test sensitive to RNG restore on resume.
        loss = ((self.engines["net"](x + 0.01 * torch.randn_like(x)) - x.flip(1)) ** 2).mean()
        self.calls += 1
        if self.calls - 1 == self.cfg.sigterm_at and self.rank == self.cfg.sigterm_rank:
            os.kill(os.getpid(), signal.SIGTERM)  # as Slurm does at preemption; only this rank gets it
        if self.cfg.nan_at >= 0 and self.calls - 1 >= self.cfg.nan_at:
            loss = loss * float("nan")
        else:
            self.losses.append(float(loss.detach()))
        return loss, {"loss": float(loss.detach())}


def _run(rank: int, world: int, run_dir: str, overrides: list[str]) -> list[float]:
    cfg = load_config(
        ToyConfig, None, [f"run.dir={run_dir}", "run.log_every=1", "run.progress=false", *overrides]
    )
    t = ToyTrainer(cfg)
    t.fit()
    return t.losses


def test_two_rank_zero2_checkpoint_resume_equivalence(tmp_path: Path) -> None:
    common = [
        "train.zero_stage=2",
        "run.ckpt_every=3",
        "run.keep_last=2",
        "train.optim.lr=0.01",
        "train.optim.warmup_steps=2",
    ]
    full = run_on_ranks(_run, 2, timeout=240, args=(str(tmp_path / "full"), [*common, "train.max_steps=8"]))
    part = run_on_ranks(
        _run,
        2,
        timeout=240,
        args=(str(tmp_path / "part"), [*common, "train.max_steps=8", "run.stop_after=3"]),
    )
    rest = run_on_ranks(_run, 2, timeout=240, args=(str(tmp_path / "part"), [*common, "train.max_steps=8"]))
    # SIGTERM on rank 1 alone during step 3: every rank finishes that step, checkpoints and leaves.
    sig = [*common, "train.max_steps=8", "sigterm_at=2", "sigterm_rank=1"]
    cut = run_on_ranks(_run, 2, timeout=240, args=(str(tmp_path / "sig"), sig))
    assert (
        latest_checkpoint(tmp_path / "sig" / "checkpoints")
        == tmp_path / "sig" / "checkpoints" / "step_00000003"
    )
    after = run_on_ranks(_run, 2, timeout=240, args=(str(tmp_path / "sig"), [*common, "train.max_steps=8"]))
    for r in range(2):
        assert len(cut[r]) == 3 and cut[r] + after[r] == pytest.approx(full[r], abs=0, rel=0)
    for r in range(2):
        assert len(full[r]) == 8 and len(part[r]) == 3 and len(rest[r]) == 5
        # Resuming gives the same losses at every later step as the uninterrupted run (exactly, on CPU fp32).
        assert part[r] + rest[r] == pytest.approx(full[r], abs=0, rel=0)
    root = tmp_path / "full" / "checkpoints"
    assert [d.name for d in complete_checkpoints(root)] == ["step_00000006", "step_00000008"]
    assert latest_checkpoint(root) == root / "step_00000008"
    assert (tmp_path / "full" / "config.yaml").exists() and (tmp_path / "full" / "ds_config.json").exists()
    assert list((tmp_path / "full" / "tb").glob("events.out.tfevents.*"))


def test_nonfinite_losses_are_skipped_then_stop_the_run(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="non-finite losses in a row"):
        run_on_ranks(
            _run,
            2,
            timeout=240,
            args=(
                str(tmp_path / "nan"),
                ["train.zero_stage=0", "train.max_steps=5", "nan_at=2", "run.max_nonfinite=3"],
            ),
        )
    assert issubclass(NonFiniteLossError, RuntimeError)


class _CountingEngine:
    """Records backward/step calls (run_updates only calls these two)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def backward(self, loss: torch.Tensor) -> None:
        self.calls.append("backward")

    def step(self) -> None:
        self.calls.append("step")


def test_a_nonfinite_second_loss_steps_no_engine() -> None:
    from vqvdm_scale.train.loop import run_updates

    engines = {"gen": _CountingEngine(), "disc": _CountingEngine()}
    seen: list[torch.Tensor] = []

    def skip(losses: torch.Tensor) -> bool:
        seen.append(losses)
        return not bool(torch.isfinite(losses).all())

    def gen(batch: Any, ctx: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        ctx["rec"] = torch.ones(1)
        return torch.tensor(1.0, requires_grad=True), {"g": 1.0}

    def disc(batch: Any, ctx: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return ctx["rec"].sum() * batch, {"d": 2.0}

    updates = [Update("gen", gen), Update("disc", disc)]
    assert run_updates(updates, engines, float("nan"), skip) is None  # the discriminator's loss is NaN
    assert engines["gen"].calls == [] and engines["disc"].calls == []  # the generator did not step alone
    assert run_updates(updates, engines, 1.0, skip) == {"g": 1.0, "d": 2.0}
    assert engines["gen"].calls == ["backward", "step"] and engines["disc"].calls == ["backward", "step"]
    assert [len(s) for s in seen] == [2, 2]  # one check over both losses per micro-step
