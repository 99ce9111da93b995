"""Load the FVD and IS networks from files the user gives (a local path or any fsspec URL), never the network.

Both are called as StyleGAN-V calls its TorchScript detectors, on uint8-range clips ``[B, 3, T, H, W]``:

- I3D: ``det(x, rescale=True, resize=True, return_features=True)`` -> the 400 Kinetics logits.
  Accepted files: StyleGAN-V's ``i3d_torchscript.pt`` (TorchScript), or the ``i3d_pretrained_400.pt``
  state dict of TATS / DIGAN / cd-fvd (loaded into :class:`~vqvdm_scale.models.detectors.I3D`).
- C3D: ``det(x)`` -> 101 UCF-101 class probabilities. Accepted files: StyleGAN-V's ``c3d_ucf101.pt``
  (TorchScript), or the safetensors that ``data_prep/convert_c3d.py`` writes from TGANv2's npz files.

Every load records the file's sha256, which results.json carries, so a number names the exact weights.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from safetensors import SafetensorError

from vqvdm_scale.config.core import UserError
from vqvdm_scale.formats.fs import open_url
from vqvdm_scale.models.detectors import C3D, I3D

__all__ = ["PUBLISHED", "Detector", "load_detector"]

Kind = Literal["i3d", "c3d"]

PUBLISHED: dict[Kind, str] = {
    "i3d": (
        "i3d_torchscript.pt, which StyleGAN-V and PVDM evaluate with "
        "(https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt), or TATS' i3d_pretrained_400.pt "
        "(https://github.com/songweige/TATS/raw/main/tats/fvd/i3d_pretrained_400.pt)"
    ),
    "c3d": (
        "c3d_ucf101.pt, which StyleGAN-V evaluates with (https://www.dropbox.com/s/jxpu7avzdc9n97q/c3d_ucf101.pt), "
        "or TGANv2's conv3d_deepnetA_ucf.npz + mean2.npz (github.com/rezoo/tgan2 release v1.0) converted "
        "with data_prep/convert_c3d.py"
    ),
}


@dataclass
class Detector:
    """A loaded detector: the module, what it is, and the sha256 of the file it came from."""

    kind: Kind
    module: torch.nn.Module
    sha256: str
    source: str
    form: str  # "torchscript" or "state_dict"
    device: torch.device

    @torch.no_grad()
    def __call__(self, clips: torch.Tensor) -> np.ndarray:
        """float64 ``[B, 400]`` I3D features or ``[B, 101]`` C3D probabilities of uint8 ``[B, 3, T, H, W]``."""
        x = clips.to(self.device)
        if self.kind == "i3d":
            out = self.module(x, rescale=True, resize=True, return_features=True)
        else:
            out = self.module(x)
        out = out.float().reshape(out.shape[0], -1)
        return out.cpu().numpy().astype(np.float64)

    def record(self) -> dict[str, Any]:
        return {"file": self.source, "sha256": self.sha256, "form": self.form}


def _read(url: str, kind: Kind, flag: str) -> bytes:
    try:
        with open_url(url, "rb") as f:
            return bytes(f.read())
    except (FileNotFoundError, IsADirectoryError) as e:
        raise UserError(
            f"{flag} {url!r}: no such file; nothing is downloaded at run time: get {PUBLISHED[kind]}, "
            f"and pass its path"
        ) from e
    except OSError as e:  # permissions, a broken mount, an object store error
        raise UserError(f"{flag} {url!r}: cannot read it ({e.__class__.__name__}: {e})") from e


def _is_torchscript(data: bytes) -> bool:
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return False
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return any(n.split("/", 1)[-1].startswith("code/") for n in z.namelist())


def _is_safetensors(data: bytes) -> bool:
    """A safetensors file: an 8-byte little-endian header size, then a JSON header within the file."""
    n = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    return len(data) >= 10 and 8 + n <= len(data) and data[8:9] == b"{"


# What reading a file that is no checkpoint raises (torch's weights-only unpickler gives KeyError on
# unknown opcodes, safetensors its own error).
_UNREADABLE = (
    RuntimeError,
    ValueError,
    EOFError,
    KeyError,
    IndexError,
    pickle.UnpicklingError,
    SafetensorError,
)


def _state_dict(data: bytes, url: str) -> dict[str, torch.Tensor]:
    if url.endswith(".safetensors") or _is_safetensors(data):
        from safetensors.torch import load as load_safetensors

        return load_safetensors(data)
    sd = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise UserError(f"{url} holds a {type(sd).__name__}, not a state dict or TorchScript module")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_detector(url: str, kind: Kind, device: torch.device | str = "cpu", flag: str = "") -> Detector:
    """Load the ``kind`` detector at ``url`` (TorchScript or a state dict of the published layout), eval mode."""
    flag = flag or f"--{kind}"
    data = _read(url, kind, flag)
    sha = hashlib.sha256(data).hexdigest()
    if _is_torchscript(data):
        try:
            module = torch.jit.load(io.BytesIO(data), map_location=device)
        except RuntimeError as e:
            raise UserError(
                f"{flag} {url}: a damaged TorchScript file ({str(e).splitlines()[0][:200]})"
            ) from e
        form = "torchscript"
    else:
        try:
            sd = _state_dict(data, url)
        except _UNREADABLE as e:  # not a torch/safetensors file at all
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UserError(f"{flag} {url}: not a TorchScript module or state dict ({first})") from e
        module = I3D() if kind == "i3d" else C3D()
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            # torch's first line only names the class; the missing/unexpected keys follow it
            what = " ".join(str(e).split()).split(":", 1)[-1].strip() or "layout mismatch"
            what = what if len(what) <= 300 else what[:300] + " ..."
            raise UserError(
                f"{flag} {url}: the state dict does not have the published {kind.upper()} layout ({what}); "
                f"expected {PUBLISHED[kind]}"
            ) from e
        form = "state_dict"
    return Detector(
        kind=kind,
        module=module.to(device).eval(),
        sha256=sha,
        source=url,
        form=form,
        device=torch.device(device),
    )
