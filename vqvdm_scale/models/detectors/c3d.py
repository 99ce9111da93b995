"""C3D (Tran et al. 2015) fine-tuned on UCF-101, the classifier behind the UCF-101 Inception Score.

This is TGANv2's ``C3DVersion1UCF101`` (pfnet-research/tgan2, the Chainer port of the Caffe
``c3d_ucf101_finetune_whole`` model), which StyleGAN-V's ``c3d_ucf101.pt`` reproduces as TorchScript:

- input: RGB clips ``[B, 3, 16, H, W]`` in the uint8 range 0..255;
- preprocessing: RGB -> BGR on the 0..256 scale (``128 * (x + 1)`` for x in [-1, 1]), every frame
  resized to 112 x 112 (bilinear, ``align_corners=True`` as Chainer's ``resize_images``), minus the
  per-voxel mean of ``mean2.npz`` cropped to ``[8:120, 8:120]`` (the ``mean`` buffer, BGR);
- network: eight 3x3x3 convolutions and max pools that round up (Chainer's ``cover_all``), so pool5
  maps 7 x 7 to 4 x 4 and fc6 sees 8,192 values; fc8 has 101 classes;
- output: softmax probabilities, as ``c3d_ucf101.pt`` returns them.

Parameter names follow the PyTorch C3D port (``conv1``, ``conv2``, ``conv3a`` ... ``fc8``) plus
``mean``; ``data_prep/convert_c3d.py`` writes TGANv2's ``conv3d_deepnetA_ucf.npz`` + ``mean2.npz`` into
this layout. The module is TorchScript-compatible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["C3D"]


def _conv(cin: int, cout: int) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, kernel_size=3, padding=1)


def _pool(x: torch.Tensor, k: list[int]) -> torch.Tensor:
    return F.max_pool3d(F.relu(x), k, k, ceil_mode=True)


class C3D(nn.Module):
    """C3D for 16-frame clips.

    Args:
        num_classes: fc8 size (101 for UCF-101).
    """

    def __init__(self, num_classes: int = 101) -> None:
        super().__init__()
        self.conv1 = _conv(3, 64)
        self.conv2 = _conv(64, 128)
        self.conv3a = _conv(128, 256)
        self.conv3b = _conv(256, 256)
        self.conv4a = _conv(256, 512)
        self.conv4b = _conv(512, 512)
        self.conv5a = _conv(512, 512)
        self.conv5b = _conv(512, 512)
        self.fc6 = nn.Linear(8192, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)
        self.register_buffer("mean", torch.zeros(3, 16, 112, 112))  # BGR, 0..256 scale

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """fc8 logits of preprocessed clips ``[B, 3, 16, 112, 112]`` (BGR, mean subtracted)."""
        x = _pool(self.conv1(x), [1, 2, 2])
        x = _pool(self.conv2(x), [2, 2, 2])
        x = _pool(self.conv3b(F.relu(self.conv3a(x))), [2, 2, 2])
        x = _pool(self.conv4b(F.relu(self.conv4a(x))), [2, 2, 2])
        x = _pool(self.conv5b(F.relu(self.conv5a(x))), [2, 2, 2])
        x = F.relu(self.fc6(x.flatten(1)))
        x = F.relu(self.fc7(x))
        return self.fc8(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[B, num_classes]`` of uint8-range RGB clips ``[B, 3, 16, H, W]``."""
        if x.dim() != 5 or x.shape[1] != 3 or x.shape[2] != 16:
            raise ValueError(f"C3D takes [B, 3, 16, H, W] clips, got {list(x.shape)}")
        b, h, w = x.shape[0], x.shape[3], x.shape[4]
        x = x.float().flip(1) * (256.0 / 255.0)  # BGR; 0..255 -> 128 * (x / 127.5 - 1 + 1)
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * 16, 3, h, w)
        if h != 112 or w != 112:
            frames = F.interpolate(frames, size=[112, 112], mode="bilinear", align_corners=True)
        x = frames.reshape(b, 16, 3, 112, 112).permute(0, 2, 1, 3, 4) - self.mean
        return self.logits(x).softmax(dim=1)
