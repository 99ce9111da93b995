"""Exports you can trust (issue 12, items 4 and 5): truncated or edited files are named, bytes are
deterministic, modes follow the umask, and sampling a checkpoint without its EMA export says what to do.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vqvdm_scale.config.core import UserError
from vqvdm_scale.diffusion import DiffusionConfig
from vqvdm_scale.engine.checkpoint import COMPLETE, LATEST
from vqvdm_scale.formats.latent_shards import LatentStats
from vqvdm_scale.formats.ldm_export import EMA_FILE, LatentSpec, load_ema, save_ema
from vqvdm_scale.formats.tokenizer_export import export_tokenizer, load_tokenizer
from vqvdm_scale.models.tokenizer import VQTokenizer, tokenizer_preset
from vqvdm_scale.models.unet.model import UNet3D
from vqvdm_scale.models.unet.presets import unet_preset
from vqvdm_scale.sample.main import SampleRunConfig

UNET = unet_preset("tiny", model_channels=16, head_dim=16, num_classes=2)


def _save_ema(path: Path, step: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    weights = UNet3D(UNET).state_dict()
    spec = LatentSpec(shape=(4, 2, 8, 8), stats=LatentStats(torch.zeros(4), torch.ones(4)), fps=8.0)
    save_ema(path, weights, UNET, DiffusionConfig(), spec, "f" * 64, step, ["a", "b"])
    return weights


def _truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:keep])


def _header(path: Path) -> bytes:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return data[8 : 8 + n]


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def test_ema_round_trip_and_deterministic_bytes(tmp_path: Path) -> None:
    weights = _save_ema(tmp_path / "a" / EMA_FILE)
    _save_ema(tmp_path / EMA_FILE)
    sm = load_ema(tmp_path / EMA_FILE)
    assert sm.step == 3 and sm.classes == ["a", "b"]
    assert all(torch.equal(sm.net.state_dict()[k], v) for k, v in weights.items())
    # safetensors writes its metadata in hash order; identical exports are identical files
    assert (tmp_path / "a" / EMA_FILE).read_bytes() == (tmp_path / EMA_FILE).read_bytes()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("keep", [-7, 100, 5])
def test_truncated_ema_is_a_one_line_error_naming_the_file(tmp_path: Path, keep: int) -> None:
    path = tmp_path / EMA_FILE
    _save_ema(path)
    _truncate(path, keep)
    with pytest.raises(UserError) as e:
        load_ema(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_edited_ema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / EMA_FILE
    _save_ema(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    edited = dict(tensors)
    name = next(k for k in edited if k.startswith("net.") and edited[k].is_floating_point())
    edited[name] = edited[name] + 1e-3
    save_file(edited, str(tmp_path / "t.safetensors"), metadata=meta)
    with pytest.raises(UserError, match=r"t\.safetensors.*sha256"):
        load_ema(tmp_path / "t.safetensors")
    save_file(tensors, str(tmp_path / "m.safetensors"), metadata={**meta, "step": "999"})
    with pytest.raises(UserError, match=r"m\.safetensors.*sha256"):
        load_ema(tmp_path / "m.safetensors")
    # a byte flipped inside the tensor data, header untouched
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    (tmp_path / "f.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"f\.safetensors.*sha256"):
        load_ema(tmp_path / "f.safetensors")
    with pytest.raises(UserError, match=r"does not exist"):
        load_ema(tmp_path / "missing.safetensors")


def test_ema_without_a_recorded_hash_loads_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / EMA_FILE
    _save_ema(path)
    with safe_open(str(path), framework="pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != "sha256"}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=meta)  # as exports before the hash
    with pytest.warns(UserWarning, match="no sha256"):
        assert load_ema(tmp_path / "old.safetensors").step == 3
    del meta["model"]
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.warns(UserWarning), pytest.raises(UserError, match=r"bad\.safetensors is not a complete"):
        load_ema(tmp_path / "bad.safetensors")


def test_tokenizer_export_truncated_deterministic(tmp_path: Path) -> None:
    cfg = tokenizer_preset("tiny")
    model = VQTokenizer(cfg)
    export_tokenizer(model, cfg, tmp_path / "a.safetensors")
    export_tokenizer(model, cfg, tmp_path / "b.safetensors")
    assert _header(tmp_path / "a.safetensors") == _header(tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    path = tmp_path / "a.safetensors"
    _truncate(path, -100)
    with pytest.raises(UserError) as e:
        load_tokenizer(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_exports_follow_the_umask(tmp_path: Path, umask_027: None) -> None:
    cfg = tokenizer_preset("tiny")
    export_tokenizer(VQTokenizer(cfg), cfg, tmp_path / "tok.safetensors")
    _save_ema(tmp_path / EMA_FILE)
    plain = tmp_path / "plain"
    plain.write_text("x")
    want = plain.stat().st_mode & 0o777
    assert want == 0o640
    for name in ("tok.safetensors", "tok.safetensors.json", EMA_FILE):
        assert (tmp_path / name).stat().st_mode & 0o777 == want, name


def _checkpoint(root: Path, step: int, ema: bool) -> Path:
    d = root / "checkpoints" / f"step_{step:08d}"
    d.mkdir(parents=True)
    if ema:
        _save_ema(d / EMA_FILE, step)
    (d / COMPLETE).write_text("world_size=1\n")
    (root / "checkpoints" / LATEST).write_text(d.name)
    return d


def test_sample_names_a_checkpoint_without_its_ema_and_what_to_do(tmp_path: Path) -> None:
    older = _checkpoint(tmp_path, 2, ema=True)
    newest = _checkpoint(tmp_path, 4, ema=False)
    with pytest.raises(UserError) as e:
        SampleRunConfig(run=str(tmp_path), tokenizer="t").ema_path()
    msg = str(e.value)
    assert str(newest) in msg and EMA_FILE in msg and "re-run the training command" in msg
    assert f"--checkpoint {older}" in msg and "\n" not in msg
    with pytest.raises(UserError, match="re-run the training command") as e:
        SampleRunConfig(checkpoint=str(newest), tokenizer="t").ema_path()
    assert SampleRunConfig(checkpoint=str(older), tokenizer="t").ema_path() == older / EMA_FILE
