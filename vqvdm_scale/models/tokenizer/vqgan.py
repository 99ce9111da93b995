"""The stage-1 tokenizer network: 3D encoder -> vector quantizer -> 3D decoder (no losses, no discriminator)."""

from __future__ import annotations

from torch import Tensor, nn

from vqvdm_scale.models.tokenizer.config import TokenizerConfig
from vqvdm_scale.models.tokenizer.decoder import Decoder3d
from vqvdm_scale.models.tokenizer.encoder import Encoder3d
from vqvdm_scale.models.tokenizer.quantizer import QuantizerOutput, VectorQuantizer


class VQTokenizer(nn.Module):
    """3D VQGAN (Esser et al. 2021 extended to video as in TATS / VQ-VDM): video <-> discrete code grid.

    Input clips are ``[B, C, T, H, W]`` in [-1, 1]; latents are ``[B, D, t, h, w]`` with
    ``(t, h, w) = (T, H, W) / cfg.downsample``; code indices are ``[B, t, h, w]`` int64.
    """

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder3d(cfg)
        self.quantizer = VectorQuantizer(
            codebook_size=cfg.codebook_size,
            dim=cfg.latent_dim,
            beta=cfg.beta,
            use_ema=cfg.use_ema,
            ema_decay=cfg.ema_decay,
            ema_eps=cfg.ema_eps,
            dead_code_threshold=cfg.dead_code_threshold,
            l2_normalize=cfg.l2_normalize,
        )
        self.decoder = Decoder3d(cfg)

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(
                f"expected a video batch [B, {self.cfg.in_channels}, T, H, W], got shape {tuple(x.shape)}"
            )
        self.cfg.latent_shape(x.shape[2], x.shape[3], x.shape[4])

    def encode(self, x: Tensor) -> Tensor:
        """Continuous pre-quantization latent ``z_e`` ``[B, D, t, h, w]`` of clips ``x``."""
        self._check_input(x)
        return self.encoder(x)

    def quantize(self, z_e: Tensor) -> QuantizerOutput:
        """Nearest-code quantization of ``z_e`` (updates the EMA codebook in training mode)."""
        return self.quantizer(z_e)

    def decode(self, z_q: Tensor) -> Tensor:
        """Clips ``[B, C, T, H, W]`` from quantized latents ``[B, D, t, h, w]``."""
        if z_q.ndim != 5 or z_q.shape[1] != self.cfg.latent_dim:
            raise ValueError(f"expected latents [B, {self.cfg.latent_dim}, t, h, w], got {tuple(z_q.shape)}")
        # The codebook stays fp32 under half-precision casts; feed the decoder its own dtype.
        return self.decoder(z_q.to(self.decoder.conv_in.weight.dtype))

    def indices_to_latents(self, indices: Tensor) -> Tensor:
        """Quantized latents ``[B, D, t, h, w]`` for code indices ``[B, t, h, w]``."""
        return self.quantizer.lookup(indices)

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Clips from code indices ``[B, t, h, w]``."""
        return self.decode(self.indices_to_latents(indices))

    def forward(self, x: Tensor) -> tuple[Tensor, QuantizerOutput]:
        """Reconstruction and quantizer output for clips ``x``."""
        qout = self.quantize(self.encode(x))
        return self.decode(qout.z_q), qout

    @property
    def last_layer(self) -> Tensor:
        """Weight of the decoder's final conv, for the adaptive GAN weight (Esser et al. 2021, eq. 7)."""
        return self.decoder.conv_out.weight


__all__ = ["VQTokenizer"]
