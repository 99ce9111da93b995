"""The stage-2 training loss: L_simple of DDPM (Ho et al. 2020, eq. 14) with condition dropout.

L_simple = E_{t, z0, eps} || eps - eps_theta(sqrt(abar_t) z0 + sqrt(1 - abar_t) eps, t) ||^2, with t uniform
in [0, T). With v-prediction the target is v instead of eps (Salimans & Ho 2022). Labels are replaced
by the null class with probability ``p_uncond`` (classifier-free guidance, Ho & Salimans 2022; VQ-VDM uses
0.5) and the context by zeros with probability ``lambda`` (PVDM). All randomness comes from torch's global
RNG, so restoring the RNG state on resume replays the same draws.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Optional

import torch
from torch import Tensor

from vqvdm_scale.diffusion.gaussian import GaussianDiffusion

__all__ = ["DiffusionLoss"]

# The network's call: net(z_t, t, y=..., fps=..., context=..., context_mask=...) -> output like z_t.
Net = Callable[..., Tensor]


class DiffusionLoss:
    """Callable computing the per-sample diffusion loss for a batch of clean latents.

    Args:
        diffusion: the forward process (schedule, prediction type, dropout probabilities in its config).
        num_classes: classes of the network; the null class is index ``num_classes`` (0 = unconditional).
    """

    def __init__(self, diffusion: GaussianDiffusion, num_classes: int) -> None:
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.diffusion = diffusion
        self.num_classes = num_classes
        self.p_uncond = diffusion.config.p_uncond
        self.context_drop_prob = diffusion.config.context_drop_prob
        self.context_mode = diffusion.config.context_mode

    def drop_labels(self, y: Tensor) -> Tensor:
        """Replace each label by the null class (``num_classes``) with probability ``p_uncond``."""
        drop = torch.rand(y.shape[0], device=y.device) < self.p_uncond
        return torch.where(drop, torch.full_like(y, self.num_classes), y)

    def drop_context(self, context: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Zero the context and its mask of each sample with probability lambda (PVDM's unconditional case)."""
        keep = (torch.rand(context.shape[0], device=context.device) >= self.context_drop_prob).to(
            context.dtype
        )
        keep = keep.reshape(-1, *([1] * (context.ndim - 1)))
        return context * keep, mask * keep.to(mask.dtype)

    def random_frame_mask(self, z0: Tensor) -> Tensor:
        """RaMViD-style mask ``[B,1,t,h,w]``: k ~ U{0..t-1} random frames per sample are known (mask 1)."""
        b, _, t, h, w = z0.shape
        k = torch.randint(0, t, (b,), device=z0.device)
        # A uniformly random subset of size k: the frames whose random rank is below k.
        ranks = torch.rand(b, t, device=z0.device).argsort(dim=1).argsort(dim=1)
        known = (ranks < k[:, None]).to(z0.dtype)
        return known[:, None, :, None, None].expand(b, 1, t, h, w).contiguous()

    def build_context(self, z0: Tensor, cond: Mapping[str, Any]) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """Context latents and mask the network sees for this batch, after context dropout."""
        if self.context_mode == "none":
            if cond.get("context") is not None:
                raise ValueError("cond has 'context' but diffusion.context_mode is 'none'; set context_mode")
            return None, None
        if self.context_mode == "previous_clip":
            context = cond.get("context")
            if context is None:
                raise ValueError(
                    "diffusion.context_mode='previous_clip' needs cond['context'] (previous clip latents)"
                )
            mask = cond.get("context_mask")
            if mask is None:
                b, _, t, h, w = context.shape
                mask = torch.ones(b, 1, t, h, w, dtype=context.dtype, device=context.device)
        else:  # random_mask: the known frames are the clip's own clean frames.
            context = z0
            mask = self.random_frame_mask(z0)
        return self.drop_context(context, mask)

    def __call__(self, net: Net, z0: Tensor, cond: Mapping[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """(mean loss, per-sample loss [B], timesteps [B]) for clean latents ``z0`` [B,C,t,h,w].

        ``cond``: "y" [B] long (required when num_classes > 0), "fps" [B] float (optional), and for
        context_mode="previous_clip" "context" [B,C,t,h,w] with optional "context_mask" [B,1,t,h,w].
        In "random_mask" mode the per-sample loss is the mean over the unknown positions (mask 0) only,
        unless ``diffusion.loss_on_known``: the known frames are in the input, so predicting them is copying.
        """
        d = self.diffusion
        b = z0.shape[0]
        t = d.sample_timesteps(b, z0.device)
        noise = torch.randn_like(z0)
        z_t = d.q_sample(z0, t, noise)

        kwargs: dict[str, Any] = {}
        y = cond.get("y")
        if self.num_classes > 0:
            if y is None:
                raise ValueError(
                    "the network is class-conditional (num_classes > 0): pass cond['y'] [B] long"
                )
            kwargs["y"] = self.drop_labels(y.long())
        if cond.get("fps") is not None:
            kwargs["fps"] = cond["fps"]
        context, mask = self.build_context(z0, cond)
        if context is not None:
            kwargs["context"] = context
            kwargs["context_mask"] = mask

        output = net(z_t, t, **kwargs)
        target = d.training_target(z0, t, noise)
        err = (output.float() - target.float()).pow(2)
        if self.context_mode == "random_mask" and mask is not None and not d.config.loss_on_known:
            weight = (1.0 - mask.float()).expand_as(err)  # unknown positions; a dropped context: all
            per_sample = (err * weight).flatten(1).sum(dim=1) / weight.flatten(1).sum(dim=1).clamp_min(1.0)
        else:
            per_sample = err.flatten(1).mean(dim=1)
        return per_sample.mean(), per_sample, t
