"""Stage-1 3D VQGAN tokenizer: config, presets, encoder/quantizer/decoder, discriminators (the export lives in vqvdm_scale.formats)."""

from vqvdm_scale.models.tokenizer.config import TokenizerConfig
from vqvdm_scale.models.tokenizer.discriminator import (
    DiscOutput,
    DiscriminatorConfig,
    Discriminators,
    FrameDiscriminator2d,
    VideoDiscriminator3d,
)
from vqvdm_scale.models.tokenizer.presets import TOKENIZER_PRESETS, tokenizer_preset
from vqvdm_scale.models.tokenizer.quantizer import QuantizerOutput, VectorQuantizer
from vqvdm_scale.models.tokenizer.vqgan import VQTokenizer

__all__ = [
    "TOKENIZER_PRESETS",
    "DiscOutput",
    "DiscriminatorConfig",
    "Discriminators",
    "FrameDiscriminator2d",
    "QuantizerOutput",
    "TokenizerConfig",
    "VQTokenizer",
    "VectorQuantizer",
    "VideoDiscriminator3d",
    "tokenizer_preset",
]
