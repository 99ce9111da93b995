"""What the training loop needs from an engine, whatever runs underneath (DeepSpeed today).

The loop, the checkpoint code and the stages speak only this protocol, so DeepSpeed's own API stays
inside :mod:`vqvdm_scale.engine.deepspeed_engine`.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

import torch
from torch import nn


class Engine(Protocol):
    """A model wrapped with its optimiser, LR schedule, gradient clipping and (ZeRO) partitioning."""

    module: nn.Module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped module's forward."""
        ...

    def backward(self, loss: torch.Tensor) -> None:
        """Backward through ``loss`` (loss scaling and gradient accumulation included)."""
        ...

    def step(self) -> None:
        """Optimiser + LR schedule step at an accumulation boundary (a no-op in between)."""
        ...

    def lr(self) -> Optional[float]:
        """The current learning rate."""
        ...

    def grad_norm(self) -> Optional[float]:
        """The global gradient norm of the last optimiser step, when known."""
        ...

    def save(self, directory: str, tag: str, client_state: dict[str, Any]) -> None:
        """Write this engine's states (module, optimiser, schedule) under ``directory/tag``."""
        ...

    def load(self, directory: str, tag: str) -> dict[str, Any]:
        """Load what :meth:`save` wrote; return the client state saved with it."""
        ...

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The module's full fp32 CPU state dict on every rank (every rank must call it together)."""
        ...
