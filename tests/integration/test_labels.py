"""Labels are checked against the class list wherever they pass (issue 12, items 8 and 9).

A missing or non-integer label used to crash encode_latents; a label equal to the number of classes
silently became the unconditional class, and a larger one an IndexError deep in the network. Now the
shard writers skip such a sample with reason ``bad_label``, the loaders count it as a bad sample, stage 2
refuses a cache whose label counts fall outside its classes, and caches or shard folders with different
class lists (or tokenizers) are not read as one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import webdataset as wds

from vqvdm_scale.config import UserError
from vqvdm_scale.data import ClipLoaderConfig, LatentLoaderConfig, build_clip_loader, build_latent_loader
from vqvdm_scale.data.latents import read_latent_manifest
from vqvdm_scale.data.pipeline import shard_sample_pipeline
from vqvdm_scale.formats.tokenizer_export import load_tokenizer
from vqvdm_scale.formats.video_shards import shard_entries
from vqvdm_scale.prep.encode_latents import EncodeConfig
from vqvdm_scale.prep.encode_latents import main as encode
from vqvdm_scale.prep.layouts import VideoItem
from vqvdm_scale.prep.make_shards import ShardsConfig, SkipVideo, make_sample
from vqvdm_scale.train.ldm import LDMRunConfig, resolve_from_cache

CLASSES = ["000_square_right", "001_circle_down"]  # the synthetic shards' classes


def _samples(url: str | Path) -> list[dict[str, Any]]:
    """The samples of one tar shard, as written (``__key__`` and the payload members)."""
    out = []
    for s in shard_sample_pipeline([str(url)], rank=0, world_size=1, shuffle_shards=False):
        out.append({k: v for k, v in s.items() if k == "__key__" or not k.startswith("__")})
    return out


def _with_meta(sample: dict[str, Any], key: str, **changes: Any) -> dict[str, Any]:
    """``sample`` under ``key`` with its json changed (a change to ``None`` removes the field)."""
    meta = json.loads(sample["json"]) | changes
    meta = {k: v for k, v in meta.items() if v is not None}
    return dict(sample, __key__=key, json=json.dumps(meta).encode())


def _write(path: Path, samples: list[dict[str, Any]]) -> None:
    with wds.TarWriter(str(path)) as writer:
        for s in samples:
            writer.write(s)


def _relabel_one(folder: Path, shard: str, label: int) -> str:
    """Rewrite ``folder/shard`` with its first sample's label set to ``label`` (manifest sha256 updated)."""
    samples = _samples(folder / shard)
    samples[0] = _with_meta(samples[0], samples[0]["__key__"], label=label)
    _write(folder / shard, samples)
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["shards"]:
        if entry["name"] == shard:
            entry["sha256"] = hashlib.sha256((folder / shard).read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return str(samples[0]["__key__"])


def _edit_manifest(folder: Path, **changes: Any) -> None:
    manifest = json.loads((folder / "manifest.json").read_text()) | changes
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_encode_latents_skips_missing_and_bad_labels(
    tiny_latent_cache: dict[str, Path], tmp_path: Path
) -> None:
    videos = tiny_latent_cache["videos"]
    good = _samples(videos / "shard-000001.tar")[0]
    bad = tmp_path / "bad"
    bad.mkdir()
    _write(
        bad / "shard-000009.tar",
        [
            _with_meta(good, "nolabel", label=None),
            _with_meta(good, "textlabel", label="cat"),
            _with_meta(good, "toobig", label=2),  # == the number of classes: the null class
            _with_meta(good, "fine", label=1),
        ],
    )
    cfg = EncodeConfig(
        tokenizer=str(tiny_latent_cache["tokenizer"]),
        input=f"{videos}/shard-000000.tar,{bad}/shard-000009.tar",
        output=str(tmp_path / "latents"),
        frames=8,
        resolution=16,
        progress=False,
    )
    manifest = encode(cfg)
    assert manifest["counts"]["skip_counts"] == {"bad_label": 3} and manifest["counts"]["videos"] == 3
    details = {s["key"]: s["detail"] for s in manifest["skipped"]}
    assert sorted(details) == ["nolabel", "textlabel", "toobig"]
    assert "has no label" in details["nolabel"] and "'cat' is not an integer" in details["textlabel"]
    assert f"label 2 is outside the 2 classes {CLASSES!r} (labels 0..1)" in details["toobig"]
    assert manifest["label_counts"] == {"0": 4, "1": 2}  # windows per label (2 per video)


def test_make_shards_skips_a_label_outside_the_classes(tmp_path: Path) -> None:
    import numpy as np

    from vqvdm_scale.data.video_io import encode_mp4

    video = tmp_path / "v.mp4"
    video.write_bytes(encode_mp4(np.full((8, 16, 16, 3), 90, np.uint8), 10))
    cfg = ShardsConfig(resolution=16, min_frames=4)
    sample, _ = make_sample(0, VideoItem(str(video), 1, "b", "file", "v.mp4"), cfg, ["a", "b"])
    assert json.loads(sample["json"])["label"] == 1
    with pytest.raises(SkipVideo) as err:
        make_sample(0, VideoItem(str(video), 2, "c", "file", "v.mp4"), cfg, ["a", "b"])
    assert (
        err.value.reason == "bad_label"
        and "sample v.mp4: label 2 is outside the 2 classes" in err.value.detail
    )


def test_clip_loader_counts_a_label_outside_the_classes(
    tiny_latent_cache: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    videos = tmp_path / "videos"
    shutil.copytree(tiny_latent_cache["videos"], videos)
    victim = _relabel_one(videos, "shard-000002.tar", 2)
    cfg = ClipLoaderConfig(eval_shards=str(videos), frames=8, resolution=16, num_workers=0)
    loader = build_clip_loader(cfg, batch_size=2, train=False)
    with caplog.at_level(logging.WARNING):
        keys = [k for batch in loader.epoch_iter() for k in batch["key"]]
    assert len(keys) == 7 and victim not in keys and loader.stats["errors"] == 1
    assert f"sample {victim}: label 2 is outside the 2 classes {CLASSES!r}" in caplog.text


def test_latent_loader_counts_a_label_outside_the_classes(
    tiny_latent_cache: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    latents = tmp_path / "latents"
    shutil.copytree(tiny_latent_cache["latents"], latents)
    victim = _relabel_one(latents, "latents-000001.tar", 7)
    model, _, fingerprint = load_tokenizer(tiny_latent_cache["tokenizer"])
    loader = build_latent_loader(
        LatentLoaderConfig(train_latents=str(latents), num_workers=0, drop_last=False),
        batch_size=4,
        tokenizer_fingerprint=fingerprint,
        codebook=model.quantizer.codes(),
        train=False,
    )
    with caplog.at_level(logging.WARNING):
        keys = [k for batch in loader.epoch_iter() for k in batch["key"]]
    assert len(keys) == 15 and victim not in keys and loader.stats["errors"] == 1
    assert f"sample {victim}: label 7 is outside the 2 classes" in caplog.text


def test_ldm_training_start_refuses_labels_outside_the_classes(
    tiny_latent_cache: dict[str, Path], tmp_path: Path
) -> None:
    latents = tmp_path / "latents"
    shutil.copytree(tiny_latent_cache["latents"], latents)
    cfg = LDMRunConfig(tokenizer=str(tiny_latent_cache["tokenizer"]))
    cfg.data = LatentLoaderConfig(train_latents=str(latents))
    resolved, manifest = resolve_from_cache(cfg)  # the encoded cache is fine
    assert manifest["label_counts"] == {"0": 8, "1": 8} and resolved.model.num_classes == 2
    _edit_manifest(latents, label_counts={"0": 8, "1": 7, "2": 1})
    with pytest.raises(UserError, match=r"holds label 2 \(1 samples\) outside the 2 classes"):
        resolve_from_cache(cfg)


def test_caches_with_other_classes_or_tokenizers_are_not_merged(
    tiny_latent_cache: dict[str, Path], tmp_path: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_latent_cache["latents"], a)
    shutil.copytree(tiny_latent_cache["latents"], b)
    merged = read_latent_manifest(f"{a},{b}")
    assert merged["num_samples"] == 32 and merged["label_counts"] == {"0": 16, "1": 16}
    _edit_manifest(b, classes=["000_square_right", "zebra"])
    with pytest.raises(UserError, match=r"differ \(classes: \[.*'001_circle_down'\] and \[.*'zebra'\]\)"):
        read_latent_manifest(f"{a},{b}")
    _edit_manifest(b, classes=CLASSES, fingerprint="0" * 64)
    with pytest.raises(UserError, match="fingerprint"):
        read_latent_manifest(f"{a},{b}")


def test_video_shard_folders_with_other_classes_are_refused(tmp_path: Path) -> None:
    for name, classes in (("a", ["cat", "dog"]), ("b", ["dog", "cat"])):
        (tmp_path / name).mkdir()
        entry = {"name": "shard-000000.tar", "count": 1, "sha256": "0"}
        (tmp_path / name / "manifest.json").write_text(json.dumps({"shards": [entry], "classes": classes}))
    urls = [str(tmp_path / "a" / "shard-000000.tar"), str(tmp_path / "b" / "shard-000000.tar")]
    with pytest.raises(UserError, match=r"\['cat', 'dog'\].*\['dog', 'cat'\]"):
        shard_entries(urls)
    _, classes = shard_entries(urls[:1])
    assert classes == ["cat", "dog"]
