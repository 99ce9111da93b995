"""The FVD (I3D) and IS (C3D) networks load from the published file layouts, state dict or TorchScript.

The weights here are random (the published files are not fetched in tests), but the architecture and the
parameter names are exact: every key and shape of TATS' ``i3d_pretrained_400.pt`` and of the C3D layout
that ``data_prep/convert_c3d.py`` writes must load with ``strict=True``, and the expected names and shapes
of several modules are written out below from the published layouts, not read from our own modules.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vqvdm_scale.config import UserError
from vqvdm_scale.metrics.detectors import Detector, load_detector
from vqvdm_scale.models.detectors import C3D, I3D

# Names and shapes in TATS' i3d_pretrained_400.pt (pytorch-i3d's InceptionI3d): Unit3D = conv3d (+ bn).
I3D_PUBLISHED = {
    "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
    "Conv3d_1a_7x7.bn.running_mean": (64,),
    "Conv3d_2b_1x1.conv3d.weight": (64, 64, 1, 1, 1),
    "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
    "Mixed_3b.b0.conv3d.weight": (64, 192, 1, 1, 1),
    "Mixed_3b.b1b.bn.weight": (128,),
    "Mixed_3c.b2b.conv3d.weight": (96, 32, 3, 3, 3),
    "Mixed_4f.b3b.conv3d.weight": (128, 528, 1, 1, 1),
    "Mixed_5b.b0.bn.bias": (256,),
    "Mixed_5c.b1b.conv3d.weight": (384, 192, 3, 3, 3),
    "Mixed_5c.b3b.bn.running_var": (128,),
    "logits.conv3d.weight": (400, 1024, 1, 1, 1),
    "logits.conv3d.bias": (400,),
}
I3D_KEYS = 57 * 5 + 2  # 57 conv+BN units (3 stem + 9 blocks x 6) x (weight, 4 BN tensors) + the logits conv

# TGANv2's C3DVersion1UCF101 in the PyTorch C3D port's names (conv1a -> conv1, conv2a -> conv2) + mean.
C3D_PUBLISHED = {
    "conv1.weight": (64, 3, 3, 3, 3),
    "conv2.weight": (128, 64, 3, 3, 3),
    "conv3a.weight": (256, 128, 3, 3, 3),
    "conv3b.bias": (256,),
    "conv4a.weight": (512, 256, 3, 3, 3),
    "conv5b.weight": (512, 512, 3, 3, 3),
    "fc6.weight": (4096, 8192),
    "fc7.weight": (4096, 4096),
    "fc8.weight": (101, 4096),
    "fc8.bias": (101,),
    "mean": (3, 16, 112, 112),
}
C3D_KEYS = 11 * 2 + 1

# torch 2.10+ marks torch.jit deprecated; StyleGAN-V's published detectors are TorchScript all the same
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")


def randomised(sd: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Every tensor of ``sd`` refilled with seeded random values (BN scales and variances positive, weights
    scaled by their fan-in so activations stay finite); no ``num_batches_tracked``, as the published files."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in sd.items():
        if name.endswith("num_batches_tracked"):
            continue
        if name.endswith(("running_var", "bn.weight")):
            out[name] = torch.rand(t.shape, generator=g) + 0.5
        elif name == "mean":
            out[name] = torch.rand(t.shape, generator=g) * 40.0 + 80.0  # a BGR pixel mean on 0..256
        elif t.dim() > 1:
            out[name] = torch.randn(t.shape, generator=g) * math.sqrt(2.0 / t[0].numel())
        else:
            out[name] = torch.randn(t.shape, generator=g) * 0.1
    return out


def clips(b: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, 16, size, size), generator=g, dtype=torch.uint8)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_networks_have_the_published_parameter_names_and_shapes() -> None:
    i3d = {k: tuple(v.shape) for k, v in I3D().state_dict().items() if "num_batches_tracked" not in k}
    assert len(i3d) == I3D_KEYS
    assert {k: i3d.get(k) for k in I3D_PUBLISHED} == I3D_PUBLISHED
    assert "Mixed_3b.b0.conv3d.bias" not in i3d  # only the logits conv has a bias
    c3d = {k: tuple(v.shape) for k, v in C3D().state_dict().items()}
    assert len(c3d) == C3D_KEYS
    assert {k: c3d.get(k) for k in C3D_PUBLISHED} == C3D_PUBLISHED


@pytest.fixture(scope="module")
def i3d_case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A random-weight state dict saved as i3d_pretrained_400.pt, and the eager I3D's features of 2 clips."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("i3d")
    sd = randomised(I3D().state_dict(), seed=0)
    assert len(sd) == I3D_KEYS
    path = root / "i3d_pretrained_400.pt"
    torch.save(sd, path)
    eager = I3D().eval()
    eager.load_state_dict(sd, strict=True)
    x = clips(2, 64, seed=1)
    with torch.no_grad():
        features = eager(x, rescale=True, resize=True, return_features=True).double().numpy()
    return {"root": root, "sd": sd, "path": path, "eager": eager, "x": x, "features": features}


def test_i3d_state_dict_loads_and_gives_400_logits(i3d_case: dict[str, object]) -> None:
    """The TATS state dict (no num_batches_tracked) loads strictly; 64 px clips are resized to 224 inside."""
    path = i3d_case["path"]
    assert isinstance(path, Path)
    det = load_detector(str(path), "i3d")
    assert isinstance(det, Detector)
    assert det.form == "state_dict" and det.kind == "i3d" and not det.module.training
    assert det.sha256 == sha256_of(path)
    assert det.record() == {"file": str(path), "sha256": det.sha256, "form": "state_dict"}
    features = det(i3d_case["x"])  # type: ignore[arg-type]
    assert features.shape == (2, 400) and features.dtype == np.float64
    assert np.isfinite(features).all() and features.std() > 0
    assert not np.allclose(features[0], features[1])  # two different clips, two different feature rows
    np.testing.assert_allclose(features, i3d_case["features"], rtol=1e-5, atol=1e-5)  # the file's weights


def test_i3d_torchscript_loads_and_matches_the_eager_module(i3d_case: dict[str, object]) -> None:
    eager = i3d_case["eager"]
    assert isinstance(eager, I3D)
    path = Path(str(i3d_case["root"])) / "i3d_torchscript.pt"
    torch.jit.save(torch.jit.script(eager), str(path))
    det = load_detector(str(path), "i3d")
    assert det.form == "torchscript" and det.sha256 == sha256_of(path)
    assert isinstance(det.module, torch.jit.ScriptModule)
    features = det(i3d_case["x"])  # type: ignore[arg-type]
    assert features.shape == (2, 400)
    np.testing.assert_allclose(features, i3d_case["features"], rtol=1e-5, atol=1e-5)


def test_i3d_state_dict_wrapped_or_with_module_prefix_loads_the_same_weights(
    i3d_case: dict[str, object], tmp_path: Path
) -> None:
    sd = i3d_case["sd"]
    assert isinstance(sd, dict)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    loaded = load_detector(str(path), "i3d").module.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())


@pytest.fixture(scope="module")
def c3d_case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A random-weight C3D state dict (with its ``mean`` buffer) as safetensors, and eager probabilities."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("c3d")
    sd = randomised(C3D().state_dict(), seed=2)
    assert len(sd) == C3D_KEYS and "mean" in sd
    path = root / "c3d_ucf101.safetensors"
    save_file(sd, str(path))
    eager = C3D().eval()
    eager.load_state_dict(sd, strict=True)
    x = clips(2, 64, seed=3)
    with torch.no_grad():
        probs = eager(x).double().numpy()
    return {"root": root, "path": path, "eager": eager, "x": x, "probs": probs}


def test_c3d_state_dict_loads_and_gives_101_probabilities(c3d_case: dict[str, object]) -> None:
    path = c3d_case["path"]
    assert isinstance(path, Path)
    det = load_detector(str(path), "c3d")
    assert det.form == "state_dict" and det.kind == "c3d" and det.sha256 == sha256_of(path)
    probs = det(c3d_case["x"])  # type: ignore[arg-type]
    assert probs.shape == (2, 101) and (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, c3d_case["probs"], rtol=1e-5, atol=1e-6)


def test_c3d_torchscript_loads_and_matches_the_eager_module(c3d_case: dict[str, object]) -> None:
    eager = c3d_case["eager"]
    assert isinstance(eager, C3D)
    path = Path(str(c3d_case["root"])) / "c3d_ucf101.pt"
    torch.jit.save(torch.jit.script(eager), str(path))
    det = load_detector(str(path), "c3d")
    assert det.form == "torchscript" and det.sha256 == sha256_of(path)
    probs = det(c3d_case["x"])  # type: ignore[arg-type]
    np.testing.assert_allclose(probs, c3d_case["probs"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("kind", "published"), [("i3d", "i3d_torchscript.pt"), ("c3d", "c3d_ucf101.pt")])
def test_a_missing_file_names_the_published_one_and_downloads_nothing(
    kind: str, published: str, tmp_path: Path
) -> None:
    missing = tmp_path / "weights.pt"
    with pytest.raises(UserError) as e:
        load_detector(str(missing), kind, flag="--detector")  # type: ignore[arg-type]
    text = str(e.value)
    assert text.startswith("--detector") and str(missing) in text
    assert published in text and "nothing is downloaded" in text
    assert "\n" not in text


def test_a_renamed_i3d_key_is_refused_naming_the_published_layout(
    i3d_case: dict[str, object], tmp_path: Path
) -> None:
    sd = dict(i3d_case["sd"])  # type: ignore[call-overload]
    sd["logits.conv3d.b"] = sd.pop("logits.conv3d.bias")
    path = tmp_path / "i3d_renamed.pt"
    torch.save(sd, path)
    with pytest.raises(UserError, match=r"published I3D layout.*i3d_pretrained_400\.pt") as e:
        load_detector(str(path), "i3d")
    assert "logits.conv3d" in str(e.value) and "\n" not in str(e.value)


def test_a_kinetics_600_i3d_is_refused_as_a_layout_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "i3d_600.pt"
    torch.save(I3D(num_classes=600).state_dict(), path)
    with pytest.raises(UserError, match="published I3D layout"):
        load_detector(str(path), "i3d")


def test_an_unconverted_tgan2_c3d_name_is_refused(tmp_path: Path) -> None:
    """TGANv2's own names (conv1a) are not our layout: the user is sent to data_prep/convert_c3d.py."""
    path = tmp_path / "c3d.safetensors"
    save_file({"conv1a.weight": torch.zeros(64, 3, 3, 3, 3)}, str(path))
    with pytest.raises(UserError, match=r"published C3D layout.*convert_c3d\.py"):
        load_detector(str(path), "c3d")


@pytest.mark.parametrize(
    ("name", "data"),
    [("garbage.pt", b"not a checkpoint " * 8), ("garbage.safetensors", b"\xff" * 64)],
)
def test_a_file_that_is_no_checkpoint_is_a_user_error(name: str, data: bytes, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(UserError, match="not a TorchScript module or state dict"):
        load_detector(str(path), "i3d")


def test_a_safetensors_file_is_recognised_by_its_content_not_its_name(
    i3d_case: dict[str, object], tmp_path: Path
) -> None:
    """Safetensors weights renamed to .pt still load (the header is sniffed, not the suffix)."""
    sd = i3d_case["sd"]
    assert isinstance(sd, dict)
    path = tmp_path / "i3d_weights.pt"
    save_file(sd, str(path))
    module = load_detector(str(path), "i3d").module
    assert torch.equal(module.state_dict()["logits.conv3d.weight"], sd["logits.conv3d.weight"])
