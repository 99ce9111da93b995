"""vqvdm-scale: two-stage latent video diffusion at cluster scale."""

__version__ = "0.1.0"
