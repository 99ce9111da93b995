"""The tokenizer carries its clip geometry: the export records it under its hash, and encode_latents takes its
clip size from it and refuses another (issue 14, item 7).

The tokenizer is the tiny preset, randomly initialised; the videos are the synthetic shards of
``tiny_latent_cache``, whose export records 8-frame 16x16 clips.
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.conftest import REPO
from vqvdm_scale.config import UserError, run_cli
from vqvdm_scale.formats.tokenizer_export import (
    ClipGeometry,
    export_tokenizer,
    load_tokenizer,
    read_geometry,
)
from vqvdm_scale.models.tokenizer import VQTokenizer, tokenizer_preset
from vqvdm_scale.prep.encode_latents import EncodeConfig, main


def _export(path: Path, **geometry: int) -> str:
    torch.manual_seed(0)
    cfg = tokenizer_preset("tiny")
    return export_tokenizer(VQTokenizer(cfg), cfg, path, **geometry)


def _rewrite(src: Path, dst: Path, **meta: str | None) -> None:
    """Copy an export with metadata keys replaced (None: removed), keeping its recorded fingerprint."""
    with safe_open(str(src), framework="pt") as f:
        old = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    new = {k: v for k, v in {**old, **meta}.items() if v is not None}
    save_file(tensors, str(dst), metadata=new)


def test_export_records_the_geometry_under_its_fingerprint(tmp_path: Path) -> None:
    plain, shaped = tmp_path / "plain.safetensors", tmp_path / "shaped.safetensors"
    fp_plain = _export(plain)
    fp_shaped = _export(shaped, frames=16, resolution=32, frame_stride=2)
    assert fp_plain != fp_shaped  # the geometry is hashed
    want = ClipGeometry(frames=16, resolution=32, frame_stride=2, latent_shape=(8, 4, 8, 8))
    assert read_geometry(shaped) == want and load_tokenizer(shaped)[2] == fp_shaped
    assert want.describe() == "32x32 clips of 16 frames at frame stride 2"
    sidecar = json.loads((tmp_path / "shaped.safetensors.json").read_text())
    assert sidecar["geometry"] == {
        "frames": 16,
        "frame_stride": 2,
        "resolution": 32,
        "latent_shape": [8, 4, 8, 8],
    }
    # an export without geometry is written exactly as before (format /1) and still loads: unknown geometry
    assert read_geometry(plain) is None and load_tokenizer(plain)[2] == fp_plain
    with safe_open(str(plain), framework="pt") as f:
        assert f.metadata()["format"] == "vqvdm-tokenizer/1" and "geometry" not in f.metadata()

    # edited, removed or added geometry breaks the fingerprint
    edited = dict(sidecar["geometry"])
    edited.update(resolution=64, latent_shape=[8, 4, 16, 16])
    _rewrite(shaped, tmp_path / "edited.safetensors", geometry=json.dumps(edited, sort_keys=True))
    with pytest.raises(UserError, match="corrupt or was edited"):
        load_tokenizer(tmp_path / "edited.safetensors")
    _rewrite(shaped, tmp_path / "removed.safetensors", geometry=None)
    with pytest.raises(UserError, match="clip geometry is missing"):
        load_tokenizer(tmp_path / "removed.safetensors")
    added = ClipGeometry(16, 32, 1, (8, 4, 8, 8)).to_json()
    _rewrite(plain, tmp_path / "added.safetensors", geometry=added)
    with pytest.raises(UserError, match="corrupt or was edited"):
        load_tokenizer(tmp_path / "added.safetensors")
    # a grid that does not follow from the config is refused even before the hash is checked
    _rewrite(shaped, tmp_path / "grid.safetensors", geometry=json.dumps(edited | {"resolution": 32}))
    with pytest.raises(UserError, match="recorded latent grid"):
        read_geometry(tmp_path / "grid.safetensors")
    with pytest.raises(UserError, match="not divisible"):
        _export(tmp_path / "odd.safetensors", frames=10, resolution=32)
    with pytest.raises(UserError, match="both frames and resolution"):
        _export(tmp_path / "half.safetensors", frames=16)


def test_encode_defaults_to_the_tokenizers_clip_size(tiny_latent_cache: dict[str, Path]) -> None:
    # the fixture encodes without --frames / --resolution; its export records 8 frames at 16x16
    assert read_geometry(tiny_latent_cache["tokenizer"]) == ClipGeometry(8, 16, 1, (8, 2, 4, 4))
    manifest = json.loads((tiny_latent_cache["latents"] / "manifest.json").read_text())
    assert (manifest["clip"]["frames"], manifest["clip"]["resolution"]) == (8, 16)
    assert manifest["latent_shape"] == [8, 2, 4, 4]


def test_encode_refuses_a_clip_size_the_tokenizer_was_not_trained_on(
    tiny_latent_cache: dict[str, Path], tmp_path: Path
) -> None:
    base: dict[str, Any] = dict(
        tokenizer=str(tiny_latent_cache["tokenizer"]),
        input=str(tiny_latent_cache["videos"]),
        output=str(tmp_path / "out"),
        progress=False,
    )
    with pytest.raises(UserError) as e:
        main(EncodeConfig(**base, resolution=32))
    msg = str(e.value)
    assert msg.startswith("--resolution 32, but tokenizer ") and "trained on 16x16 clips of 8 frames" in msg
    with pytest.raises(UserError, match=r"^--frames 16 --resolution 32, but .* 16x16 clips of 8 frames"):
        main(EncodeConfig(**base, frames=16, resolution=32))
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_encode_without_recorded_geometry_needs_an_explicit_clip_size(
    tiny_latent_cache: dict[str, Path], tmp_path: Path
) -> None:
    old = tmp_path / "old.safetensors"
    _export(old)  # as every export before the geometry was recorded
    cfg: dict[str, Any] = dict(
        tokenizer=str(old), input=str(tiny_latent_cache["videos"]), output=str(tmp_path / "o")
    )
    with pytest.raises(UserError, match=r"records no clip size .*give --frames and --resolution"):
        main(EncodeConfig(**cfg, progress=False))
    with pytest.raises(UserError, match=r"give --resolution,"):
        main(EncodeConfig(**cfg, frames=8, progress=False))
    manifest = main(EncodeConfig(**cfg, frames=8, resolution=16, progress=False))
    assert manifest["latent_shape"] == [8, 2, 4, 4]  # explicit values: today's behaviour


def test_cli_refusal_is_one_line_with_exit_2(
    tiny_latent_cache: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = runpy.run_path(str(REPO / "data_prep" / "encode_latents.py"), run_name="entry_encode")
    argv = ["--tokenizer", str(tiny_latent_cache["tokenizer"]), "--input", str(tiny_latent_cache["videos"])]
    argv += ["--output", str(tmp_path / "o"), "--resolution", "128"]
    with pytest.raises(SystemExit) as e:
        run_cli(EncodeConfig, entry["encode"], description=entry["__doc__"], flags=entry["FLAGS"], argv=argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--resolution 128, but tokenizer" in err and "16x16 clips of 8 frames" in err
