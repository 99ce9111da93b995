"""The ``train`` section's speed switches on a network: channels_last here, compile in the engine.

Each switch acts on every device, so CPU runs (and CI) exercise the same path as GPU runs:

* ``channels_last``: every convolution is fed its input in ``channels_last_3d`` (2-D ones:
  ``channels_last``) by a forward pre-hook, and returns that layout (cuDNN and oneDNN alike; on one CPU
  thread a 1x1x1 convolution returns contiguous, and the next one's hook converts again). Converting
  only the step's input is not enough: a ``cat`` with a 1-channel mask or an attention reshape falls back
  to contiguous. The weights stay contiguous: DeepSpeed views each parameter as bytes to broadcast it and
  flattens them into its buffers, which a channels-last weight breaks (``stride(-1) must be 1``) on every
  device.
* ``compile``: see :meth:`vqvdm_scale.engine.deepspeed_engine.DeepSpeedEngine.compile`.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn


def _layout(ndim: int) -> Optional[torch.memory_format]:
    return {5: torch.channels_last_3d, 4: torch.channels_last}.get(ndim)


def channels_last_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the channels-last layout of its rank (5-D: channels_last_3d); other ranks unchanged."""
    fmt = _layout(x.dim())
    return x if fmt is None else x.contiguous(memory_format=fmt)


def _channels_last_args(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (channels_last_input(args[0]), *args[1:])


def channels_last_convs(module: nn.Module) -> int:
    """Feed every 2-D/3-D convolution of ``module`` a channels-last input; return how many there are."""
    convs = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    for conv in convs:
        conv.register_forward_pre_hook(_channels_last_args)
    return len(convs)
