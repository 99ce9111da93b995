"""Model functions for the samplers: plain conditional calls and classifier-free guidance.

A *model function* is ``model_fn(z_t [B,...], t [B] long) -> raw network output`` (eps or v), the only
thing samplers see. Guidance is applied to the raw output: eps and v are affine in each other for a
fixed z_t (eps = sqrt(1-abar) z_t + sqrt(abar) v), and the guidance weights sum to one, so combining
v-predictions gives exactly the v of the combined eps. No diffusion object is needed here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
from torch import Tensor

__all__ = ["ModelFn", "cfg_model_fn", "conditional_model_fn"]

ModelFn = Callable[[Tensor, Tensor], Tensor]
# The network's call signature: net(z_t, t, y=..., fps=..., context=..., context_mask=...) -> output.
Net = Callable[..., Tensor]


def conditional_model_fn(
    net: Net,
    y: Optional[Tensor] = None,
    fps: Optional[Tensor] = None,
    context: Optional[Tensor] = None,
    context_mask: Optional[Tensor] = None,
) -> ModelFn:
    """A model function calling ``net`` with fixed conditioning (no guidance)."""

    def model_fn(z_t: Tensor, t: Tensor) -> Tensor:
        return net(z_t, t, y=y, fps=fps, context=context, context_mask=context_mask)

    return model_fn


def _cat2(x: Optional[Tensor]) -> Optional[Tensor]:
    return None if x is None else torch.cat([x, x], dim=0)


def cfg_model_fn(
    net: Net,
    y: Tensor,
    fps: Optional[Tensor],
    w: float,
    null_class: int,
    context: Optional[Tensor] = None,
    context_mask: Optional[Tensor] = None,
) -> ModelFn:
    """Classifier-free guidance: eps_hat = w * (eps(z, c) - eps(z)) + eps(z) (VQ-VDM; Ho & Salimans 2022).

    The conditional and unconditional (label = ``null_class``) passes run as ONE forward on a doubled
    batch. w = 1 is the conditional model and w = 0 the unconditional one; those two skip the unused
    pass entirely. Context (if any) is given to both passes: guidance acts on the class only.
    """
    if y.ndim != 1:
        raise ValueError(f"y must be a [B] tensor of class indices, got shape {tuple(y.shape)}")
    y_null = torch.full_like(y, null_class)
    if w == 1.0:
        return conditional_model_fn(net, y, fps, context, context_mask)
    if w == 0.0:
        return conditional_model_fn(net, y_null, fps, context, context_mask)

    y2 = torch.cat([y, y_null], dim=0)
    fps2, context2, mask2 = _cat2(fps), _cat2(context), _cat2(context_mask)

    def model_fn(z_t: Tensor, t: Tensor) -> Tensor:
        out = net(
            torch.cat([z_t, z_t], dim=0),
            torch.cat([t, t], dim=0),
            y=y2,
            fps=fps2,
            context=context2,
            context_mask=mask2,
        )
        cond, uncond = out.chunk(2, dim=0)
        return uncond + w * (cond - uncond)

    return model_fn
