"""Inflated Inception-V1 (I3D, Carreira & Zisserman 2017), the FVD feature network.

The module and parameter names follow the PyTorch port that TATS and pytorch-i3d publish weights for
(``i3d_pretrained_400.pt``: ``Conv3d_1a_7x7.conv3d.weight``, ``Mixed_3b.b1b.bn.running_mean``, ...,
``logits.conv3d.bias``), so those state dicts load with ``strict=True``. Convolutions and max pools
pad the TensorFlow "SAME" way, as the original model does. The network is TorchScript-compatible.

:meth:`I3D.forward` takes the detector call of StyleGAN-V's ``i3d_torchscript.pt``
(``uint8``-range ``[B, 3, T, H, W]`` with ``rescale``/``resize``/``return_features``), so one caller
drives either file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["I3D"]


def _same_pad(size: int, k: int, s: int) -> list[int]:
    """TF "SAME" padding (before, after) of one dimension."""
    if size % s == 0:
        total = max(k - s, 0)
    else:
        total = max(k - (size % s), 0)
    return [total // 2, total - total // 2]


def _pad3d(x: torch.Tensor, kernel: list[int], stride: list[int]) -> torch.Tensor:
    t = _same_pad(x.shape[2], kernel[0], stride[0])
    h = _same_pad(x.shape[3], kernel[1], stride[1])
    w = _same_pad(x.shape[4], kernel[2], stride[2])
    return F.pad(x, [w[0], w[1], h[0], h[1], t[0], t[1]])


BN_EPS = 1e-5  # TATS / DIGAN / cd-fvd evaluate i3d_pretrained_400.pt with eps 1e-5 (pytorch-i3d: 1e-3)


class Unit3D(nn.Module):
    """Conv3d (SAME padding) + BatchNorm + ReLU; the logits unit has a bias and neither."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 1, stride: int = 1, bn_relu: bool = True, bias: bool = False
    ) -> None:
        super().__init__()
        self.kernel = [kernel] * 3
        self.stride = [stride] * 3
        self.bn_relu = bn_relu
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride=stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=BN_EPS) if bn_relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad3d(x, self.kernel, self.stride))
        if self.bn_relu:
            x = F.relu(self.bn(x))
        return x


class MaxPoolSame(nn.Module):
    """Max pooling with TF "SAME" zero padding (inputs follow a ReLU, so zeros never win wrongly)."""

    def __init__(self, kernel: list[int], stride: list[int]) -> None:
        super().__init__()
        self.kernel = kernel
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad3d(x, self.kernel, self.stride), self.kernel, self.stride)


class Mixed(nn.Module):
    """Inception block: 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 | pool -> 1x1, concatenated on channels."""

    def __init__(self, cin: int, c: list[int]) -> None:
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a = Unit3D(cin, c[1])
        self.b1b = Unit3D(c[1], c[2], 3)
        self.b2a = Unit3D(cin, c[3])
        self.b2b = Unit3D(c[3], c[4], 3)
        self.b3a = MaxPoolSame([3, 3, 3], [1, 1, 1])
        self.b3b = Unit3D(cin, c[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1
        )


class I3D(nn.Module):
    """I3D over RGB clips; ``num_classes`` = 400 for Kinetics-400 (the FVD network).

    Args:
        num_classes: logits size.
        size: the frame size the network is evaluated at when ``resize=True`` (224 for Kinetics I3D).
    """

    def __init__(self, num_classes: int = 400, size: int = 224) -> None:
        super().__init__()
        self.size = size
        self.Conv3d_1a_7x7 = Unit3D(3, 64, 7, 2)
        self.MaxPool3d_2a_3x3 = MaxPoolSame([1, 3, 3], [1, 2, 2])
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, 3)
        self.MaxPool3d_3a_3x3 = MaxPoolSame([1, 3, 3], [1, 2, 2])
        self.Mixed_3b = Mixed(192, [64, 96, 128, 16, 32, 32])
        self.Mixed_3c = Mixed(256, [128, 128, 192, 32, 96, 64])
        self.MaxPool3d_4a_3x3 = MaxPoolSame([3, 3, 3], [2, 2, 2])
        self.Mixed_4b = Mixed(480, [192, 96, 208, 16, 48, 64])
        self.Mixed_4c = Mixed(512, [160, 112, 224, 24, 64, 64])
        self.Mixed_4d = Mixed(512, [128, 128, 256, 24, 64, 64])
        self.Mixed_4e = Mixed(512, [112, 144, 288, 32, 64, 64])
        self.Mixed_4f = Mixed(528, [256, 160, 320, 32, 128, 128])
        self.MaxPool3d_5a_2x2 = MaxPoolSame([2, 2, 2], [2, 2, 2])
        self.Mixed_5b = Mixed(832, [256, 160, 320, 32, 128, 128])
        self.Mixed_5c = Mixed(832, [384, 192, 384, 48, 128, 128])
        self.logits = Unit3D(1024, num_classes, bn_relu=False, bias=True)

    def logits_of(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K]`` of clips ``[B, 3, T, H, W]`` in [-1, 1], averaged over the remaining time steps."""
        x = self.MaxPool3d_2a_3x3(self.Conv3d_1a_7x7(x))
        x = self.MaxPool3d_3a_3x3(self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x)))
        x = self.MaxPool3d_4a_3x3(self.Mixed_3c(self.Mixed_3b(x)))
        x = self.Mixed_4f(self.Mixed_4e(self.Mixed_4d(self.Mixed_4c(self.Mixed_4b(x)))))
        x = self.Mixed_5c(self.Mixed_5b(self.MaxPool3d_5a_2x2(x)))
        # the original 2x7x7 average pool (stride 1) at 224 px, taken here as spatial mean + time windows
        t = min(2, x.shape[2])
        x = F.avg_pool3d(x, [t, x.shape[3], x.shape[4]], stride=1)
        return self.logits(x).mean(dim=[2, 3, 4])

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> torch.Tensor:
        """StyleGAN-V's detector call: ``rescale`` maps [0, 255] to [-1, 1]; ``resize`` makes frames
        ``size`` x ``size`` (bilinear); ``return_features`` gives the logits, else their softmax."""
        x = x.float()
        if rescale:
            x = x / 127.5 - 1.0
        if resize:
            b, c, t = x.shape[0], x.shape[1], x.shape[2]
            frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, x.shape[3], x.shape[4])
            frames = F.interpolate(frames, size=[self.size, self.size], mode="bilinear", align_corners=False)
            x = frames.reshape(b, t, c, self.size, self.size).permute(0, 2, 1, 3, 4)
        logits = self.logits_of(x)
        return logits if return_features else logits.softmax(dim=1)
