"""The ``train:`` section: the optimiser, the DeepSpeed engine and the step budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch

from vqvdm_scale.config.core import ConfigError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to ``min_lr_ratio * lr``."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.weight_decay < 0 or self.eps <= 0:
            raise ConfigError(
                f"weight_decay must be >= 0 and eps > 0, got {self.weight_decay} and {self.eps}"
            )
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"betas must each be in [0, 1), got {list(self.betas)}")


@dataclass
class TrainConfig:
    """The DeepSpeed engine and the step budget; the DeepSpeed JSON is generated from this.

    Args:
        max_steps: optimiser steps to train for.
        micro_batch_size: clips per rank per micro-step (the loader's batch size).
        grad_accum: micro-steps per optimiser step.
        precision: "fp32", "bf16" (DeepSpeed casts the weights, the trainers the inputs; no autocast) or
            "fp16" (dynamic loss scale).
        zero_stage: DeepSpeed ZeRO stage 0-3.
        grad_clip: max global grad norm (0 = off).
        compile: torch.compile the networks in place (Inductor; its C++ kernels on CPU).
        channels_last: feed every convolution a channels_last_3d input (weights stay contiguous).
        ema_decay: EMA of the weights (0 = no EMA).
        ema_every: update EMA every N optimiser steps.
        flops_peak_tflops: peak used for MFU (989 = H100 SXM dense bf16).
    """

    max_steps: int = 1000
    micro_batch_size: int = 4
    grad_accum: int = 1
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    zero_stage: int = 2
    grad_clip: float = 1.0
    optim: OptimConfig = None  # type: ignore[assignment]
    disc_optim: Optional[OptimConfig] = None
    compile: bool = False
    channels_last: bool = False
    ema_decay: float = 0.0
    ema_every: int = 1
    flops_peak_tflops: float = 989.0

    def __post_init__(self) -> None:
        if self.optim is None:
            self.optim = OptimConfig()
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"train.zero_stage must be one of 0, 1, 2, 3, got {self.zero_stage}")
        if self.max_steps < 1 or self.micro_batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("train.max_steps, train.micro_batch_size and train.grad_accum must be >= 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.grad_clip < 0:
            raise ConfigError(f"train.grad_clip must be >= 0, got {self.grad_clip}")
        if self.ema_every < 1:
            raise ConfigError(
                f"train.ema_every must be >= 1 (EMA update every N steps), got {self.ema_every}"
            )
        if self.flops_peak_tflops <= 0:
            raise ConfigError(f"train.flops_peak_tflops must be > 0, got {self.flops_peak_tflops}")

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype of ``precision`` (what inputs are cast to for the engine)."""
        return DTYPES[self.precision]
