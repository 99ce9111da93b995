"""Resume on another world size, with real gloo ranks: DeepSpeed's universal checkpoint and an exact data re-split.

The stage is a toy (two small networks in real DeepSpeed engines, as the VQGAN has two) that reads real
tar shards through the production :class:`~vqvdm_scale.data.loader.ResumableLoader`, so a run costs little
while the trainer's save/resume, the checkpoint, DeepSpeed's universal conversion and the loader's re-split
are the real ones. Each test checks that the engines a resumed run starts from hold exactly what the last
run saved (weights, AdamW moments and step count, learning rate), and that within an epoch no sample is
used twice and none is left out (each rank records the keys of the samples it trained on).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import webdataset as wds
from torch import nn

from tests.helpers import run_on_ranks
from vqvdm_scale.config import load_config
from vqvdm_scale.data import LoaderState, ResumableLoader
from vqvdm_scale.data.reader import StreamConfig
from vqvdm_scale.engine.config import TrainConfig
from vqvdm_scale.engine.deepspeed_engine import DeepSpeedEngine, build_engine
from vqvdm_scale.train.config import RunConfig
from vqvdm_scale.train.loop import Trainer, Update

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
SAMPLES = 32  # 8 shards of 4


@dataclass
class WorldConfig:
    run: RunConfig = field(default_factory=RunConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: StreamConfig = field(default_factory=StreamConfig)
    shards: str = ""


def _decode(sample: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    i = int(sample["txt"])
    return {"x": torch.tensor([i % 7, i % 5, i % 3, 1.0]) / 4, "key": sample["__key__"]}


def _moments(engine: DeepSpeedEngine) -> dict[str, np.ndarray]:
    """Full AdamW state (exp_avg, exp_avg_sq per parameter, step) on every rank (collective under ZeRO)."""
    from deepspeed.utils import safe_get_full_optimizer_state

    opt = engine._engine.optimizer
    if hasattr(opt, "_lazy_init_hp_params_optimizer_state"):
        # ZeRO-1/2 link the fp32 moments to the parameters at the first step; a just-loaded engine has not stepped
        opt._lazy_init_hp_params_optimizer_state()
    base = getattr(opt, "optimizer", opt)
    out = {}
    for name, p in engine.module.named_parameters():
        for key in ("exp_avg", "exp_avg_sq"):
            full = safe_get_full_optimizer_state(p, key)
            if full is None:  # ZeRO-0: the torch optimizer holds the full state
                full = base.state[p][key]
            out[f"{name}.{key}"] = full.detach().float().cpu().numpy().copy()
    out["step"] = np.array(sorted({int(s["step"]) for s in base.state.values() if "step" in s}))
    out["lr"] = np.array(engine.lr())
    return out


def _snapshot(engines: dict[str, DeepSpeedEngine]) -> dict[str, np.ndarray]:
    """Every engine's weights and optimizer state, keyed ``<engine>/<name>``."""
    out = {}
    for prefix, engine in engines.items():
        # numpy: tensors sent through a multiprocessing queue need their process alive until received
        weights = {k: v.numpy().copy() for k, v in engine.full_state_dict().items()}
        out.update({f"{prefix}/{k}": v for k, v in {**weights, **_moments(engine)}.items()})
    return out


class WorldTrainer(Trainer):
    stage = "ws"

    def build(self) -> None:
        # two engines, as the VQGAN's autoencoder and discriminator: each is converted and loaded on its own
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 4))
        self.aux = nn.Linear(4, 1)
        self.engines = {
            name: build_engine(module, self.train_cfg, self.train_cfg.optim, self.world_size)
            for name, module in (("net", self.net), ("aux", self.aux))
        }
        self.seen: list[tuple[int, str]] = []
        self.loaded: dict[str, np.ndarray] = {}

    def resume(self) -> dict[str, Any] | None:
        state = super().resume()
        if self.step:
            self.loaded = _snapshot(self.engines)  # what the resumed engines start from
        return state

    def build_loader(self, state: dict[str, Any] | None) -> ResumableLoader:
        urls = sorted(str(p) for p in Path(self.cfg.shards).glob("*.tar"))
        return ResumableLoader(
            self.cfg.data, urls, _decode, batch_size=self.train_cfg.micro_batch_size, rank=self.rank,
            world_size=self.world_size, train=True, state=LoaderState.from_dict(state) if state else None,
        )  # fmt: skip

    def updates(self) -> list[Update]:
        return [Update("net", self._loss), Update("aux", self._aux_loss)]

    def _loss(self, batch: dict[str, Any], ctx: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        self.seen += [(self.loader.state.epoch, key) for key in batch["key"]]  # the batch's epoch
        x = batch["x"]
        loss = ((self.engines["net"](x) - x.flip(1)) ** 2).mean()
        return loss, {"loss": float(loss.detach())}

    def _aux_loss(self, batch: dict[str, Any], ctx: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        loss = (self.engines["aux"](batch["x"]) - 1).pow(2).mean()
        return loss, {"aux": float(loss.detach())}


def _train(rank: int, world: int, overrides: list[str]) -> dict[str, Any]:
    trainer = WorldTrainer(load_config(WorldConfig, None, overrides))
    trainer.fit()
    return {
        "seen": trainer.seen,
        "step": trainer.step,
        "loaded": trainer.loaded,
        "final": _snapshot(trainer.engines),
    }


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ws_shards")
    for s in range(SAMPLES // 4):
        with wds.TarWriter(str(root / f"shard-{s:06d}.tar")) as tw:
            for i in range(4 * s, 4 * s + 4):
                tw.write({"__key__": f"{i:05d}", "txt": str(i)})
    return root


def _run(world: int, shards: Path, run: Path, stage: int, *extra: str) -> list[dict[str, Any]]:
    overrides = [
        f"shards={shards}", f"run.dir={run}", f"train.zero_stage={stage}", "train.micro_batch_size=2",
        "train.max_steps=15", "train.optim.lr=0.01", "train.optim.warmup_steps=2", "run.ckpt_every=100",
        "run.progress=false", "data.num_workers=0", "data.shuffle_buffer=3",
        "data.drop_last=false",  # so that every sample of the epoch is trained on, partial batches too
        *extra,
    ]  # fmt: skip
    return run_on_ranks(_train, world, timeout=240, args=(overrides,))


def _assert_same(saved: dict[str, np.ndarray], loaded: dict[str, np.ndarray]) -> None:
    assert saved.keys() == loaded.keys()
    different = [k for k in saved if not np.array_equal(saved[k], loaded[k])]
    assert not different, f"not restored exactly: {different}"


def _epoch_counts(runs: list[list[dict[str, Any]]], epoch: int) -> Counter[str]:
    return Counter(key for ranks in runs for r in ranks for e, key in r["seen"] if e == epoch)


@pytest.mark.parametrize("stage", [pytest.param(2, id="zero2")])
def test_two_one_two_ranks_restore_the_engine_and_use_every_sample_once(
    shards: Path, tmp_path: Path, stage: int
) -> None:
    run = tmp_path / "run"
    a = _run(2, shards, run, stage, "run.stop_after=3")
    b = _run(1, shards, run, stage, "run.stop_after=4")  # a node lost
    c = _run(2, shards, run, stage)  # and back, to the end of the epoch and into the next
    assert [r["step"] for r in a + b + c] == [3, 3, 7, 15, 15]
    _assert_same(a[0]["final"], b[0]["loaded"])
    _assert_same(b[0]["final"], c[0]["loaded"])
    _assert_same(b[0]["final"], c[1]["loaded"])
    ckpts = run / "checkpoints"
    for step in ("step_00000003", "step_00000007"):  # each engine converted once, beside it
        assert sorted(p.name for p in (ckpts / step).glob("*_universal")) == [
            "aux_universal",
            "net_universal",
        ]
    epoch0 = _epoch_counts([a, b, c], 0)
    assert len(epoch0) == SAMPLES, f"{SAMPLES - len(epoch0)} samples of the epoch were never trained on"
    assert set(epoch0.values()) == {1}, {k: n for k, n in epoch0.items() if n > 1}
    epoch1 = _epoch_counts([c], 1)
    assert epoch1 and set(epoch1.values()) == {1}, "the run should have gone on into a normal next epoch"
    # a ZeRO checkpoint loads on another world size only into an engine of its kind: one line says so
    with pytest.raises(
        RuntimeError, match=r"ZeRO-1 or 2 optimizer partitions of 2 ranks.*train.zero_stage=0"
    ):
        _run(1, shards, run, 0)


@pytest.mark.parametrize("stage", [pytest.param(0, id="zero0"), pytest.param(3, id="zero3")])
def test_two_to_one_rank_restores_the_engine(shards: Path, tmp_path: Path, stage: int) -> None:
    run = tmp_path / "run"
    a = _run(2, shards, run, stage, "run.stop_after=3")
    b = _run(1, shards, run, stage, "run.stop_after=2")
    assert [r["step"] for r in a + b] == [3, 3, 5]
    _assert_same(a[0]["final"], b[0]["loaded"])
    # ZeRO-0 keeps one full optimizer state, which loads on any world size as it is
    converted = list((run / "checkpoints" / "step_00000003").glob("*_universal"))
    assert len(converted) == (2 if stage > 0 else 0)
    epoch0 = _epoch_counts([a, b], 0)
    assert len(epoch0) == 2 * 3 * 2 + 2 * 2 and set(epoch0.values()) == {1}
