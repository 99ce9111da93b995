"""The VQGAN training objective: reconstruction + LPIPS + VQ + adaptive-weighted GAN + feature matching."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import Tensor, nn

from vqvdm_scale.config.core import ConfigError
from vqvdm_scale.losses.gan import adaptive_weight, d_loss, feature_matching_loss, g_loss
from vqvdm_scale.losses.perceptual import PerceptualLoss
from vqvdm_scale.losses.reconstruction import reconstruction_loss
from vqvdm_scale.models.tokenizer.discriminator import DiscOutput
from vqvdm_scale.models.tokenizer.quantizer import QuantizerOutput


@dataclass
class VQGANLossConfig:
    """Weights and switches of the VQGAN objective (Esser et al. 2021, eq. 4-7; TATS for video).

    Args:
        recon_kind: pixel loss, "l1" (TATS) or "mse" (VQ-VDM; configs/vqgan/base.yaml).
        recon_weight: weight of the pixel loss.
        perceptual_weight: weight of LPIPS; 0 turns it off (and needs no VGG weights).
        perceptual_frames: frames per clip LPIPS is computed on (random ones; all when >= the clip's
            frames: VQ-VDM's LPIPS sees every frame, base.yaml's 16).
        lpips_weights: path to torchvision's ``vgg16-397923af.pth`` (else the torch hub cache is tried).
        lpips_random_init: allow a random VGG16 trunk when no weights are found (smoke tests only).
        codebook_weight: weight of the quantizer's VQ loss (codebook + beta * commitment).
        gan_kind: "bce" (DCGAN non-saturating, VQ-VDM) or "hinge".
        gan_weight: weight of the generator's GAN term (times the adaptive weight when enabled).
        disc_start_step: step from which the GAN and feature-matching terms are on.
        feature_match_weight: weight of the feature-matching term; 0 turns it off.
        feature_match_kind: its distance, "l1" (TATS) or "squared" (VQ-VDM; base.yaml).
        adaptive_weight: scale the GAN term by eq. 7's gradient-norm ratio at the decoder's last layer.
        adaptive_weight_max: clamp of that ratio.
    """

    recon_kind: Literal["mse", "l1"] = "l1"
    recon_weight: float = 1.0
    perceptual_weight: float = 1.0
    perceptual_frames: int = 4
    lpips_weights: Optional[str] = None
    lpips_random_init: bool = False
    codebook_weight: float = 1.0
    gan_kind: Literal["bce", "hinge"] = "bce"
    gan_weight: float = 0.1
    disc_start_step: int = 10000
    feature_match_weight: float = 1.0
    feature_match_kind: Literal["l1", "squared"] = "l1"
    adaptive_weight: bool = True
    adaptive_weight_max: float = 1e4

    def __post_init__(self) -> None:
        for key in (
            "recon_weight",
            "perceptual_weight",
            "codebook_weight",
            "gan_weight",
            "feature_match_weight",
            "disc_start_step",
        ):
            if getattr(self, key) < 0:
                raise ConfigError(f"loss.{key} must be >= 0, got {getattr(self, key)}")
        if self.feature_match_kind not in ("l1", "squared"):
            raise ConfigError(
                f"loss.feature_match_kind must be 'l1' or 'squared', got {self.feature_match_kind!r}"
            )
        if self.perceptual_frames < 1:
            raise ConfigError(f"loss.perceptual_frames must be >= 1, got {self.perceptual_frames}")
        if self.adaptive_weight_max <= 0:
            raise ConfigError(f"loss.adaptive_weight_max must be > 0, got {self.adaptive_weight_max}")

    @property
    def uses_gan(self) -> bool:
        """Whether the generator has any discriminator-based term."""
        return self.gan_weight > 0 or self.feature_match_weight > 0


def _as_floats(terms: dict[str, Tensor]) -> dict[str, float]:
    """Detach all log terms and move them to the host in one transfer (one sync instead of one per term)."""
    keys = list(terms)
    values = torch.stack([terms[k].detach().float().reshape(()) for k in keys]).cpu().tolist()
    return dict(zip(keys, values, strict=True))


class VQGANLoss(nn.Module):
    """Generator and discriminator objectives of the VQGAN; holds the frozen LPIPS net, nothing trainable.

    The discriminators are passed in (a :class:`Discriminators` module or the DeepSpeed engine wrapping
    it) so the trainer owns them and their optimizer.
    """

    def __init__(self, cfg: VQGANLossConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.perceptual: Optional[PerceptualLoss] = None
        if cfg.perceptual_weight > 0:
            self.perceptual = PerceptualLoss(cfg.perceptual_frames, cfg.lpips_weights, cfg.lpips_random_init)

    def gan_active(self, step: int) -> bool:
        """Whether the adversarial terms are on at ``step``."""
        return self.cfg.uses_gan and step >= self.cfg.disc_start_step

    def generator_loss(
        self,
        x: Tensor,
        x_rec: Tensor,
        qout: QuantizerOutput,
        disc: nn.Module,
        step: int,
        last_layer: Optional[Tensor] = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Tokenizer loss ``nll + codebook_weight * vq + lambda * gan_weight * g + fm_weight * fm``.

        ``nll = recon_weight * recon + perceptual_weight * lpips``; ``lambda`` is eq. 7's adaptive
        weight when enabled (needs ``last_layer``), else 1. The discriminator's parameters receive
        gradients from this loss too: the trainer should freeze them (``requires_grad_(False)``) for the
        generator step, or those gradients would leak into the discriminator engine's buffers.
        """
        cfg = self.cfg
        zero = x.new_zeros((), dtype=torch.float32)
        recon = reconstruction_loss(x, x_rec, cfg.recon_kind)
        perceptual = self.perceptual(x, x_rec) if self.perceptual is not None else zero
        nll = cfg.recon_weight * recon + cfg.perceptual_weight * perceptual
        vq = qout.loss.float()
        total = nll + cfg.codebook_weight * vq
        g_term, fm_term, d_weight = zero, zero, zero
        logits_fake = zero
        if self.gan_active(step):
            outs: dict[str, DiscOutput] = disc(x_rec, x if cfg.feature_match_weight > 0 else None)
            g_term = torch.stack([g_loss(o.logits_fake, cfg.gan_kind) for o in outs.values()]).sum()
            logits_fake = torch.stack([o.logits_fake.detach().float().mean() for o in outs.values()]).mean()
            if cfg.feature_match_weight > 0:
                fm_term = torch.stack(
                    [
                        feature_matching_loss(o.feats_real or [], o.feats_fake, cfg.feature_match_kind)
                        for o in outs.values()
                    ]
                ).sum()
            if cfg.gan_weight > 0:
                if cfg.adaptive_weight and last_layer is not None:
                    d_weight = adaptive_weight(nll, g_term, last_layer, cfg.adaptive_weight_max)
                else:
                    d_weight = torch.ones((), device=x.device)
            total = total + d_weight * cfg.gan_weight * g_term + cfg.feature_match_weight * fm_term
        logs = _as_floats(
            {
                "loss": total,
                "recon": recon,
                "perceptual": perceptual,
                "nll": nll,
                "vq": vq,
                "commitment": qout.commitment,
                "g_gan": g_term,
                "feat_match": fm_term,
                "d_weight": d_weight,
                "logits_fake_g": logits_fake,
                "perplexity": qout.perplexity,
                "usage": qout.usage,
            }
        )
        return total, logs

    def discriminator_loss(
        self, x: Tensor, x_rec: Tensor, disc: nn.Module, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        """Discriminator loss on real ``x`` and detached ``x_rec``, summed over the 3D and 2D nets.

        Before ``disc_start_step`` the discriminators still run and the loss is the same graph times 0,
        so every parameter gets a (zero) gradient and DeepSpeed's backward/step work unchanged under any
        ZeRO stage (a ``0 * sum(params)`` shortcut would touch ZeRO-3's empty parameter placeholders).
        """
        outs: dict[str, DiscOutput] = disc(x_rec.detach(), x)
        scale = 1.0 if self.gan_active(step) else 0.0
        terms: dict[str, Tensor] = {}
        real_means, fake_means = [], []
        for name, o in outs.items():
            if o.logits_real is None:
                raise ValueError("the discriminators returned no real logits; pass real clips to them")
            terms[f"d_loss_{name}"] = d_loss(o.logits_real, o.logits_fake, self.cfg.gan_kind) * scale
            real_means.append(o.logits_real.detach().float().mean())
            fake_means.append(o.logits_fake.detach().float().mean())
        loss = torch.stack(list(terms.values())).sum()
        terms["d_loss"] = loss
        terms["logits_real"] = torch.stack(real_means).mean()
        terms["logits_fake"] = torch.stack(fake_means).mean()
        return loss, _as_floats(terms)


__all__ = ["VQGANLoss", "VQGANLossConfig"]
