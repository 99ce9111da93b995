"""The training loop both stages share: updates, NaN guard, EMA, cadence, resume, logging, checkpoints.

A stage subclasses :class:`Trainer` and fills in ``build`` (its models and ``self.engines``, and the module
to average in ``self.ema_source``), ``build_loader`` and ``updates`` (pure step functions: batch -> loss and
scalars, one per engine it steps), and optionally ``media``/``finish``. The loop owns the rest once: grad
accumulation, backward and step through the :class:`~vqvdm_scale.engine.protocol.Engine` protocol, the
non-finite guard agreed on every rank, the EMA update, resuming by re-running the same command, the
``latest`` pointer and keep-K, a checkpoint when the object store is lost, and TensorBoard."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vqvdm_scale.config import UserError, dump_config, to_dict
from vqvdm_scale.config.text import redact
from vqvdm_scale.engine.checkpoint import LATEST, any_checkpoint, load_checkpoint, save_checkpoint
from vqvdm_scale.engine.config import TrainConfig
from vqvdm_scale.engine.deepspeed_engine import deepspeed_config
from vqvdm_scale.engine.ema import EMA
from vqvdm_scale.engine.env import (
    any_rank_true,
    barrier,
    describe_rank,
    init_distributed,
    is_main,
    max_over_ranks,
    pick_device,
    print0,
    rng_state,
    seed_everything,
    set_collective_timeout,
    set_rng_state,
)
from vqvdm_scale.engine.nccl import export_nccl_env
from vqvdm_scale.engine.protocol import Engine
from vqvdm_scale.formats.object_store import apply_object_store
from vqvdm_scale.monitor.logger import Logger, make_logger
from vqvdm_scale.monitor.meters import StepTimer
from vqvdm_scale.monitor.progress import Progress, Throughput
from vqvdm_scale.train.config import RunConfig
from vqvdm_scale.train.reporting import report_step, summary_line
from vqvdm_scale.train.run_lock import RunLock
from vqvdm_scale.train.signals import StopOnSignal
from vqvdm_scale.train.storage_stop import StorageUnreachable, next_batch, stop_on_lost_store


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row."""


LossFn = Callable[[Any, dict[str, Any]], tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class Update:
    """One optimiser update of a micro-step: ``loss(batch, ctx) -> (loss, scalars)``, stepped by ``engine``.

    ``ctx`` is a dict shared by the updates of one micro-step (the VQGAN's discriminator update reads
    the reconstruction its generator update left there)."""

    engine: str
    loss: LossFn


def run_updates(
    updates: Sequence[Update],
    engines: Mapping[str, Engine],
    batch: Any,
    skip: Callable[[torch.Tensor], bool] = lambda loss: False,
) -> dict[str, float] | None:
    """One micro-step, atomic: every update's loss first, then each backward and step in order.

    ``skip`` sees all the losses at once (one check, agreed across ranks by the trainer): when it says so,
    no engine steps, so a non-finite second loss (the VQGAN's discriminator) cannot leave the first engine
    stepped alone. The losses may be computed first because a later update reads only detached values of
    an earlier one (the discriminator update takes the generator's detached reconstruction). This is the
    whole of what the trainer runs per micro-batch (benchmarks time exactly this)."""
    ctx: dict[str, Any] = {}
    logs: dict[str, float] = {}
    losses = []
    for update in updates:
        loss, scalars = update.loss(batch, ctx)
        losses.append(loss)
        logs.update(scalars)
    if skip(torch.stack([loss.detach().float().reshape(()) for loss in losses])):
        return None
    for update, loss in zip(updates, losses, strict=True):
        engine = engines[update.engine]
        engine.backward(loss)
        engine.step()
    return logs


class Trainer(ABC):
    """Shared loop; ``cfg`` is a stage root config with ``run`` and ``train`` sections."""

    stage: str = "train"

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        apply_object_store(getattr(cfg, "object_store", None))  # before any shard is opened, workers included
        self.run_cfg: RunConfig = cfg.run
        self.train_cfg: TrainConfig = cfg.train
        export_nccl_env(
            self.run_cfg.nccl_async_error_handling,
            self.run_cfg.nccl_trace_buffer,
            Path(self.run_cfg.dir) / "nccl_trace",
        )
        self.rank, self.world_size = init_distributed(self.run_cfg.backend, self.run_cfg.start_timeout_s)
        self.device = pick_device(self.run_cfg.device)
        print(describe_rank(self.device), flush=True)
        self.run_dir = Path(self.run_cfg.dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.step = 0
        self.nonfinite_total = 0
        self._nonfinite_streak = 0
        self.engines: dict[str, Engine] = {}
        self.ema_source: nn.Module | None = None  # set by build(): the module the EMA averages
        self.ema: EMA | None = None
        self.loader: Any = None
        self.resumed_from: Path | None = None  # the checkpoint this invocation resumed from (never pruned)
        # Each rank gets its own stream of randomness, reproducible from the run seed.
        seed_everything(self.run_cfg.seed + 1000 * self.rank)
        self.lock = RunLock(self.run_dir)
        refused: UserError | None = None
        if is_main():
            try:
                self.lock.acquire()
            except UserError as e:
                refused = e
        if any_rank_true(refused is not None):  # every rank leaves, not only the one that read the lock
            raise refused or UserError(f"run dir {self.run_dir} is in use by another job (see rank 0)")
        if is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, self.run_dir / "config.yaml")
            with open(self.run_dir / "ds_config.json", "w") as f:
                json.dump(deepspeed_config(self.train_cfg, self.world_size), f, indent=2)
        barrier()
        self.logger: Logger = make_logger(self.run_dir / "tb", is_main())

    # ---- what a stage provides -------------------------------------------------------------------
    @abstractmethod
    def build(self) -> None:
        """Build models, ``self.engines`` (the first one's client state is saved) and ``self.ema_source``.

        Runs under the run seed shared by every rank, so all ranks start from the same weights.
        """

    @abstractmethod
    def build_loader(self, state: dict[str, Any] | None) -> Any:
        """An iterable of batches with ``state_dict()``, resumed from ``state``."""

    @abstractmethod
    def updates(self) -> list[Update]:
        """The stage's step functions, in the order the loop applies them to each micro-batch."""

    def batch_size(self, batch: Any) -> int:
        """Samples in a batch (for throughput)."""
        return int(next(iter(batch.values())).shape[0]) if isinstance(batch, dict) else len(batch)

    def media(self, step: int) -> None:
        """Videos/metrics for TensorBoard every ``run.media_every`` steps (rank 0 logs them)."""

    def eval_every(self) -> int:
        """Steps between evaluations (0 = none); every rank calls :meth:`evaluate` at those steps."""
        return 0

    def evaluate(self, step: int) -> None:
        """Metrics of the current weights, logged to TensorBoard (every rank takes part)."""

    def flops_per_step(self, batch: Any) -> float:
        """FLOPs of one optimiser step on this rank, for MFU (0 = not measured)."""
        return 0.0

    def finish(self) -> None:
        """Work after the last step (exports)."""

    def on_checkpoint(self, directory: Path | None) -> None:
        """Exports a checkpoint promises, written into ``directory`` before it is marked COMPLETE (every rank)."""

    def exports_missing(self, directory: Path) -> bool:
        """True when ``directory`` lacks an export :meth:`on_checkpoint` writes (a re-run repairs it)."""
        return False

    # ---- shared machinery ------------------------------------------------------------------------
    def micro_step(self, batch: Any) -> dict[str, float] | None:
        """Every update on one micro-batch; None when a loss was non-finite on some rank (step skipped)."""
        return run_updates(self._updates, self.engines, batch, self.nonfinite)

    def ema_weights(self) -> dict[str, torch.Tensor]:
        """EMA weights when EMA is on, else the live weights (every rank must call it: ZeRO-3 gathers)."""
        if self.ema is not None:
            return self.ema.state_dict()
        return self.engines[next(iter(self.engines))].full_state_dict()

    def nonfinite(self, loss: torch.Tensor) -> bool:
        """True (on every rank) when the loss is NaN/Inf on any rank; counts and enforces the limit."""
        bad = any_rank_true(
            not bool(torch.isfinite(loss.detach()).all()), self.device if self.device.type == "cuda" else None
        )
        if not bad:
            self._nonfinite_streak = 0
            return False
        self.nonfinite_total += 1
        self._nonfinite_streak += 1
        print0(
            f"step {self.step}: non-finite loss, step skipped on every rank ({self._nonfinite_streak} in a row)"
        )
        if self._nonfinite_streak >= self.run_cfg.max_nonfinite:
            raise NonFiniteLossError(
                f"{self._nonfinite_streak} non-finite losses in a row at step {self.step}: lower train.optim.lr, "
                "raise train.grad_clip, or use precision=bf16/fp32 instead of fp16; the last good checkpoint "
                f"is in {self.ckpt_dir}"
            )
        return True

    def save(self, loader_state: dict[str, Any] | None = None) -> None:
        """Checkpoint every engine plus step, loader state (default: the loader's now), RNG, EMA and config."""
        if loader_state is None:
            loader_state = self.loader.state_dict() if self.loader is not None else {}
        client = {"step": self.step, "nonfinite_total": self.nonfinite_total, "loader": loader_state}
        client["config"] = redact(to_dict(self.cfg))
        if self.ema is not None:
            client["ema"] = self.ema.state_dict()
        per_rank = {"rng": rng_state(), "loader": client["loader"]}
        save_checkpoint(
            self.engines,
            self.ckpt_dir,
            self.step,
            client,
            per_rank,
            self.run_cfg.keep_last,
            exports=self.on_checkpoint,  # written before COMPLETE: a complete checkpoint has its exports
            keep=self.resumed_from,
        )

    def resume(self) -> dict[str, Any] | None:
        """Load the latest complete checkpoint if there is one; return the loader state to resume."""
        loaded = load_checkpoint(self.engines, self.ckpt_dir)
        if loaded is None:
            if (self.ckpt_dir / LATEST).exists() and not self.run_cfg.restart:
                # a save completed once, and now none is complete: never restart over that silently
                raise UserError(
                    f"{self.ckpt_dir} holds checkpoints but none is complete (markers deleted or every save "
                    "interrupted?); set run.restart=true to train from step 0 anyway, or point run.dir elsewhere"
                )
            if any_checkpoint(self.ckpt_dir):
                print0(
                    f"note: no save in {self.ckpt_dir} ever completed (the first was interrupted); starting at 0"
                )
            return None
        self.resumed_from, client, per_rank = loaded
        self.step = int(client["step"])
        self.nonfinite_total = int(client.get("nonfinite_total", 0))
        if self.ema is not None and client.get("ema"):
            self.ema.load_state_dict(client["ema"])
        if "rng" in per_rank:
            set_rng_state(per_rank["rng"])  # a rank new to the run keeps the fresh seed it started with
        loader = per_rank.get("loader") or client.get("loader")
        if loader and per_rank.get("loader_peers"):
            loader = {**loader, "peers": per_rank["loader_peers"]}  # a new layout re-splits the epoch
        return loader

    def _batches(self) -> Iterator[Any]:
        while True:
            yield from self.loader

    def fit(self) -> Path:
        """Train to ``train.max_steps`` (resuming if a checkpoint exists); return the run dir."""
        try:
            return self._fit()
        except StorageUnreachable as lost:  # the loaders spent their retries: save, stop, resume later
            stop_on_lost_store(self, lost)
        finally:
            if is_main():
                self.lock.release()

    def _fit(self) -> Path:
        torch.manual_seed(self.run_cfg.seed)  # identical initial weights on every rank
        self.build()
        self._updates = self.updates()
        if self.train_cfg.ema_decay > 0 and self.ema_source is not None:
            self.ema = EMA(self.ema_source, self.train_cfg.ema_decay, holder=is_main())
        torch.manual_seed(self.run_cfg.seed + 1000 * self.rank + 1)  # back to this rank's own stream
        loader_state = self.resume()
        if self.step > 0:  # steps a killed run logged past this checkpoint are redone: drop their old points
            self.logger.close()
            self.logger = make_logger(self.run_dir / "tb", is_main(), purge_step=self.step + 1)
        self.loader = self.build_loader(loader_state)
        max_steps = self.train_cfg.max_steps
        if self.step >= max_steps:
            print0(f"{self.run_dir} already finished at step {self.step}")
            if self.resumed_from is not None and self.exports_missing(self.resumed_from):
                print0(
                    f"repairing the exports of {self.resumed_from} (an earlier run stopped before writing them)"
                )
                self.on_checkpoint(self.resumed_from)
            self.finish()
            return self.run_dir
        if self.step == 0 and is_main():
            self.logger.text("config", "```\n" + json.dumps(redact(to_dict(self.cfg)), indent=2) + "\n```", 0)
        print0(
            f"[{self.stage}] {self.world_size} rank(s) on {self.device}, steps {self.step}->{max_steps}, run dir {self.run_dir}"
        )
        batches = self._batches()
        timer = StepTimer()
        stop_at = (
            max_steps
            if self.run_cfg.stop_after is None
            else min(max_steps, self.step + self.run_cfg.stop_after)
        )
        progress = Progress(self.stage, max_steps, self.step, is_main(), self.run_cfg.progress)
        throughput = Throughput()
        last_logs: dict[str, float] = {}
        with StopOnSignal(interrupt=self.run_cfg.save_on_interrupt) as stop:
            last_logs = self._train_until(stop_at, max_steps, batches, timer, progress, throughput, stop)
        progress.close()
        if stop.received is not None or self.step < max_steps:
            why = f"{stop.received} received" if stop.received is not None else "run.stop_after"
            print0(
                f"[{self.stage}] stopped at step {self.step} ({why}); saved {self.ckpt_dir / f'step_{self.step:08d}'}; "
                "re-run the same command to resume"
            )
            self.logger.close()
            barrier()
            return self.run_dir
        line = summary_line(self, throughput.summary(), last_logs)
        self.finish()
        print0(line)
        self.logger.close()
        barrier()
        return self.run_dir

    def _train_until(
        self,
        stop_at: int,
        max_steps: int,
        batches: Iterator[Any],
        timer: StepTimer,
        progress: Progress,
        throughput: Throughput,
        stop: StopOnSignal,
    ) -> dict[str, float]:
        """Optimiser steps up to ``stop_at``, or to the first step boundary after a stop signal (checkpointed)."""
        flops_step: float | None = None  # counted once, on the first batch of this invocation
        last_logs: dict[str, float] = {}
        first = True
        while self.step < stop_at:
            done = 0
            items = 0
            logs_acc: dict[str, float] = {}
            # every micro-batch of the step is read before any is computed: a store lost mid-step then
            # leaves nothing half-done (forward passes update buffers: codebook EMA, norm statistics)
            ready = [next_batch(self, batches, i, timer) for i in range(self.train_cfg.grad_accum)]
            while done < self.train_cfg.grad_accum:
                # a skipped (non-finite) micro-batch is replaced by the next one
                batch = ready.pop(0) if ready else next_batch(self, batches, done, timer)
                if flops_step is None:
                    flops_step = self.flops_per_step(batch)
                logs = self.micro_step(batch)
                if logs is None:
                    continue
                done += 1
                items += self.batch_size(batch)
                for k, v in logs.items():
                    logs_acc[k] = logs_acc.get(k, 0.0) + v / self.train_cfg.grad_accum
            self.step += 1
            timer.add_step(items)
            throughput.add(1, items * self.world_size)
            if self.ema is not None and self.step % self.train_cfg.ema_every == 0:
                self.ema.update(self.ema_source)  # type: ignore[arg-type]
            last_logs = logs_acc
            if self.step % self.run_cfg.log_every == 0 or self.step == max_steps:
                report_step(self, logs_acc, timer, flops_step, progress)
                timer.reset()
            progress.step()
            if self.run_cfg.media_every and self.step % self.run_cfg.media_every == 0:
                with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                    self.media(self.step)
            if self.eval_every() and self.step % self.eval_every() == 0:
                with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                    self.evaluate(self.step)
            stop.agree(max_over_ranks(stop.signum))
            stopping = stop.signum != 0
            if first:  # past start-up (JIT builds, first loads): from now on a dead peer ends the job soon
                set_collective_timeout(self.run_cfg.step_timeout_s)
                first = False
            if self.step % self.run_cfg.ckpt_every == 0 or self.step == stop_at or stopping:
                self.save()
            if stopping:
                break
        return last_logs
