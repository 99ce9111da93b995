"""Exponential moving average of weights, held on rank 0 in fp32 on CPU, under every ZeRO stage."""

from __future__ import annotations

import torch
from torch import nn

from vqvdm_scale.engine.deepspeed_engine import full_state_dict, gathered


class EMA:
    """ema <- decay * ema + (1 - decay) * param, for every floating-point parameter.

    Under ZeRO-3 the parameters are gathered a chunk at a time (every rank must call :meth:`update`);
    only rank 0 (``holder=True``) keeps the shadow copy, which is what checkpoints and sampling use.
    """

    def __init__(self, module: nn.Module, decay: float, holder: bool = True, chunk: int = 64) -> None:
        self.decay = decay
        self.holder = holder
        self.chunk = chunk
        self.shadow: dict[str, torch.Tensor] = full_state_dict(module, chunk) if holder else {}
        if not holder:
            full_state_dict(module, chunk)  # every rank takes part in the ZeRO-3 gathers

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """One EMA step from the module's current weights."""
        named = [(n, p) for n, p in module.named_parameters() if p.is_floating_point()]
        for i in range(0, len(named), self.chunk):
            part = named[i : i + self.chunk]
            with gathered([p for _, p in part]):
                if self.holder:
                    for name, p in part:
                        self.shadow[name].lerp_(p.detach().float().cpu(), 1.0 - self.decay)
        if self.holder:
            for name, b in module.named_buffers():
                self.shadow[name] = (
                    b.detach().float().cpu().clone() if b.is_floating_point() else b.detach().cpu().clone()
                )

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow weights (empty on non-holder ranks)."""
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore shadow weights saved by :meth:`state_dict`."""
        if self.holder and state:
            self.shadow = {k: v.clone() for k, v in state.items()}
