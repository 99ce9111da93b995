"""The pretrained video networks that metrics are computed with: I3D (FVD, KVD) and C3D (IS)."""

from vqvdm_scale.models.detectors.c3d import C3D
from vqvdm_scale.models.detectors.i3d import I3D

__all__ = ["C3D", "I3D"]
