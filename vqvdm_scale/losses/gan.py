"""GAN losses for the VQGAN: discriminator / generator objectives, feature matching, adaptive weight."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

GanKind = Literal["bce", "hinge"]
FeatureMatchKind = Literal["l1", "squared"]


def d_loss(real_logits: Tensor, fake_logits: Tensor, kind: GanKind = "bce") -> Tensor:
    """Discriminator loss, averaged over the real and fake halves (taming-transformers' 0.5 factor).

    ``"bce"``: the DCGAN binary cross-entropy used by VQ-VDM, ``softplus(-D(x)) + softplus(D(G(z)))``
    (Goodfellow et al. 2014, eq. 1); ``"hinge"``: ``relu(1 - D(x)) + relu(1 + D(G(z)))`` (Lim & Ye 2017).
    """
    real, fake = real_logits.float(), fake_logits.float()
    if kind == "bce":
        return 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
    raise ValueError(f"GAN loss kind must be 'bce' or 'hinge', got {kind!r}")


def g_loss(fake_logits: Tensor, kind: GanKind = "bce") -> Tensor:
    """Generator loss: non-saturating ``softplus(-D(G(z)))`` for ``"bce"``, ``-D(G(z))`` for ``"hinge"``."""
    fake = fake_logits.float()
    if kind == "bce":
        return F.softplus(-fake).mean()
    if kind == "hinge":
        return -fake.mean()
    raise ValueError(f"GAN loss kind must be 'bce' or 'hinge', got {kind!r}")


def feature_matching_loss(
    real_feats: list[Tensor], fake_feats: list[Tensor], kind: FeatureMatchKind = "l1"
) -> Tensor:
    """Mean over discriminator layers of the distance between fake and (detached) real features.

    ``"l1"``: the mean absolute difference (TATS); ``"squared"``: the mean squared difference, the
    feature-matching loss of Salimans et al. 2016 that VQ-VDM uses.
    """
    if len(real_feats) != len(fake_feats) or not real_feats:
        raise ValueError(
            f"need matching non-empty feature lists, got {len(real_feats)} and {len(fake_feats)}"
        )
    if kind not in ("l1", "squared"):
        raise ValueError(f"feature matching kind must be 'l1' or 'squared', got {kind!r}")
    dist = F.l1_loss if kind == "l1" else F.mse_loss
    terms = [dist(f.float(), r.detach().float()) for r, f in zip(real_feats, fake_feats, strict=True)]
    return torch.stack(terms).mean()


def adaptive_weight(nll_loss: Tensor, g_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """Esser et al. 2021, eq. 7: ``||grad_L nll|| / (||grad_L g|| + 1e-4)`` at the decoder's last layer L.

    Balances the GAN gradient against the reconstruction gradient. Returns a detached scalar in
    ``[0, max_weight]``. Falls back to 1.0 when the gradients cannot be taken: under DeepSpeed ZeRO-3
    the parameter is partitioned (an empty placeholder outside its forward), so autograd raises a
    RuntimeError ("not used in the graph") or gives an empty gradient; also when a loss has no graph.
    """
    one = torch.ones((), device=nll_loss.device)
    if not (nll_loss.requires_grad and g_loss.requires_grad and last_layer.requires_grad):
        return one
    if last_layer.numel() == 0:
        return one
    try:
        (nll_grad,) = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)
        (g_grad,) = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    except RuntimeError:
        return one
    if nll_grad.numel() == 0 or g_grad.numel() == 0:
        return one
    weight = nll_grad.float().norm() / (g_grad.float().norm() + 1e-4)
    weight = torch.clamp(weight, 0.0, max_weight).detach()
    # torch.where rather than an `if` so no host sync is forced on GPU.
    return torch.where(torch.isfinite(weight), weight, one)


__all__ = ["FeatureMatchKind", "GanKind", "adaptive_weight", "d_loss", "feature_matching_loss", "g_loss"]
