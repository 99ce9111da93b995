"""The latent cache (encode_latents) and the latent loader: round trip through a tokenizer, 2 ranks, resume
after a crash, fingerprint refusal, corrupt members, loader batches, and no video decoder in stage 2.

The tokenizer is the "tiny" preset, randomly initialised (its reconstructions are noise, but encoding and
decoding are deterministic functions, which is all these tests need); videos are the synthetic mp4 shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import webdataset as wds

from tests.conftest import REPO
from tests.helpers import run_on_ranks
from vqvdm_scale.config import ConfigError
from vqvdm_scale.data import LatentLoaderConfig, build_latent_loader, shard_sample_pipeline
from vqvdm_scale.data.synthetic import SYNTHETIC_FPS
from vqvdm_scale.formats.latent_shards import LatentStats
from vqvdm_scale.formats.tokenizer_export import export_tokenizer, load_tokenizer
from vqvdm_scale.models.tokenizer import VQTokenizer, tokenizer_preset
from vqvdm_scale.prep.encode_latents import EncodeConfig, main
from vqvdm_scale.prep.encode_windows import window_starts
from vqvdm_scale.prep.synthetic import make_synthetic_shards

FRAMES, RES, NUM_FRAMES = 16, 32, 32  # 32-frame videos -> 2 non-overlapping 16-frame windows each
VIDEOS = 8  # 2 classes x 4 videos, 2 per shard -> 4 input shards


def _export(path: Path, seed: int) -> str:
    torch.manual_seed(seed)
    cfg = tokenizer_preset("tiny")
    return export_tokenizer(VQTokenizer(cfg), cfg, path)


def _cfg(data: dict[str, str], output: str | Path, **kw: Any) -> EncodeConfig:
    base: dict[str, Any] = dict(
        tokenizer=data["tok"],
        input=data["videos"],
        output=str(output),
        frames=FRAMES,
        resolution=RES,
        batch_size=3,
        progress=False,
    )
    base.update(kw)
    return EncodeConfig(**base)


def _tar_shas(root: str | Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(root).glob("latents-*.tar"))
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Tokenizer export, synthetic mp4 video shards and one clean single-rank encode of them."""
    root = tmp_path_factory.mktemp("latents")
    tok = root / "tok.safetensors"
    fp = _export(tok, 0)
    videos = root / "videos"
    make_synthetic_shards(
        str(videos),
        num_classes=2,
        videos_per_class=4,
        num_frames=NUM_FRAMES,
        size=48,
        resolution=RES,
        shard_size=2,
    )
    out = {"tok": str(tok), "fp": fp, "videos": str(videos), "clean": str(root / "clean"), "root": str(root)}
    main(_cfg(out, out["clean"]))
    return out


def _loader_cfg(latents: str, **kw: Any) -> LatentLoaderConfig:
    base: dict[str, Any] = dict(train_latents=latents, num_workers=0, shuffle_buffer=8, drop_last=False)
    base.update(kw)
    return LatentLoaderConfig(**base)


def _video_clips(videos: str) -> dict[str, tuple[torch.Tensor, dict[str, Any]]]:
    """Reference clips by latent key, cut directly from the decoded mp4s (32x32 stored: no resize/crop)."""
    from vqvdm_scale.data.video_io import decode_mp4_bytes

    urls = sorted(str(p) for p in Path(videos).glob("shard-*.tar"))
    clips = {}
    for s in shard_sample_pipeline(urls, rank=0, world_size=1, shuffle_shards=False):
        frames, _ = decode_mp4_bytes(s["mp4"])
        for w, start in enumerate(range(0, frames.shape[0] - FRAMES + 1, FRAMES)):
            clip = torch.from_numpy(frames[start : start + FRAMES]).permute(3, 0, 1, 2).float() / 127.5 - 1.0
            clips[f"{s['__key__']}_w{w:03d}"] = (clip, json.loads(s["json"]))
    return clips


# --------------------------------------------------------------------------------------------- tests


def test_window_starts_and_config_checks(data: dict[str, str], tmp_path: Path) -> None:
    assert window_starts(32, 16, 1, None) == [0, 16]
    assert window_starts(47, 16, 1, None) == [0, 16]
    assert window_starts(32, 16, 1, 1) == [8]  # the clip loader's centred eval window
    assert window_starts(32, 16, 1, 3) == [0, 8, 16]
    assert window_starts(17, 16, 1, 5) == [0, 1]  # fewer positions than N: no duplicates
    assert window_starts(20, 8, 3, None) == []  # needs 22 frames
    with pytest.raises(ConfigError, match="windows"):
        EncodeConfig(windows="some")
    with pytest.raises(ValueError, match="--frames"):
        main(_cfg(data, tmp_path / "x", frames=10))  # 10 frames do not divide by the tiny preset's 4


def test_roundtrip_matches_tokenizer(data: dict[str, str]) -> None:
    """Loader latents -> denormalize -> decode == tokenizer(clip) for the same clips; labels and fps kept."""
    model, _, fp = load_tokenizer(data["tok"])
    manifest = json.loads((Path(data["clean"]) / "manifest.json").read_text())
    assert manifest["fingerprint"] == fp and manifest["store"] == "indices" and manifest["dtype"] == "int16"
    assert manifest["latent_shape"] == [8, 4, 8, 8] and manifest["counts"]["videos"] == VIDEOS
    assert manifest["num_samples"] == 2 * VIDEOS and manifest["clip"]["windows"] == "all"
    assert manifest["classes"] == ["000_square_right", "001_circle_down"]
    loader = build_latent_loader(
        _loader_cfg(data["clean"]),
        batch_size=4,
        tokenizer_fingerprint=fp,
        codebook=model.quantizer.codes(),
        train=False,
    )
    clips = _video_clips(data["videos"])
    seen = []
    with torch.no_grad():
        for batch in loader:
            ref = torch.stack([clips[k][0] for k in batch["key"]])
            recon, qout = model(ref)
            z_q = LatentStats.from_manifest(loader.manifest).denormalize(batch["latent"])
            torch.testing.assert_close(z_q, qout.z_q, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(model.decode(z_q), recon, atol=1e-4, rtol=1e-4)
            assert batch["label"].tolist() == [clips[k][1]["label"] for k in batch["key"]]
            assert torch.all(batch["fps"] == SYNTHETIC_FPS)
            seen += batch["key"]
    assert sorted(seen) == sorted(clips)


def test_stored_latents_and_n_windows(data: dict[str, str], tmp_path: Path) -> None:
    """store=latents keeps fp16 z_q [D,t,h,w]; windows=1 takes the centred window of each video."""
    model, _, fp = load_tokenizer(data["tok"])
    out = tmp_path / "lat"
    manifest = main(_cfg(data, out, store="latents", windows="1", stride=2))
    assert manifest["dtype"] == "float16" and manifest["sample_shape"] == [8, 4, 8, 8]
    assert manifest["num_samples"] == VIDEOS and manifest["clip"] == {
        "frames": FRAMES,
        "stride": 2,
        "resolution": RES,
        "windows": "1",
    }
    sample = next(iter(shard_sample_pipeline([str(out / "latents-000000.tar")], rank=0, world_size=1)))
    meta = json.loads(sample["json"])
    assert meta["start"] == 0 and meta["fps"] == SYNTHETIC_FPS / 2  # span 31 of 32 frames: centred start 0
    arr = np.load(io.BytesIO(sample["npy"]), allow_pickle=False)
    assert arr.dtype == np.float16 and arr.shape == (8, 4, 8, 8)
    # codebook is not needed for stored latents
    loader = build_latent_loader(
        _loader_cfg(str(out)), batch_size=4, tokenizer_fingerprint=fp, codebook=None, train=False
    )
    batch = next(iter(loader))
    z = LatentStats.from_manifest(manifest).denormalize(batch["latent"])
    codes = model.quantizer.codes()
    # every stored vector is (the fp16 rounding of) a codebook entry
    flat = z.permute(0, 2, 3, 4, 1).reshape(-1, 8)
    nearest = codes[torch.cdist(flat, codes).argmin(1)]
    torch.testing.assert_close(flat, nearest, atol=2e-3, rtol=2e-3)


def _encode_rank(rank: int, world: int, cfg_dict: dict[str, Any]) -> dict[str, Any]:
    return main(EncodeConfig(**cfg_dict))


def test_two_ranks_disjoint_shards_one_manifest(data: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "two"
    cfg = _cfg(data, out)
    results = run_on_ranks(_encode_rank, world_size=2, timeout=180, args=(vars(cfg),))
    assert results[0] == results[1]  # every rank returns the merged manifest
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["shards"] == results[0]["shards"]
    assert list(out.glob("*manifest*")) == [out / "manifest.json"]
    for i, entry in enumerate(manifest["shards"]):
        side = json.loads((out / entry["name"].replace(".tar", ".json")).read_text())
        assert side["rank"] == i % 2  # input shard i went to rank i % world only
    assert _tar_shas(out) == _tar_shas(data["clean"])  # shard bytes do not depend on the rank count
    clean = json.loads((Path(data["clean"]) / "manifest.json").read_text())
    assert manifest["stats"] == clean["stats"]


_CRASH = """
import os, sys
import vqvdm_scale.prep.encode_latents as el
import vqvdm_scale.prep.latent_writer as lw
calls = {"n": 0}
real = lw.encode_clips
def crashing(model, clips):
    calls["n"] += 1
    if calls["n"] == 3:  # first shard (2 batches of 2) is done; the second is half written
        os._exit(17)
    return real(model, clips)
lw.encode_clips = crashing
el.main(el.EncodeConfig(**__import__("json").loads(sys.argv[1])))
"""


def test_interrupted_run_resumes_to_identical_bytes(data: dict[str, str], tmp_path: Path) -> None:
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    main(_cfg(data, clean, batch_size=2))
    cfg = _cfg(data, crashed, batch_size=2)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    options = {k: v for k, v in vars(cfg).items() if k != "object_store"}  # a section: stays its default
    proc = subprocess.run(
        [sys.executable, "-c", _CRASH, json.dumps(options)], env=env, capture_output=True, timeout=120
    )
    assert proc.returncode == 17, proc.stderr.decode()[-2000:]
    assert (crashed / "latents-000000.tar").exists() and not (crashed / "latents-000001.tar").exists()
    assert (crashed / ".latents-000001.tar.tmp").exists() and not (crashed / "manifest.json").exists()
    main(cfg)
    assert not list(crashed.glob(".*.tmp"))
    assert _tar_shas(crashed) == _tar_shas(clean)
    # a damaged finished shard is redone; intact ones are skipped (their files are not rewritten)
    damaged = crashed / "latents-000002.tar"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    before = (crashed / "latents-000000.tar").stat().st_mtime_ns
    manifest = main(cfg)
    assert (crashed / "latents-000000.tar").stat().st_mtime_ns == before
    assert _tar_shas(crashed) == _tar_shas(clean)
    assert manifest["shards"] == json.loads((clean / "manifest.json").read_text())["shards"]


def test_fingerprint_mismatch_is_refused(data: dict[str, str], tmp_path: Path) -> None:
    other_fp = _export(tmp_path / "other.safetensors", 1)
    assert other_fp != data["fp"]
    other, _, _ = load_tokenizer(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match=r"re-run data_prep/encode_latents.py with this tokenizer"):
        build_latent_loader(
            _loader_cfg(data["clean"]),
            batch_size=4,
            tokenizer_fingerprint=other_fp,
            codebook=other.quantizer.codes(),
        )
    with pytest.raises(ValueError, match="codebook passed differs"):
        build_latent_loader(
            _loader_cfg(data["clean"]),
            batch_size=4,
            tokenizer_fingerprint=data["fp"],
            codebook=other.quantizer.codes(),
        )
    with pytest.raises(ValueError, match="codebook=tokenizer.quantizer.codes"):
        build_latent_loader(
            _loader_cfg(data["clean"]), batch_size=4, tokenizer_fingerprint=data["fp"], codebook=None
        )


def test_corrupt_member_and_short_video_are_counted(data: dict[str, str], tmp_path: Path) -> None:
    good = list(shard_sample_pipeline([data["videos"] + "/shard-000001.tar"], rank=0, world_size=1))
    meta = json.loads(good[0]["json"])
    buf = io.BytesIO()
    np.save(buf, np.zeros((8, RES, RES, 3), np.uint8), allow_pickle=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    with wds.TarWriter(str(bad / "shard-000009.tar")) as tw:
        tw.write({"__key__": good[0]["__key__"], "mp4": good[0]["mp4"], "json": good[0]["json"]})
        tw.write(
            {"__key__": "garbage", "mp4": b"\x00\x00\x00 definitely not an mp4" * 50, "json": good[0]["json"]}
        )
        tw.write(
            {"__key__": "short", "npy": buf.getvalue(), "json": json.dumps(dict(meta, num_frames=8)).encode()}
        )
    spec = f"{data['videos']}/shard-000000.tar,{bad}/shard-000009.tar"
    manifest = main(_cfg(data, tmp_path / "out", input=spec, workers=2))  # decode errors raised in a worker
    assert manifest["num_samples"] == 2 * 2 + 2 and manifest["counts"]["videos"] == 3
    assert manifest["counts"]["skip_counts"] == {"corrupt": 1, "too_short": 1}
    reasons = {s["key"]: s["reason"] for s in manifest["skipped"]}
    assert reasons == {"garbage": "corrupt", "short": "too_short"}
    assert [s["name"] for s in manifest["shards"]] == ["latents-000000.tar", "latents-000009.tar"]


def test_loader_batches_normalisation_and_workers(data: dict[str, str]) -> None:
    model, _, fp = load_tokenizer(data["tok"])
    loader = build_latent_loader(
        _loader_cfg(data["clean"], num_workers=2, seed=3),
        batch_size=4,
        tokenizer_fingerprint=fp,
        codebook=model.quantizer.codes(),
    )
    batches = list(loader.epoch_iter())
    keys = [k for b in batches for k in b["key"]]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 2 * VIDEOS  # one seeded epoch, each once
    for b in batches:
        assert b["latent"].dtype == torch.float32 and b["latent"].shape[1:] == (8, 4, 8, 8)
        assert b["label"].dtype == torch.int64 and b["fps"].dtype == torch.float32
        assert b["label"].tolist() == [0 if "_000_square" in k else 1 for k in b["key"]]
    z = torch.cat([b["latent"] for b in batches]).double()
    mean, std = z.mean(dim=(0, 2, 3, 4)), z.std(dim=(0, 2, 3, 4), unbiased=False)
    torch.testing.assert_close(mean, torch.zeros(8, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(std, torch.ones(8, dtype=torch.float64), atol=1e-4, rtol=0)
    assert loader.stats["errors"] == 0 and loader.state.epoch == 1


def test_stage2_path_never_decodes_video(data: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    # in a fresh interpreter: neither PyAV nor the video module is even imported by the stage-2 path
    script = textwrap.dedent(f"""
        import sys
        from vqvdm_scale.data import LatentLoaderConfig, build_latent_loader
        from vqvdm_scale.formats.tokenizer_export import load_tokenizer
        model, _, fp = load_tokenizer({data["tok"]!r})
        cfg = LatentLoaderConfig(train_latents={data["clean"]!r}, num_workers=1, drop_last=False)
        loader = build_latent_loader(cfg, batch_size=4, tokenizer_fingerprint=fp, codebook=model.quantizer.codes())
        n = sum(len(b["key"]) for b in loader.epoch_iter())
        assert n == {2 * VIDEOS}, n
        bad = [m for m in ("av", "vqvdm_scale.data.video_io", "vqvdm_scale.prep.make_shards") if m in sys.modules]
        assert not bad, bad
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == b"ok", proc.stderr.decode()[-2000:]

    # and in this process, with every video decode entry point made to fail, the loader still works
    import vqvdm_scale.data.clips as clip_loader
    import vqvdm_scale.data.video_io as video_io

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("stage 2 called a video decoder")

    monkeypatch.setattr(video_io, "decode_mp4_bytes", boom)
    monkeypatch.setattr(clip_loader, "decode_frames", boom)
    monkeypatch.setattr(clip_loader, "make_clip", boom)
    model, _, fp = load_tokenizer(data["tok"])
    loader = build_latent_loader(
        _loader_cfg(data["clean"]), batch_size=4, tokenizer_fingerprint=fp, codebook=model.quantizer.codes()
    )
    batches = list(loader.epoch_iter())
    assert sum(len(b["key"]) for b in batches) == 2 * VIDEOS and loader.stats["errors"] == 0


def test_previous_window_pairs_for_pvdm(data: dict[str, str], tmp_path: Path) -> None:
    """--context previous stores each window's predecessor: the loader's context of window w is exactly the
    latent of window w-1 of the same video, and a video's first window has an empty context (valid 0)."""
    out = tmp_path / "pairs"
    main(_cfg(data, out, context="previous"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["context"] == "previous" and manifest["num_samples"] == 2 * VIDEOS
    model, _, fp = load_tokenizer(data["tok"])
    loader = build_latent_loader(
        _loader_cfg(str(out)),
        batch_size=4,
        tokenizer_fingerprint=fp,
        codebook=model.quantizer.codes(),
        train=False,
    )
    latents: dict[str, torch.Tensor] = {}
    contexts: dict[str, tuple[torch.Tensor, float]] = {}
    for batch in loader:
        for i, key in enumerate(batch["key"]):
            latents[key] = batch["latent"][i]
            contexts[key] = (batch["context"][i], float(batch["context_valid"][i]))
    assert len(latents) == 2 * VIDEOS
    for key, (ctx, valid) in contexts.items():
        window = int(key.rsplit("_w", 1)[1])
        if window == 0:
            assert valid == 0.0 and not ctx.any()
        else:
            assert valid == 1.0
            torch.testing.assert_close(ctx, latents[f"{key.rsplit('_w', 1)[0]}_w{window - 1:03d}"])
    # windows=N (not back to back) cannot be paired, and one cache cannot mix paired and single windows
    with pytest.raises(ConfigError, match="windows=all"):
        _cfg(data, tmp_path / "x", context="previous", windows="2")
    from vqvdm_scale.config.core import UserError
    from vqvdm_scale.formats.latent_shards import merge_manifests

    single = json.loads((Path(data["clean"]) / "manifest.json").read_text())
    with pytest.raises(UserError, match="context"):
        merge_manifests([manifest, single], [str(out), data["clean"]])


def test_several_frame_strides_give_each_clip_its_own_fps(data: dict[str, str], tmp_path: Path) -> None:
    """--strides 1,2 cuts windows at both strides from one decode; each sample's fps is the clip's own
    frame rate (source fps / stride), which is what the U-Net's fps input then means."""
    out = tmp_path / "strides"
    main(_cfg(data, out, strides=[1, 2]))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["clip"]["strides"] == [1, 2]
    # 32-frame videos, 16-frame clips: 2 windows at stride 1, 1 window (31 frames span) at stride 2
    assert manifest["num_samples"] == 3 * VIDEOS
    urls = sorted(str(p) for p in out.glob("*.tar"))
    seen: dict[int, set[float]] = {}
    for s in shard_sample_pipeline(urls, rank=0, world_size=1, shuffle_shards=False):
        meta = json.loads(s["json"])
        assert f"_s{meta['stride']}_w" in s["__key__"]
        seen.setdefault(meta["stride"], set()).add(meta["fps"])
    assert seen == {1: {SYNTHETIC_FPS}, 2: {SYNTHETIC_FPS / 2}}
    with pytest.raises(ConfigError, match="strides"):
        _cfg(data, tmp_path / "x", strides=[2, 2])
