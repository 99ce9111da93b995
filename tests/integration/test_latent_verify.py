"""A latent cache the loader can trust (issue 12, item 5): every shard is checked against the sha256 its
manifest records when a reader opens it (named, counted and skipped on a mismatch; ``data.verify=false``
turns it off), and a manifest with a zero std or a store dtype its shards do not hold is refused by name.

The cache is the session fixture ``tiny_latent_cache`` (synthetic videos, random tiny tokenizer), copied.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from vqvdm_scale.config.core import UserError, load_config
from vqvdm_scale.data import LatentLoaderConfig, build_latent_loader
from vqvdm_scale.data.latents import read_latent_manifest
from vqvdm_scale.formats.tokenizer_export import load_tokenizer
from vqvdm_scale.train.ldm import LDMRunConfig


@pytest.fixture
def cache(tiny_latent_cache: dict[str, Path], tmp_path: Path) -> dict[str, Any]:
    latents = tmp_path / "latents"
    shutil.copytree(tiny_latent_cache["latents"], latents)
    tok, _, fp = load_tokenizer(tiny_latent_cache["tokenizer"])
    return {"latents": latents, "fp": fp, "codes": tok.quantizer.codes()}


def _load(cache: dict[str, Any], **kw: Any) -> Any:
    cfg = LatentLoaderConfig(
        train_latents=str(cache["latents"]), num_workers=0, shuffle_buffer=0, drop_last=False, **kw
    )
    return build_latent_loader(cfg, batch_size=2, tokenizer_fingerprint=cache["fp"], codebook=cache["codes"])


def _edit_manifest(cache: dict[str, Any], **changes: Any) -> Path:
    path = cache["latents"] / "manifest.json"
    m = json.loads(path.read_text())
    for key, value in changes.items():
        if key in ("mean", "std"):
            m["stats"][key] = value
        else:
            m[key] = value
    path.write_text(json.dumps(m))
    return path


def test_edited_shard_is_named_counted_and_skipped(
    cache: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    manifest = json.loads((cache["latents"] / "manifest.json").read_text())
    clean = _load(cache)
    all_keys = {k for b in clean.epoch_iter() for k in b["key"]}
    assert clean.stats["errors"] == 0
    shard = manifest["shards"][0]
    path = cache["latents"] / shard["name"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # in the tar's zero padding: every sample still parses, only the sha256 tells
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        loader = _load(cache)
        keys = {k for b in loader.epoch_iter() for k in b["key"]}
    assert loader.stats["errors"] == 1 and len(keys) == len(all_keys) - shard["count"]
    named = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    assert named and "sha256" in named[0] and "manifest" in named[0]
    unverified = _load(cache, verify=False)
    assert {k for b in unverified.epoch_iter() for k in b["key"]} == all_keys


def test_verify_is_a_config_key_on_by_default(tiny_latent_cache: dict[str, Path]) -> None:
    base = [
        f"data.train_latents={tiny_latent_cache['latents']}",
        f"tokenizer={tiny_latent_cache['tokenizer']}",
    ]
    assert load_config(LDMRunConfig, None, base).data.verify is True
    assert load_config(LDMRunConfig, None, [*base, "data.verify=false"]).data.verify is False


def test_shard_missing_from_the_manifest_cannot_be_verified(cache: dict[str, Any]) -> None:
    first = sorted(cache["latents"].glob("latents-*.tar"))[0]
    shutil.copy(first, cache["latents"] / "latents-extra.tar")
    spec = f"{cache['latents']}/latents-{{000000..000001}}.tar,{cache['latents']}/latents-extra.tar"
    cfg = LatentLoaderConfig(train_latents=spec, num_workers=0)
    with pytest.raises(UserError, match=r"latents-extra\.tar.*not listed.*data\.verify=false"):
        build_latent_loader(cfg, batch_size=2, tokenizer_fingerprint=cache["fp"], codebook=cache["codes"])
    cfg = LatentLoaderConfig(train_latents=spec, num_workers=0, verify=False)
    build_latent_loader(cfg, batch_size=2, tokenizer_fingerprint=cache["fp"], codebook=cache["codes"])


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"std": "zero"}, "std"),
        ({"std": "nan"}, "std"),
        ({"mean": "short"}, "mean"),
    ],
)
def test_bad_statistics_are_refused_by_name(
    cache: dict[str, Any], change: dict[str, str], words: str
) -> None:
    m = json.loads((cache["latents"] / "manifest.json").read_text())
    stats = m["stats"]
    key, how = next(iter(change.items()))
    value = list(stats[key])
    if how == "zero":
        value[1] = 0.0
    elif how == "nan":
        value[0] = float("nan")
    else:
        value = value[:-1]
    path = _edit_manifest(cache, **{key: value})
    for call in (lambda: _load(cache), lambda: read_latent_manifest(str(cache["latents"]))):
        with pytest.raises(UserError, match=words) as e:
            call()
        assert str(path) in str(e.value) and "encode_latents" in str(e.value)


def test_store_dtype_that_the_shards_do_not_hold_is_refused(cache: dict[str, Any]) -> None:
    m = json.loads((cache["latents"] / "manifest.json").read_text())
    assert m["store"] == "indices" and m["dtype"] == "int16"
    # self-inconsistent: indices of a 16-entry codebook are stored as int16
    path = _edit_manifest(cache, dtype="int32")
    with pytest.raises(UserError, match=r"dtype") as e:
        _load(cache)
    assert str(path) in str(e.value)
    # consistent in itself, but the shards hold int16 indices, not fp16 latents
    _edit_manifest(cache, store="latents", dtype="float16", sample_shape=m["latent_shape"])
    with pytest.raises(UserError, match=r"float16.*int16|int16.*float16") as e:
        _load(cache, verify=False)
    assert "latents-" in str(e.value) and "\n" not in str(e.value)
