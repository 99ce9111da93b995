"""The one place DeepSpeed is touched: its JSON config, ``deepspeed.initialize`` and ZeRO-3 gathers.

Models stay plain ``nn.Module``s; :func:`build_engine` wraps one in a :class:`DeepSpeedEngine`, which
implements :class:`~vqvdm_scale.engine.protocol.Engine` (forward, backward, step, save/load), the only
engine API the loop and the stages see. Optimiser (torch AdamW) and LR schedule (linear warm-up then
cosine) are built here too, so the DeepSpeed JSON only carries what DeepSpeed itself owns.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from vqvdm_scale.config import UserError
from vqvdm_scale.engine.config import OptimConfig, TrainConfig
from vqvdm_scale.engine.env import any_rank_true, get_local_rank, get_world_size, is_main, print0
from vqvdm_scale.engine.extensions import prepare_extensions
from vqvdm_scale.engine.universal import UNIVERSAL_SUFFIX, saved_world_size, saved_zero3, to_universal


def deepspeed_config(train: TrainConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON generated from the config tree (written beside the run as ds_config.json)."""
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.micro_batch_size * train.grad_accum * world_size,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": {"stage": train.zero_stage},
        # Our optimiser is torch.optim.AdamW, which ZeRO handles but does not list as "tested".
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if train.zero_stage >= 2:
        cfg["zero_optimization"].update({"overlap_comm": False, "contiguous_gradients": True})
    if train.zero_stage == 3:
        # Gather small params eagerly; keep modest buckets so tiny CPU runs stay light.
        cfg["zero_optimization"].update(
            {"stage3_param_persistence_threshold": 0, "stage3_gather_16bit_weights_on_model_save": True}
        )
    if train.precision == "bf16":
        cfg["bf16"] = {"enabled": True}
    elif train.precision == "fp16":
        cfg["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 500}
    return cfg


def warmup_cosine(optim: OptimConfig, max_steps: int) -> Any:
    """LR multiplier: linear warm-up to 1, then cosine down to ``min_lr_ratio``."""

    def fn(step: int) -> float:
        if optim.warmup_steps > 0 and step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        span = max(1, max_steps - optim.warmup_steps)
        progress = min(1.0, (step - optim.warmup_steps) / span)
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return fn


class DeepSpeedEngine:
    """:class:`~vqvdm_scale.engine.protocol.Engine` over a ``deepspeed.DeepSpeedEngine``."""

    def __init__(self, engine: Any, module: nn.Module) -> None:
        self._engine = engine
        self.module = module

    def compile(self) -> None:
        """Compile the wrapped module in place (DeepSpeed's ``engine.compile``; Inductor, C++ on CPU).

        Compiling the module rather than the DeepSpeed engine keeps the engine's own Python (step counters,
        hooks, ZeRO-3's gathers) out of the graph; compiling the engine recompiled it at the second step.
        ``dynamic=False``: a new shape compiles a new static graph, never a symbolic one. Issue 15 saw
        bf16 + compile fail to build on CPU (Inductor C++) through the engine-level compile; this path
        builds and trains it (tests/integration/test_gpu_switches.py).
        """
        self._engine.compile(compile_kwargs={"dynamic": False})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._engine(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        self._engine.backward(loss)

    def step(self) -> None:
        self._engine.step()

    def lr(self) -> Optional[float]:
        lrs = self._engine.get_lr()
        return float(lrs[0]) if lrs else None

    def grad_norm(self) -> Optional[float]:
        norm = self._engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def save(self, directory: str, tag: str, client_state: dict[str, Any]) -> None:
        # DeepSpeed's own 'latest' is written by rank 0 without waiting for the others; we keep our own.
        self._engine.save_checkpoint(directory, tag=tag, client_state=client_state, save_latest=False)

    def load(self, directory: str, tag: str) -> dict[str, Any]:
        saved = saved_world_size(Path(directory) / tag)
        if saved is not None and saved != get_world_size():
            return self._load_universal(directory, tag, saved)
        path, client_state = self._engine.load_checkpoint(directory, tag=tag)
        if path is None:
            raise RuntimeError(
                f"checkpoint {directory}/{tag} could not be loaded; delete {directory} to fall back to an older one"
            )
        return dict(client_state or {})

    def _load_universal(self, directory: str, tag: str, saved: int) -> dict[str, Any]:
        """Load a ZeRO checkpoint of ``saved`` ranks on this world size, through DeepSpeed's universal format."""
        folder, stage = Path(directory) / tag, self._engine.zero_optimization_stage()
        if stage == 0 or saved_zero3(folder) != (stage == 3):
            # DeepSpeed's universal load restores into a ZeRO-1/2 engine from ZeRO-1/2 and ZeRO-3 from ZeRO-3
            was = "3" if saved_zero3(folder) else "1 or 2"
            raise UserError(
                f"{folder} holds the ZeRO-{was} optimizer partitions of {saved} ranks, which load on "
                f"{get_world_size()} ranks only into a ZeRO-{was} engine (this run: train.zero_stage={stage}); "
                f"set train.zero_stage to {was}, or resume on {saved} ranks"
            )
        failure: Optional[UserError] = None
        if is_main():
            try:
                to_universal(Path(directory) / tag)
            except UserError as e:
                failure = e
        if any_rank_true(failure is not None):
            raise failure or UserError(f"{directory}/{tag}: the universal conversion failed on rank 0")
        print0(
            f"{directory}/{tag}: written by {saved} ranks, loaded on {get_world_size()} (universal checkpoint)"
        )
        self._engine._config.load_universal_checkpoint = True
        try:
            path, client_state = self._engine.load_checkpoint(directory, tag=tag + UNIVERSAL_SUFFIX)
        except (AssertionError, AttributeError, KeyError, RuntimeError, TypeError, ValueError) as e:
            # DeepSpeed's own failures here are bare asserts and lookups: say which folder and what to do
            raise UserError(
                f"DeepSpeed could not load {folder}{UNIVERSAL_SUFFIX} on {get_world_size()} ranks "
                f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); resume on {saved} ranks with the "
                f"config it was saved with, or delete {folder}{UNIVERSAL_SUFFIX} to convert again"
            ) from e
        finally:
            self._engine._config.load_universal_checkpoint = False
        if path is None:
            raise UserError(
                f"{directory}/{tag}{UNIVERSAL_SUFFIX} could not be loaded; delete it to convert again"
            )
        return dict(client_state or {})

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return full_state_dict(self.module)


def build_engine(
    model: nn.Module,
    train: TrainConfig,
    optim: OptimConfig,
    world_size: int,
    params: Iterable[nn.Parameter] | None = None,
) -> DeepSpeedEngine:
    """Wrap ``model`` in a DeepSpeed engine with AdamW + warm-up/cosine, per the config tree."""
    prepare_extensions(announce=get_local_rank() == 0)  # before DeepSpeed builds or loads its ops
    import deepspeed

    opt = build_optimizer(params if params is not None else model.parameters(), train, optim)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(optim, train.max_steps))
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=opt, lr_scheduler=sched, config=deepspeed_config(train, world_size)
    )
    return DeepSpeedEngine(engine, model)


def build_optimizer(
    params: Iterable[nn.Parameter], train: TrainConfig, optim: OptimConfig
) -> torch.optim.Optimizer:
    """The optimiser the config names (AdamW; fused on CUDA outside fp32) over the trainable ``params``."""
    trainable = [p for p in params if p.requires_grad]
    fused = torch.cuda.is_available() and train.precision != "fp32"
    return torch.optim.AdamW(
        trainable,
        lr=optim.lr,
        betas=optim.betas,
        eps=optim.eps,
        weight_decay=optim.weight_decay,
        **({"fused": True} if fused else {}),
    )


def is_partitioned(p: torch.Tensor) -> bool:
    """True for a ZeRO-3 partitioned parameter (its full data lives across ranks)."""
    return hasattr(p, "ds_id")


@contextlib.contextmanager
def gathered(params: list[nn.Parameter]) -> Iterator[None]:
    """Inside the block every param holds its full data (a ZeRO-3 all-gather; a no-op otherwise).

    Every rank must enter it together.
    """
    if any(is_partitioned(p) for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            yield
    else:
        yield


def full_state_dict(module: nn.Module, chunk: int = 64) -> dict[str, torch.Tensor]:
    """A full fp32 CPU state dict on every rank, gathering ZeRO-3 params a chunk at a time."""
    out: dict[str, torch.Tensor] = {}
    named = list(module.named_parameters())
    for i in range(0, len(named), chunk):
        part = named[i : i + chunk]
        with gathered([p for _, p in part]):
            for name, p in part:
                out[name] = p.detach().float().cpu().clone()
    for name, b in module.named_buffers():
        out[name] = b.detach().float().cpu().clone() if b.is_floating_point() else b.detach().cpu().clone()
    return out
