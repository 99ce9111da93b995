"""Training objectives: reconstruction, LPIPS perceptual, GAN terms, and the combined VQGAN loss."""

from vqvdm_scale.losses.gan import adaptive_weight, d_loss, feature_matching_loss, g_loss
from vqvdm_scale.losses.perceptual import LPIPSWeightsNotFound, PerceptualLoss
from vqvdm_scale.losses.reconstruction import reconstruction_loss
from vqvdm_scale.losses.vqgan_loss import VQGANLoss, VQGANLossConfig

__all__ = [
    "LPIPSWeightsNotFound",
    "PerceptualLoss",
    "VQGANLoss",
    "VQGANLossConfig",
    "adaptive_weight",
    "d_loss",
    "feature_matching_loss",
    "g_loss",
    "reconstruction_loss",
]
