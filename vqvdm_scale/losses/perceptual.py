"""LPIPS perceptual loss (pip ``lpips``, VGG16 trunk) on randomly sampled frames of each clip."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from vqvdm_scale.models.tokenizer.discriminator import gather_frames, sample_frame_indices

VGG16_FILENAME = "vgg16-397923af.pth"


class LPIPSWeightsNotFound(FileNotFoundError, ValueError):
    """The VGG16 weights LPIPS needs are not on this machine (nothing is downloaded at run time)."""


def default_vgg16_path() -> Path:
    """Where torchvision would cache the VGG16 ImageNet weights: ``$TORCH_HOME/hub/checkpoints/``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME


def resolve_vgg16_weights(path: Optional[str], random_init: bool) -> Optional[Path]:
    """The VGG16 state-dict file to load, or None for a randomly initialised trunk (only if asked)."""
    if path:
        p = Path(os.path.expanduser(path))
        if not p.is_file():
            raise LPIPSWeightsNotFound(f"lpips_weights={path!r} does not exist or is not a file")
        return p
    cached = default_vgg16_path()
    if cached.is_file():
        return cached
    if random_init:
        return None
    raise LPIPSWeightsNotFound(
        "the LPIPS perceptual loss needs torchvision's ImageNet VGG16 weights "
        f"({VGG16_FILENAME}, from https://download.pytorch.org/models/{VGG16_FILENAME}) and nothing is "
        "downloaded at run time. Either put the file at "
        f"{cached} (torch hub cache; set TORCH_HOME to move it), or pass its path as lpips_weights=/path/to/"
        f"{VGG16_FILENAME}. To train without the perceptual term set perceptual_weight=0; for smoke tests "
        "only, lpips_random_init=true uses a randomly initialised VGG16 (the loss is then not perceptual)."
    )


def load_vgg16_into_lpips(lpips_model: nn.Module, path: Path) -> None:
    """Copy torchvision ``vgg16().features`` weights into LPIPS' ``net.slice{1..5}`` modules.

    LPIPS keeps torchvision's layer indices inside its slices (``net.slice2.5.weight`` is
    ``features.5.weight``), so the mapping is by index; classifier weights in the file are ignored.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a torchvision vgg16 state_dict, got {type(state).__name__}")
    trunk = lpips_model.net
    targets = trunk.state_dict()
    mapped: dict[str, Tensor] = {}
    for name in targets:
        # "slice3.10.weight" -> "features.10.weight"
        _, index, param = name.split(".")
        key = f"features.{index}.{param}"
        if key not in state:
            raise ValueError(
                f"{path}: missing {key!r}; is this a torchvision vgg16 (not vgg16_bn) state_dict?"
            )
        if state[key].shape != targets[name].shape:
            raise ValueError(
                f"{path}: {key} has shape {tuple(state[key].shape)}, expected {tuple(targets[name].shape)}"
            )
        mapped[name] = state[key]
    trunk.load_state_dict(mapped, strict=True)


class PerceptualLoss(nn.Module):
    """Frozen LPIPS-VGG distance (Zhang et al. 2018) averaged over ``num_frames`` random frames per clip.

    Args:
        num_frames: frames sampled per clip (the same frames of input and reconstruction); all if >= T.
        lpips_weights: path to a torchvision VGG16 state dict (``vgg16-397923af.pth``).
        lpips_random_init: use a randomly initialised VGG16 trunk when no weights file is found
            (tests and smoke runs only).
    """

    def __init__(
        self, num_frames: int = 4, lpips_weights: Optional[str] = None, lpips_random_init: bool = False
    ) -> None:
        super().__init__()
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.num_frames = num_frames
        weights = resolve_vgg16_weights(lpips_weights, lpips_random_init)
        import lpips  # deferred: importing it pulls in torchvision

        with warnings.catch_warnings():
            # lpips passes torchvision's deprecated `pretrained=` flag; pnet_rand=True makes it False, so
            # nothing is downloaded. pretrained=True loads the linear heads shipped inside the package.
            warnings.simplefilter("ignore", UserWarning)
            self.lpips = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
        self.weights_path = str(weights) if weights is not None else None
        if weights is not None:
            load_vgg16_into_lpips(self.lpips, weights)
        self.lpips.requires_grad_(False)
        self.lpips.eval()

    def train(self, mode: bool = True) -> PerceptualLoss:
        """Keep LPIPS in eval mode (its linear heads have dropout) whatever the parent module's mode."""
        super().train(mode)
        self.lpips.eval()
        return self

    def forward(self, x: Tensor, x_rec: Tensor) -> Tensor:
        """Mean LPIPS between sampled frames of clips ``x`` and ``x_rec`` ``[B, C, T, H, W]`` in [-1, 1]."""
        if x.shape != x_rec.shape or x.ndim != 5:
            raise ValueError(
                f"expected two clips [B, C, T, H, W] of one shape, got {tuple(x.shape)}, {tuple(x_rec.shape)}"
            )
        if x.shape[1] == 1:  # grayscale: LPIPS' VGG trunk wants RGB
            x, x_rec = x.expand(-1, 3, -1, -1, -1), x_rec.expand(-1, 3, -1, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(f"LPIPS needs 1- or 3-channel clips, got {x.shape[1]} channels")
        idx = sample_frame_indices(x.shape[0], x.shape[2], self.num_frames, x.device)
        dtype = next(self.lpips.parameters()).dtype
        real = gather_frames(x, idx).to(dtype)
        fake = gather_frames(x_rec, idx).to(dtype)
        return self.lpips(real, fake).float().mean()


__all__ = [
    "LPIPSWeightsNotFound",
    "PerceptualLoss",
    "default_vgg16_path",
    "load_vgg16_into_lpips",
    "resolve_vgg16_weights",
]
