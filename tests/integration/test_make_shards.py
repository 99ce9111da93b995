"""make_shards end to end: real/bad videos, generated bad inputs, layouts, fsspec memory://, kill + resume."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO
from vqvdm_scale.config import ConfigError, UserError
from vqvdm_scale.data.synthetic import class_colour, make_synthetic_video, write_synthetic_dataset
from vqvdm_scale.data.video_io import decode_mp4_bytes, encode_mp4
from vqvdm_scale.formats.video_shards import sample_key
from vqvdm_scale.prep.layouts import list_items
from vqvdm_scale.prep.make_shards import ShardsConfig, main
from vqvdm_scale.prep.synthetic import make_synthetic_shards


def read_shard(path: str | Path, fs: Any = None) -> list[dict[str, Any]]:
    """Samples of one tar shard as {key, json, mp4|npy bytes}, in file order."""
    opener = fs.open if fs is not None else open
    with opener(str(path), "rb") as f:
        data = f.read()
    samples: dict[str, dict[str, Any]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            payload = tar.extractfile(member).read()  # type: ignore[union-attr]
            samples.setdefault(key, {"__key__": key})[ext] = json.loads(payload) if ext == "json" else payload
    return list(samples.values())


def shard_hashes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("shard-*.tar"))}


def tiny_mp4(path: Path, frames: int = 20, size: int = 32, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    video = np.full((frames, size, size + 8, 3), value, np.uint8)
    video[:, :, : size // 2, 0] = 255
    path.write_bytes(encode_mp4(video, 10))
    return path


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match="resolution"):
        ShardsConfig(resolution=33)
    with pytest.raises(ConfigError, match="max_frames"):
        ShardsConfig(min_frames=16, max_frames=8)
    with pytest.raises(ConfigError, match="split_file"):
        ShardsConfig(layout="folder", split_file="x.txt")
    with pytest.raises(ConfigError, match="input"):
        main(ShardsConfig(output="/tmp/x"))


def test_shared_good_videos_all_shard(shared_data: Path, tmp_path: Path) -> None:
    cfg = ShardsConfig(
        input=str(shared_data / "videos"),
        output=str(tmp_path / "out"),
        resolution=32,
        max_frames=16,
        shard_size=3,
        progress=False,
    )
    manifest = main(cfg)
    assert manifest["format"] == "vqvdm-video-shards/1"
    assert manifest["num_samples"] == 8 and manifest["skipped"] == [] and manifest["skip_counts"] == {}
    assert [s["count"] for s in manifest["shards"]] == [3, 3, 2]
    assert manifest["classes"] == ["videos"] and manifest["params"]["resolution"] == 32
    samples = [s for shard in manifest["shards"] for s in read_shard(tmp_path / "out" / shard["name"])]
    by_source = {s["json"]["source"]: s for s in samples}
    assert len(by_source) == 8
    hd = by_source["fullhd_1920x1080_30fps.avi"]
    assert hd["json"]["orig_size"] == [1080, 1920] and hd["json"]["size"] == [32, 56]
    assert (
        hd["__key__"] == sample_key(1, "fullhd_1920x1080_30fps.avi") == "00000001_fullhd_1920x1080_30fps_avi"
    )
    assert abs(by_source["street_426x240_29.97fps.mp4"]["json"]["fps"] - 30000 / 1001) < 1e-6
    for s in samples:
        meta = s["json"]
        assert set(meta) == {"label", "class_name", "fps", "num_frames", "source", "orig_size", "size"}
        assert min(meta["size"]) == 32 and meta["num_frames"] == 16 and meta["label"] == 0
        frames, fps = decode_mp4_bytes(s["mp4"])
        assert frames.shape == (16, *meta["size"], 3) and abs(fps - meta["fps"]) < 1e-6
    for shard in manifest["shards"]:  # the manifest's sha256 is the file's
        assert hashlib.sha256((tmp_path / "out" / shard["name"]).read_bytes()).hexdigest() == shard["sha256"]


def test_shared_bad_videos(shared_data: Path, tmp_path: Path) -> None:
    cfg = ShardsConfig(
        input=str(shared_data / "bad_videos"), output=str(tmp_path / "out"), resolution=32, progress=False
    )
    report = tmp_path / "out" / "manifest.json"
    with pytest.raises(UserError) as err:
        main(cfg)
    # one line: how many inputs, the counts by reason, and where the per-input report is
    assert str(err.value) == (
        "make_shards: all 3 inputs were skipped (decode_error=1, too_short=2), so no shard was written; "
        f"the reason for each input is in {report}"
    )
    manifest = json.loads(report.read_text())
    reasons = {s["source"]: s["reason"] for s in manifest["skipped"]}
    assert reasons == {
        "corrupted_h264.mp4": "decode_error",
        "rotated90_3frames.mov": "too_short",
        "tiny_4frames_50x50.mov": "too_short",
    }
    assert manifest["skip_counts"] == {"decode_error": 1, "too_short": 2}
    assert manifest["num_samples"] == 0 and manifest["shards"] == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json"]  # no empty shard left

    # keep_partial keeps the frames decoded before the error, and says so; min_frames=1 keeps the short ones.
    manifest = main(
        ShardsConfig(
            input=str(shared_data / "bad_videos"),
            output=str(tmp_path / "partial"),
            resolution=32,
            min_frames=1,
            keep_partial=True,
            progress=False,
        )
    )
    assert manifest["num_samples"] == 3 and manifest["skipped"] == []
    assert [p["source"] for p in manifest["partial"]] == ["corrupted_h264.mp4"]
    sizes = {
        s["json"]["source"]: s["json"]["size"] for s in read_shard(tmp_path / "partial" / "shard-000000.tar")
    }
    assert sizes["rotated90_3frames.mov"] == [56, 32]  # upright portrait


def test_generated_bad_inputs(tmp_path: Path) -> None:
    import av

    src = tmp_path / "in"
    good = tiny_mp4(src / "good.mp4", frames=20)
    (src / "zero.mp4").write_bytes(b"")
    (src / "text.mp4").write_text("hello, I am not a video\n" * 20)
    (src / "truncated.mp4").write_bytes(good.read_bytes()[: int(good.stat().st_size * 0.3)])
    (src / "readme.txt").write_text("not listed: extension is not a video one")

    def write(path: Path, frames: np.ndarray, codec: str, pix_fmt: str, fmt: str) -> None:
        with av.open(str(path), "w") as c:
            stream = c.add_stream(codec, rate=10)
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
            for i, frame in enumerate(frames):
                vf = av.VideoFrame.from_ndarray(frame, format=fmt)
                vf.pts = i
                for packet in stream.encode(vf):
                    c.mux(packet)
            for packet in stream.encode():
                c.mux(packet)

    gray = np.tile(np.linspace(0, 255, 40), (30, 1))[None].repeat(18, 0).astype(np.uint8)
    write(src / "gray.mkv", gray, "ffv1", "gray", "gray")
    write(
        src / "odd.avi",
        np.random.default_rng(0).integers(0, 255, (18, 47, 33, 3), dtype=np.uint8),
        "mpeg4",
        "yuv420p",
        "rgb24",
    )
    manifest = main(ShardsConfig(input=str(src), output=str(tmp_path / "out"), resolution=32, progress=False))
    assert {s["source"]: s["reason"] for s in manifest["skipped"]} == {
        "zero.mp4": "zero_byte",
        "text.mp4": "not_a_video",
        "truncated.mp4": "not_a_video",  # moov atom lost
    }
    samples = {s["json"]["source"]: s for s in read_shard(tmp_path / "out" / "shard-000000.tar")}
    assert sorted(samples) == ["good.mp4", "gray.mkv", "odd.avi"]
    assert samples["odd.avi"]["json"]["orig_size"] == [47, 33] and samples["odd.avi"]["json"]["size"] == [
        46,
        32,
    ]
    assert samples["gray.mkv"]["json"]["size"] == [32, 42]
    frames, _ = decode_mp4_bytes(samples["gray.mkv"]["mp4"])
    assert np.abs(frames[..., 0].astype(int) - frames[..., 1]).max() <= 3  # grey stays grey through RGB


def test_all_inputs_bad_fails_with_report(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "zero.mp4").write_bytes(b"")
    (src / "a_text.mp4").write_text("not a video\n" * 50)
    (src / "b_noise.mkv").write_bytes(
        np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    )
    short = tiny_mp4(src / "short.mp4", frames=3)
    out = tmp_path / "out"
    cfg = ShardsConfig(input=str(src), output=str(out), resolution=32, shard_size=2, progress=False)
    with pytest.raises(UserError, match=r"^make_shards: all 4 inputs were skipped \(") as err:
        main(cfg)
    message = str(err.value)
    assert "\n" not in message and "not_a_video=2, too_short=1, zero_byte=1" in message
    assert message.endswith(f"is in {out / 'manifest.json'}")
    manifest = json.loads((out / "manifest.json").read_text())
    assert {s["source"]: s["reason"] for s in manifest["skipped"]} == {
        "a_text.mp4": "not_a_video",
        "b_noise.mkv": "not_a_video",
        "short.mp4": "too_short",
        "zero.mp4": "zero_byte",
    }
    assert manifest["shards"] == [] and manifest["num_samples"] == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json"
    ]  # neither of the 2 planned shards is left

    # one input: the message does not say "all 1 inputs"; the re-run after a fix writes the shard
    for bad in ("zero.mp4", "a_text.mp4", "b_noise.mkv"):
        (src / bad).unlink()
    with pytest.raises(UserError, match=r"the only input was skipped \(too_short=1\)"):
        main(cfg)
    tiny_mp4(short, frames=20)
    manifest = main(cfg)
    assert manifest["num_samples"] == 1 and manifest["skipped"] == []
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-000000.json", "shard-000000.tar"]


def test_some_bad_inputs_still_write_every_planned_shard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "a_zero.mp4").write_bytes(b"")
    (src / "b_text.mp4").write_text("not a video\n" * 50)
    tiny_mp4(src / "c_good.mp4", frames=20)
    manifest = main(
        ShardsConfig(
            input=str(src), output=str(tmp_path / "out"), shard_size=2, resolution=32, progress=False
        )
    )
    assert manifest["num_samples"] == 1 and [s["name"] for s in manifest["shards"]] == ["shard-000001.tar"]
    assert (tmp_path / "out" / "shard-000000.tar").exists()  # empty, but kept: numbering is stable
    printed = capsys.readouterr().out
    assert "wrote 1 video in 1 shard to" in printed and "(0 of 2 shards already complete)" in printed
    summary = next(line for line in printed.splitlines() if line.startswith("make_shards: wrote "))
    assert re.search(r"; [\d.]+s, [\d.]+ videos/s$", summary)  # the summary has the throughput


def test_npy_storage_and_keys(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path / "in", num_classes=2, videos_per_class=2, num_frames=16, size=32)
    manifest = main(
        ShardsConfig(
            input=str(tmp_path / "in"),
            output=str(tmp_path / "out"),
            resolution=32,
            storage="npy",
            progress=False,
        )
    )
    samples = read_shard(tmp_path / "out" / "shard-000000.tar")
    assert [s["__key__"] for s in samples] == [
        "00000000_000_square_right_video_0000_mp4",
        "00000001_000_square_right_video_0001_mp4",
        "00000002_001_circle_down_video_0000_mp4",
        "00000003_001_circle_down_video_0001_mp4",
    ]
    frames = np.load(io.BytesIO(samples[2]["npy"]), allow_pickle=False)
    assert frames.dtype == np.uint8 and frames.shape == (16, 32, 32, 3)
    assert samples[2]["json"]["label"] == 1 and manifest["classes"][1] == samples[2]["json"]["class_name"]


def test_memory_filesystem(tmp_path: Path) -> None:
    url = "memory://vqvdm-test-shards/synthetic"
    manifest = make_synthetic_shards(
        url, num_classes=2, videos_per_class=3, num_frames=16, size=32, resolution=32, shard_size=4, workers=2
    )  # memory:// falls back to inline
    fs = fsspec.filesystem("memory")
    with fsspec.open(f"{url}/manifest.json", "rb") as f:
        assert json.loads(f.read()) == manifest
    assert manifest["num_samples"] == 6 and [s["count"] for s in manifest["shards"]] == [4, 2]
    samples = read_shard("/vqvdm-test-shards/synthetic/shard-000001.tar", fs=fs)
    assert [s["json"]["label"] for s in samples] == [1, 1]
    assert not [p for p in fs.ls("/vqvdm-test-shards/synthetic", detail=False) if p.endswith(".tmp")]
    fs.rm("/vqvdm-test-shards", recursive=True)


def _synthetic_input(root: Path) -> Path:
    return write_synthetic_dataset(root, num_classes=4, videos_per_class=6, num_frames=40, size=64, seed=3)


@pytest.mark.slow
def test_kill_and_resume_is_byte_identical(tmp_path: Path) -> None:
    src = _synthetic_input(tmp_path / "in")
    common = dict(input=str(src), resolution=64, shard_size=2, progress=False)
    reference = main(ShardsConfig(output=str(tmp_path / "ref"), workers=2, **common))  # worker processes
    assert len(reference["shards"]) == 12
    ref_hashes = shard_hashes(tmp_path / "ref")

    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        str(REPO / "data_prep" / "make_shards.py"),
        "--input",
        str(src),
        "--output",
        str(out),
        "--resolution",
        "64",
        "--shard-size",
        "2",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "shard-000000.tar").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)  # a hard kill: no cleanup code runs
    proc.wait()
    finished = sorted(p.name for p in out.glob("shard-*.tar"))
    assert "shard-000000.tar" in finished and len(finished) < 12, finished  # really killed part-way
    assert not (out / "manifest.json").exists()
    (out / ".shard-000011.tar.tmp").write_bytes(b"half a shard")  # a stray temporary of a killed writer

    resumed = main(ShardsConfig(output=str(out), **common))
    assert shard_hashes(out) == ref_hashes
    assert resumed["shards"] == reference["shards"] and resumed["num_samples"] == 24
    assert not list(out.glob(".*.tmp"))

    # A complete run is skipped on re-run: nothing is rewritten.
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    main(ShardsConfig(output=str(out), **common))
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")} == mtimes

    # A damaged complete shard is detected by its sha256 and redone; the others are left alone.
    damaged = out / "shard-000005.tar"
    damaged.write_bytes(damaged.read_bytes()[:-700] + b"\0" * 700)
    main(ShardsConfig(output=str(out), **common))
    assert shard_hashes(out) == ref_hashes
    assert (out / "shard-000004.tar").stat().st_mtime_ns == mtimes["shard-000004.tar"]

    # Changing a parameter that alters shard bytes redoes the shards instead of mixing old and new.
    changed = main(ShardsConfig(output=str(out), **{**common, "resolution": 32}))
    assert changed["params"]["resolution"] == 32
    assert read_shard(out / "shard-000000.tar")[0]["json"]["size"] == [32, 32]


def test_ucf101_layout(tmp_path: Path) -> None:
    root = tmp_path / "UCF-101"
    for cls in ("ApplyEyeMakeup", "Basketball", "HandstandPushups"):
        for g in (1, 8):
            tiny_mp4(root / cls / f"v_{cls}_g{g:02d}_c01.avi", frames=4)
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Basketball\n3 HandstandPushups\n")
    (lists / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\nHandstandPushups/v_HandstandPushups_g08_c01.avi 3\n"
        "Basketball/v_Basketball_g08_c01.avi 2\nBasketball/v_Basketball_g09_c01.avi 2\n"
    )
    (lists / "testlist01.txt").write_text(
        "Basketball/v_Basketball_g01_c01.avi\nApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n"
    )
    train = list_items("ucf101", root, lists / "trainlist01.txt")
    assert train.classes == ["ApplyEyeMakeup", "Basketball", "HandstandPushups"]
    assert [(Path(i.source).name, i.label) for i in train.items] == [
        ("v_ApplyEyeMakeup_g08_c01.avi", 0),
        ("v_Basketball_g08_c01.avi", 1),
        ("v_Basketball_g09_c01.avi", 1),
        ("v_HandstandPushups_g08_c01.avi", 2),
    ]
    test = list_items("ucf101", root, lists / "testlist01.txt")
    assert [(i.rel, i.label) for i in test.items] == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", 0),
        ("Basketball/v_Basketball_g01_c01.avi", 1),
    ]
    assert len(list_items("ucf101", root, None).items) == 6  # no split: every video in a class folder
    (lists / "bad.txt").write_text("Basketball/v_Basketball_g01_c01.avi 3\n")
    with pytest.raises(ValueError, match="disagrees with classInd"):
        list_items("ucf101", root, lists / "bad.txt")

    manifest = main(
        ShardsConfig(
            input=str(root),
            output=str(tmp_path / "out"),
            layout="ucf101",
            split_file=str(lists / "trainlist01.txt"),
            resolution=32,
            min_frames=4,
            progress=False,
        )
    )
    assert manifest["num_samples"] == 3 and manifest["skipped"] == [
        {
            "source": "Basketball/v_Basketball_g09_c01.avi",
            "reason": "missing",
            "detail": manifest["skipped"][0]["detail"],
        }
    ]
    assert manifest["classes"] == train.classes


def test_manifest_layouts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    tiny_mp4(data / "a.mp4")
    tiny_mp4(data / "sub" / "b.mp4")
    tiny_mp4(tmp_path / "elsewhere" / "c.mp4")
    (tmp_path / "list.csv").write_text(
        "path,label\ndata/a.mp4,dog\ndata/sub/b.mp4,cat\nelsewhere/c.mp4,dog\n"
    )
    listing = list_items("manifest", tmp_path / "list.csv")
    assert listing.classes == ["cat", "dog"]
    assert [(i.rel, i.label, i.class_name) for i in listing.items] == [
        ("data/a.mp4", 1, "dog"),
        ("data/sub/b.mp4", 0, "cat"),
        ("elsewhere/c.mp4", 1, "dog"),
    ]
    assert Path(listing.items[0].source) == (data / "a.mp4").resolve()

    (data / "list.jsonl").write_text(
        '{"path": "a.mp4", "label": 2, "class_name": "two"}\n{"path": "sub/b.mp4", "label": 0}\n'
    )
    listing = list_items("manifest", data / "list.jsonl")
    assert listing.classes == ["0", "1", "two"] and [i.label for i in listing.items] == [2, 0]
    (data / "mixed.jsonl").write_text(
        '{"path": "a.mp4", "label": 1}\n{"path": "sub/b.mp4", "label": "cat"}\n'
    )
    with pytest.raises(ValueError, match="mix"):
        list_items("manifest", data / "mixed.jsonl")
    manifest = main(
        ShardsConfig(
            input=str(tmp_path / "list.csv"),
            output=str(tmp_path / "out"),
            layout="manifest",
            resolution=32,
            progress=False,
        )
    )
    assert manifest["num_samples"] == 3 and manifest["classes"] == ["cat", "dog"]


def test_sky_frame_folders(tmp_path: Path) -> None:
    root = tmp_path / "sky_train"
    for video, clip, ext in (("v1", "v1_1", "jpg"), ("v1", "v1_2", "png"), ("v2", "v2_1", "jpg")):
        folder = root / video / clip
        folder.mkdir(parents=True)
        for t in range(18):
            Image.fromarray(np.full((36, 48, 3), 10 * t, np.uint8)).save(folder / f"{clip}_{t + 1}.{ext}")
    listing = list_items("sky", root)
    assert [i.rel for i in listing.items] == ["v1/v1_1", "v1/v1_2", "v2/v2_1"] and listing.classes == ["sky"]
    assert {i.kind for i in listing.items} == {"frames_dir"}
    manifest = main(
        ShardsConfig(
            input=str(root), output=str(tmp_path / "out"), layout="sky", resolution=32, progress=False
        )
    )
    samples = read_shard(tmp_path / "out" / "shard-000000.tar")
    assert manifest["num_samples"] == 3
    assert samples[1]["json"] | {"orig_size": None} == {
        "label": 0,
        "class_name": "sky",
        "fps": 25.0,
        "num_frames": 18,
        "source": "v1/v1_2",
        "size": [32, 42],
        "orig_size": None,
    }
    frames, _ = decode_mp4_bytes(samples[1]["mp4"])
    assert abs(frames[10].mean() - 100) < 4  # frames kept in natural order (1, 2, ..., 10, ...)


def test_synthetic_classes_and_determinism(tmp_path: Path) -> None:
    videos = {k: make_synthetic_video(k, 12, 48, np.random.default_rng([0, k])) for k in range(8)}
    assert np.array_equal(videos[2], make_synthetic_video(2, 12, 48, np.random.default_rng([0, 2])))
    assert not np.array_equal(videos[2], make_synthetic_video(2, 12, 48, np.random.default_rng([1, 2])))
    colours = np.stack([class_colour(k) for k in range(8)])
    for k, video in videos.items():
        assert video.shape == (12, 48, 48, 3) and video.dtype == np.uint8
        bright = video.reshape(-1, 3)[video.reshape(-1, 3).max(1) > 100]  # the shape, not the dim background
        mean = bright.mean(0)
        assert int(np.argmin(((colours - mean) ** 2).sum(1))) == k  # its colour names its class

    # Class 0 moves right (unwrapped x-centroid increases); class 1 moves down.
    def centroid(frame: np.ndarray, axis: int) -> float:
        mask = frame.max(-1) > 100
        pos = np.nonzero(mask)[axis]
        angles = pos / frame.shape[axis] * 2 * np.pi  # circular mean: the shape wraps around the edges
        return float(np.angle(np.exp(1j * angles).mean()))

    step_x = np.angle(np.exp(1j * (centroid(videos[0][3], 1) - centroid(videos[0][0], 1))))
    step_y = np.angle(np.exp(1j * (centroid(videos[1][3], 0) - centroid(videos[1][0], 0))))
    assert step_x > 0.05 and step_y > 0.05
    first = write_synthetic_dataset(tmp_path / "a", num_classes=2, videos_per_class=1, num_frames=8, size=32)
    second = write_synthetic_dataset(tmp_path / "b", num_classes=2, videos_per_class=1, num_frames=8, size=32)
    files = sorted(p.relative_to(first) for p in first.rglob("*.mp4"))
    assert [str(f) for f in files] == ["000_square_right/video_0000.mp4", "001_circle_down/video_0000.mp4"]
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
