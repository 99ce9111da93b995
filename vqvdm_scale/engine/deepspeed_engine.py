"""The one place DeepSpeed is touched: its JSON config, ``deepspeed.initialize`` and ZeRO-3 gathers.

Models stay plain ``nn.Module``s; trainers get an engine from :func:`build_engine` and call
``engine.backward(loss)`` / ``engine.step()``. Optimiser (torch AdamW) and LR schedule (linear warm-up
then cosine) are built here too, so the DeepSpeed JSON only carries what DeepSpeed itself owns.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from vqvdm_scale.engine.config import OptimConfig, TrainConfig


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


def build_engine(
    model: nn.Module,
    train: TrainConfig,
    optim: OptimConfig,
    world_size: int,
    params: Iterable[nn.Parameter] | None = None,
) -> Any:
    """Wrap ``model`` in a DeepSpeed engine with AdamW + warm-up/cosine, per the config tree."""
    import deepspeed

    trainable = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    fused = torch.cuda.is_available() and train.precision != "fp32"
    opt = torch.optim.AdamW(
        trainable,
        lr=optim.lr,
        betas=optim.betas,
        eps=optim.eps,
        weight_decay=optim.weight_decay,
        **({"fused": True} if fused else {}),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(optim, train.max_steps))
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=opt, lr_scheduler=sched, config=deepspeed_config(train, world_size)
    )
    return engine


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
