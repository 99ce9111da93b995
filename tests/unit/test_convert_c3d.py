"""data_prep/convert_c3d.py turns TGANv2's Chainer C3D npz files into a C3D file that load_detector takes.

The npz files here have TGANv2's key names and the full UCF-101 C3D shapes (``conv1a/W`` ... ``fc8/b``,
written out below, float32) with random values; the mean is a ``[1, 3, 16, 128, 128]`` blob, so the
leading-axis squeeze and TGANv2's ``[8:120, 8:120]`` crop are both exercised.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from vqvdm_scale.config import ConfigError, UserError
from vqvdm_scale.metrics.detectors import load_detector
from vqvdm_scale.prep.convert_c3d import ConvertC3DConfig, tgan2_mean, tgan2_weights

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "data_prep" / "convert_c3d.py"

# C3DVersion1UCF101 (tgan2/models/c3d/c3d_ucf101.py): name, (out, in) and whether it is a 3x3x3 conv
TGAN2_LAYERS = [
    ("conv1a", 64, 3, True),
    ("conv2a", 128, 64, True),
    ("conv3a", 256, 128, True),
    ("conv3b", 256, 256, True),
    ("conv4a", 512, 256, True),
    ("conv4b", 512, 512, True),
    ("conv5a", 512, 512, True),
    ("conv5b", 512, 512, True),
    ("fc6", 4096, 512 * 4 * 4, False),
    ("fc7", 4096, 4096, False),
    ("fc8", 101, 4096, False),
]
OURS = {"conv1a": "conv1", "conv2a": "conv2"}  # every other layer keeps its name


def tgan2_arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, cout, cin, conv in TGAN2_LAYERS:
        shape = (cout, cin, 3, 3, 3) if conv else (cout, cin)
        out[f"{name}/W"] = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.01)
        out[f"{name}/b"] = rng.standard_normal(cout, dtype=np.float32)
    return out


@pytest.fixture(scope="module")
def tgan2_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """conv3d_deepnetA_ucf.npz (78 M float32 values, ~310 MB) and mean2.npz, as TGANv2 publishes them."""
    root = tmp_path_factory.mktemp("tgan2")
    arrays = tgan2_arrays(seed=0)
    np.savez(root / "conv3d_deepnetA_ucf.npz", **arrays)
    mean = np.random.default_rng(1).uniform(80, 120, (1, 3, 16, 128, 128)).astype(np.float32)
    np.savez(root / "mean2.npz", mean=mean)
    return {"root": root, "arrays": arrays, "mean": mean}


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_entry_script_converts_and_load_detector_takes_the_result(tgan2_files: dict[str, object]) -> None:
    root, arrays, mean = tgan2_files["root"], tgan2_files["arrays"], tgan2_files["mean"]
    assert isinstance(root, Path) and isinstance(arrays, dict) and isinstance(mean, np.ndarray)
    out = root / "out" / "c3d_ucf101.safetensors"
    p = run_script(
        "--npz",
        str(root / "conv3d_deepnetA_ucf.npz"),
        "--mean",
        str(root / "mean2.npz"),
        "--output",
        str(out),
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"wrote {out}: 23 tensors, 78,") and p.stdout.count("\n") == 1

    det = load_detector(str(out), "c3d")
    assert det.form == "state_dict"
    sd = det.module.state_dict()
    for key, value in arrays.items():
        layer, param = key.split("/")
        name = f"{OURS.get(layer, layer)}.{'weight' if param == 'W' else 'bias'}"
        assert torch.equal(sd[name], torch.from_numpy(value)), name
    assert torch.equal(sd["mean"], torch.from_numpy(mean[0, :, :, 8:120, 8:120].copy()))

    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["source_npz"] == "conv3d_deepnetA_ucf.npz" and len(meta["npz_sha256"]) == 64

    x = torch.randint(0, 256, (1, 3, 16, 40, 40), dtype=torch.uint8)
    probs = det(x)
    assert probs.shape == (1, 101) and probs.sum() == pytest.approx(1.0, abs=1e-5)


def test_a_prefix_before_the_layer_names_is_dropped(tgan2_files: dict[str, object], tmp_path: Path) -> None:
    """A chain saved around the C3D (``predictor/conv1a/W``) gives the same weights; other keys are listed."""
    arrays = tgan2_files["arrays"]
    assert isinstance(arrays, dict)
    prefixed = tmp_path / "prefixed.npz"
    np.savez(
        prefixed, **{f"predictor/{k}": v for k, v in arrays.items()}, **{"predictor/extra/x": np.zeros(2)}
    )
    weights = tgan2_weights(str(prefixed))
    assert weights.prefixes == ["predictor/"] and weights.ignored == ["predictor/extra/x"]
    assert weights.keys["predictor/conv1a/W"] == "conv1.weight" and len(weights.tensors) == 22
    for key, name in weights.keys.items():
        assert torch.equal(weights.tensors[name], torch.from_numpy(arrays[key.removeprefix("predictor/")]))


def test_a_missing_file_exits_2_with_one_line(tgan2_files: dict[str, object], tmp_path: Path) -> None:
    root = tgan2_files["root"]
    assert isinstance(root, Path)
    out = tmp_path / "c3d.safetensors"
    missing = tmp_path / "conv3d_deepnetA_ucf.npz"
    p = run_script("--npz", str(missing), "--mean", str(root / "mean2.npz"), "--output", str(out))
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and str(missing) in p.stderr and "--npz" in p.stderr
    assert not out.exists()


def test_a_wrong_shape_is_a_one_line_user_error(tmp_path: Path) -> None:
    """Sports-1M's C3D (487 classes) is not the UCF-101 one; the message names the key and both shapes."""
    path = tmp_path / "sports1m.npz"
    np.savez(
        path,
        **{"conv1a/W": np.zeros((64, 3, 3, 3, 3), np.float32), "fc8/W": np.zeros((487, 4096), np.float32)},
    )
    with pytest.raises(UserError) as e:
        tgan2_weights(str(path))
    text = str(e.value)
    assert "fc8/W" in text and "[487, 4096]" in text and "[101, 4096]" in text and "\n" not in text


def test_missing_weights_are_named_in_tgan2_terms(tmp_path: Path) -> None:
    path = tmp_path / "partial.npz"
    np.savez(path, **{"conv1a/W": np.zeros((64, 3, 3, 3, 3), np.float32)})
    with pytest.raises(UserError, match=r"no conv1a/b, conv2a/W, .*fc8/b \(it holds conv1a/W\)"):
        tgan2_weights(str(path))


def test_a_file_that_is_no_npz_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "conv3d_deepnetA_ucf.npz"
    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(UserError, match=r"not an npz archive \(not a zip file\)"):
        tgan2_weights(str(path))
    np.save(tmp_path / "mean.npy", np.zeros(3))
    with pytest.raises(UserError, match=r"not an npz archive \(a single \.npy array\)"):
        tgan2_mean(str(tmp_path / "mean.npy"))


@pytest.mark.parametrize("shape", [(3, 16, 128, 128), (1, 1, 3, 16, 128, 171)])
def test_the_mean_is_squeezed_and_cropped_as_tgan2_does(shape: tuple[int, ...], tmp_path: Path) -> None:
    """Also a 128 x 171 mean (Caffe C3D's frame size): TGANv2's crop is [8:120, 8:120] whatever the width."""
    mean = np.random.default_rng(2).uniform(0, 255, shape)
    np.savez(tmp_path / "mean2.npz", mean=mean)
    out = tgan2_mean(str(tmp_path / "mean2.npz"))
    assert out.shape == (3, 16, 112, 112) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, mean.reshape(shape[-4:])[:, :, 8:120, 8:120].astype(np.float32))


@pytest.mark.parametrize("shape", [(3, 16, 112, 112), (2, 3, 16, 128, 128), (16, 3, 128, 128)])
def test_a_mean_of_another_shape_is_refused(shape: tuple[int, ...], tmp_path: Path) -> None:
    np.savez(tmp_path / "mean2.npz", mean=np.zeros(shape, np.float32))
    with pytest.raises(UserError, match=r"'mean' has shape .*\[:, :, 8:120, 8:120\]"):
        tgan2_mean(str(tmp_path / "mean2.npz"))
    np.savez(tmp_path / "other.npz", avg=np.zeros((3, 16, 128, 128), np.float32))
    with pytest.raises(UserError, match="no 'mean' array .*avg"):
        tgan2_mean(str(tmp_path / "other.npz"))


def test_the_output_must_be_a_local_safetensors_file() -> None:
    with pytest.raises(ConfigError, match="safetensors"):
        ConvertC3DConfig(npz="a.npz", mean="m.npz", output="c3d.pt")
    with pytest.raises(ConfigError, match="local path"):
        ConvertC3DConfig(npz="a.npz", mean="m.npz", output="s3://bucket/c3d.safetensors")
