"""Loading checkpoint files without running code from them.

DeepSpeed loads its states with ``torch.load(weights_only=False)``, in several places (the checkpoint
engine, the optimizers, the universal-checkpoint loaders), so a crafted checkpoint folder runs code at
resume. :func:`weights_only_loads` forces every ``torch.load`` inside it to ``weights_only=True``
(``TORCH_FORCE_WEIGHTS_ONLY_LOAD``) and allows exactly the few non-tensor types DeepSpeed stores; any other
object in a file is refused with a one-line error naming the file, and nothing in it is executed.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
from collections.abc import Iterator
from typing import Any

import torch

from vqvdm_scale.config import UserError

# What DeepSpeed 0.19 writes besides tensors and plain containers, found by loading every file of fp32/bf16
# runs under ZeRO 0-3 and of their universal conversions with weights_only=True (tests/integration/
# test_safe_resume.py repeats that check).
ALLOWED = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


def allowed_types() -> list[Any]:
    """The allowlisted classes (imported lazily: deepspeed is heavy)."""
    out = []
    for name in ALLOWED:
        module, _, attr = name.rpartition(".")
        with contextlib.suppress(ImportError, AttributeError):
            out.append(getattr(importlib.import_module(module), attr))
    return out


@contextlib.contextmanager
def weights_only_loads(what: str) -> Iterator[None]:
    """Every ``torch.load`` inside is ``weights_only=True`` with :data:`ALLOWED`; a refused file is a UserError."""
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(allowed_types()):
            yield
    except pickle.UnpicklingError as e:
        first = " ".join(str(e).split())[:300]
        raise UserError(
            f"{what} holds an object that is not plain tensor data, so it was not loaded (loading could run "
            f"code from it): {first}; resume only from checkpoints you wrote, or delete this one to fall back "
            "to an older checkpoint"
        ) from None
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def safe_env() -> dict[str, str]:
    """The environment for a subprocess that loads checkpoints (the universal conversion)."""
    return {**os.environ, "TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1"}
