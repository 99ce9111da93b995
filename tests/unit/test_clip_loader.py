"""The clip loader: shard URL forms, fsspec (memory://) reading, rank/worker splitting, corrupt data,
exact resume, clip windows. Shards are tiny npy-storage tars written here per docs/CONTRACTS.md."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import torch
import webdataset as wds

from tests.helpers import run_on_ranks
from vqvdm_scale.config import ConfigError
from vqvdm_scale.data import (
    ClipLoaderConfig,
    LoaderState,
    ResumableLoader,
    build_clip_loader,
    eval_windows,
    resolve_shards,
)
from vqvdm_scale.formats.fs import read_manifest

H, W = 12, 16  # 4:3 frames; short side 12 is the crop size unless a test asks for a resize


def video_frames(index: int, num_frames: int) -> np.ndarray:
    """uint8 [T, H, W, 3] whose frame t is filled with (index * 37 + t) % 251: windows are checkable."""
    values = (index * 37 + np.arange(num_frames)) % 251
    frames = np.broadcast_to(values[:, None, None, None], (num_frames, H, W, 3)).astype(np.uint8)
    frames = frames.copy()
    frames[:, :, : W // 2, 0] = 255  # left half red: shows whether a clip was flipped
    return frames


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def write_shards(
    dir_url: str,
    counts: list[int],
    num_frames: int | list[int] = 20,
    corrupt: tuple[int, ...] = (),
    listed_extra: int = 0,
) -> list[str]:
    """Write npy-storage shards with ``counts[i]`` samples each + manifest.json; return all keys."""
    keys: list[str] = []
    entries = []
    index = 0
    for s, count in enumerate(counts):
        name = f"shard-{s:06d}.tar"
        with fsspec.open(f"{dir_url}/{name}", "wb") as f:
            with wds.TarWriter(f) as tw:
                for _ in range(count):
                    t = num_frames if isinstance(num_frames, int) else num_frames[index]
                    key = f"{index:08d}_class{index % 5}_v{index}"
                    meta = {
                        "label": index % 5,
                        "class_name": f"class{index % 5}",
                        "fps": 25.0,
                        "num_frames": t + listed_extra,
                        "source": f"class{index % 5}/v{index}.avi",
                        "orig_size": [H, W],
                        "size": [H, W],
                    }
                    data = (
                        b"this is not an npy file" if index in corrupt else npy_bytes(video_frames(index, t))
                    )
                    tw.write({"__key__": key, "npy": data, "json": json.dumps(meta).encode()})
                    keys.append(key)
                    index += 1
        with fsspec.open(f"{dir_url}/{name}", "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        entries.append({"name": name, "count": count, "sha256": sha})
    manifest = {
        "format": "vqvdm-video-shards/1",
        "num_samples": index,
        "shards": entries,
        "classes": [f"class{i}" for i in range(5)],
        "params": {"storage": "npy"},
        "skipped": [],
        "skip_counts": {},
    }
    with fsspec.open(f"{dir_url}/manifest.json", "w") as f:
        f.write(json.dumps(manifest))
    return keys


@dataclass
class BatchedConfig(ClipLoaderConfig):
    """The loader config plus the batch size these tests build it with (trainers pass micro_batch_size)."""

    batch_size: int = 3


def build_loader(cfg: ClipLoaderConfig, **kw: Any) -> ResumableLoader:
    """build_clip_loader with the test config's batch size."""
    return build_clip_loader(cfg, batch_size=getattr(cfg, "batch_size", 3), **kw)


def cfg_for(shards: str, **kw: object) -> BatchedConfig:
    base: dict[str, object] = dict(
        train_shards=shards,
        eval_shards=shards,
        frames=4,
        frame_stride=2,
        resolution=12,
        num_workers=0,
        shuffle_buffer=8,
        drop_last=False,
        seed=7,
    )
    base.update(kw)
    return BatchedConfig(**base)  # type: ignore[arg-type]


def all_keys(batches: list[dict]) -> list[str]:
    return [k for b in batches for k in b["key"]]


# ------------------------------------------------------------------------------------------------ urls


def test_resolve_shards_forms(tmp_path: Path) -> None:
    d = tmp_path / "shards"
    d.mkdir()
    write_shards(str(d), [2, 2, 0, 2])
    expected = [str(d / f"shard-{i:06d}.tar") for i in (0, 1, 3)]  # the empty shard is left out
    assert resolve_shards(str(d)) == expected
    assert resolve_shards(str(d) + "/") == expected
    assert resolve_shards(str(d / "manifest.json")) == expected
    pattern = str(d / "shard-{000000..000003}.tar")
    assert resolve_shards(pattern) == [str(d / f"shard-{i:06d}.tar") for i in range(4)]
    assert resolve_shards(str(d / "shard-{000000,000001}.tar")) == expected[:2]  # comma inside braces
    assert resolve_shards([expected[0], expected[2]]) == [expected[0], expected[2]]
    assert resolve_shards(f"{expected[0]}, {expected[2]}") == [expected[0], expected[2]]
    assert resolve_shards(f"{expected[0]},{d / 'shard-{000001..000001}.tar'}") == expected[:2]
    assert read_manifest(str(d))["num_samples"] == 6

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        ValueError, match="expected a directory with manifest.json, a brace pattern, or a list"
    ):
        resolve_shards(str(empty))
    with pytest.raises(ValueError, match="no shards found at"):
        resolve_shards(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="do not exist"):
        resolve_shards(str(d / "shard-{000000..000009}.tar"))
    with pytest.raises(ValueError, match="no shards found"):
        resolve_shards("")


def test_memory_fs_shards_read_through_loader() -> None:
    root = f"memory://clips-{uuid.uuid4().hex[:8]}"
    keys = write_shards(root, [3, 4, 2, 3])
    assert resolve_shards(root) == [f"{root}/shard-{i:06d}.tar" for i in range(4)]
    for workers in (0, 2):  # forked workers see the parent's memory filesystem
        loader = build_loader(cfg_for(root, num_workers=workers), train=False)
        got = all_keys(list(loader))
        assert sorted(got) == sorted(keys)
        assert loader.stats["errors"] == 0


# ------------------------------------------------------------------------------------ batch contents


def test_batch_contents(tmp_path: Path) -> None:
    write_shards(str(tmp_path), [4, 4], num_frames=20)
    loader = build_loader(cfg_for(str(tmp_path), batch_size=4, drop_last=True), train=True)
    batches = list(loader.epoch_iter())
    assert len(batches) == 2
    for b in batches:
        assert set(b) == {"video", "label", "fps", "key"}
        v = b["video"]
        assert v.shape == (4, 3, 4, 12, 12) and v.dtype == torch.float32
        assert v.min() >= -1.0 and v.max() <= 1.0
        assert b["label"].dtype == torch.int64 and b["fps"].dtype == torch.float32
        for i, key in enumerate(b["key"]):
            index = int(key.split("_")[0])
            assert int(b["label"][i]) == index % 5
            assert float(b["fps"][i]) == pytest.approx(25.0 / 2)  # the clip's rate at stride 2
            # the green channel holds (index*37 + t) % 251: consecutive clip frames are 2 apart
            g = ((v[i, 1, :, 0, 0] + 1) * 127.5).round().long()
            start = (int(g[0]) - index * 37) % 251
            assert 0 <= start <= 20 - 7
            assert g.tolist() == [(index * 37 + start + 2 * t) % 251 for t in range(4)]


def test_eval_is_centred_and_resize_keeps_shape(tmp_path: Path) -> None:
    write_shards(str(tmp_path), [3], num_frames=21)
    loader = build_loader(cfg_for(str(tmp_path), resolution=8), train=False)
    (b,) = list(loader)
    assert b["video"].shape == (3, 3, 4, 8, 8)
    for i, key in enumerate(b["key"]):
        index = int(key.split("_")[0])
        g = ((b["video"][i, 1, :, 4, 4] + 1) * 127.5).round().long()
        start = (21 - 7) // 2
        assert g.tolist() == [(index * 37 + start + 2 * t) % 251 for t in range(4)]
        # centre crop of the red-left-half frame, not flipped: left columns red, right columns not
        red = b["video"][i, 0, 0, 4]
        assert red[0] > 0.99 and red[-1] < 0.99


def test_short_videos_skip_or_loop(tmp_path: Path) -> None:
    write_shards(str(tmp_path), [4], num_frames=[20, 5, 20, 3])  # span is 7 frames
    skip = build_loader(cfg_for(str(tmp_path)), train=False)
    assert sorted(all_keys(list(skip))) == ["00000000_class0_v0", "00000002_class2_v2"]
    assert skip.stats["skipped"] == 2 and skip.stats["errors"] == 0
    loop = build_loader(cfg_for(str(tmp_path), short_videos="loop"), train=False)
    batches = list(loop)
    assert len(all_keys(batches)) == 4
    i = batches[0]["key"].index("00000001_class1_v1")
    g = ((batches[0]["video"][i, 1, :, 0, 0] + 1) * 127.5).round().long()
    assert g.tolist() == [(37 + t) % 251 for t in (0, 2, 4, 1)]  # frames 0,2,4,6 of a 5-frame loop


def test_wrong_listed_frame_count_falls_back_to_real_frames(tmp_path: Path) -> None:
    write_shards(str(tmp_path), [4], num_frames=9, listed_extra=30)  # json claims 39 frames, has 9
    batches = list(build_loader(cfg_for(str(tmp_path)), train=True).epoch_iter())
    assert len(all_keys(batches)) == 4
    for b in batches:
        for i, key in enumerate(b["key"]):
            g = ((b["video"][i, 1, :, 0, 0] + 1) * 127.5).round().long()
            start = (int(g[0]) - int(key.split("_")[0]) * 37) % 251
            assert 0 <= start <= 9 - 7


def test_eval_windows() -> None:
    assert eval_windows(16, 16, 1) == [0]
    assert eval_windows(15, 16, 1) == []
    assert eval_windows(40, 16, 1) == [0, 16]
    assert eval_windows(48, 16, 1) == [0, 16, 32]
    assert eval_windows(31, 16, 2) == [0]  # span (16-1)*2+1 = 31
    assert eval_windows(63, 16, 2) == [0, 32]
    assert eval_windows(62, 16, 2) == [0]
    for n, t, s in [(100, 4, 3), (37, 5, 2), (9, 3, 4)]:
        starts = eval_windows(n, t, s)
        frames = [st + s * k for st in starts for k in range(t)]
        assert frames == sorted(set(frames)) and all(f < n for f in frames)  # no overlap, in range
        assert frames == list(range(0, len(frames) * s, s))  # one continuous stride-s grid
        assert starts[-1] + t * s + (t - 1) * s >= n  # no further window fits
    with pytest.raises(ValueError):
        eval_windows(10, 0, 1)


# ------------------------------------------------------------------------------ splitting and errors


def _rank_keys(rank: int, world_size: int, shards: str) -> list[str]:
    # fork: the ranks are spawned processes whose default would spawn (and re-import torch in) each worker
    cfg = cfg_for(shards, num_workers=2, batch_size=2, worker_start_method="fork")
    loader = build_loader(cfg, rank=rank, world_size=world_size, train=True)
    keys = all_keys(list(loader.epoch_iter()))
    assert loader.state.epoch == 1
    return keys


@pytest.mark.slow
def test_two_ranks_two_workers_see_every_sample_once(tmp_path: Path) -> None:
    keys = write_shards(str(tmp_path), [3, 2, 4, 3, 2, 3, 1, 2])  # 8 shards for 2 ranks x 2 workers
    per_rank = run_on_ranks(_rank_keys, world_size=2, timeout=120, args=(str(tmp_path),))
    seen = per_rank[0] + per_rank[1]
    assert len(seen) == len(set(seen)) and sorted(seen) == sorted(keys)
    assert per_rank[0] and per_rank[1]
    # the same split without processes: explicit rank/world_size reproduce it exactly
    assert [_rank_keys(r, 2, str(tmp_path)) for r in range(2)] == per_rank


def test_dataset_pickles_for_spawned_workers(tmp_path: Path) -> None:
    write_shards(str(tmp_path), [2, 2])
    loader = build_loader(cfg_for(str(tmp_path)), train=True)  # iterated here, in this process
    dataset = pickle.loads(pickle.dumps(loader._dataloader().dataset))
    assert all_keys(list(iter(dataset))[:-1]) == all_keys(list(iter(loader._dataloader().dataset))[:-1])


def test_too_few_shards_raise_quickly(tmp_path: Path) -> None:
    write_shards(str(tmp_path), [2, 2, 2])
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=r"3 shards cannot feed 2 ranks x 2 workers = 4 readers"):
        build_loader(cfg_for(str(tmp_path), num_workers=2), rank=0, world_size=2, train=True)
    assert time.monotonic() - t0 < 5
    build_loader(cfg_for(str(tmp_path), num_workers=2, resampled=True), rank=0, world_size=2)


def test_corrupt_member_and_shard_are_skipped_and_counted(tmp_path: Path) -> None:
    keys = write_shards(str(tmp_path), [3, 3, 3], corrupt=(1, 7))
    bad = tmp_path / "shard-000009.tar"
    bad.write_bytes(b"\x00garbage, not a tar" * 100)
    spec = f"{tmp_path},{bad}"
    for workers in (0, 2):
        loader = build_loader(cfg_for(spec, num_workers=workers, shuffle_buffer=0), train=True)
        got = all_keys(list(loader.epoch_iter()))
        assert sorted(got) == sorted(k for i, k in enumerate(keys) if i not in (1, 7))
        assert loader.stats["errors"] == 3  # two bad npy members + one unreadable shard


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match="epoch_samples only applies"):
        ClipLoaderConfig(train_shards="x", epoch_samples=100)
    with pytest.raises(ConfigError, match="frames"):
        ClipLoaderConfig(frames=0)
    with pytest.raises(ValueError, match="eval_shards is not set"):
        build_loader(ClipLoaderConfig(train_shards="x"), train=False)


# ------------------------------------------------------------------------------------------- resume


def _take(it, n: int) -> list[dict]:
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_exactly(tmp_path: Path, workers: int) -> None:
    # uneven shards: one worker runs dry before the other, which the resume must reproduce
    write_shards(str(tmp_path), [2, 5, 1, 4, 3, 2])
    cfg = cfg_for(str(tmp_path), num_workers=workers, batch_size=2, drop_last=True)
    reference = build_loader(cfg, train=True)
    ref = _take(iter(reference), 14)  # 17 samples: 8 batches per epoch at most, so this crosses an epoch
    assert reference.state.epoch == 1
    for k in (1, 4, 7, 9):
        first = build_loader(cfg, train=True)
        head = _take(iter(first), k)
        state = LoaderState.from_dict(json.loads(json.dumps(first.state_dict())))
        resumed = build_loader(cfg, train=True, state=state)
        tail = _take(iter(resumed), len(ref) - k)
        assert all_keys(head + tail) == all_keys(ref)
        for a, b in zip(head + tail, ref, strict=True):
            assert torch.equal(a["video"], b["video"])  # same windows, crops and flips
    # exact continuation + an epoch without duplicates = nothing of the epoch is replayed on resume
    epoch0 = all_keys(list(build_loader(cfg, train=True).epoch_iter()))
    assert len(epoch0) == len(set(epoch0)) >= 14 and all_keys(ref)[: len(epoch0)] == epoch0


def test_resume_does_not_replay_within_epoch(tmp_path: Path) -> None:
    write_shards(str(tmp_path), [4, 4, 4, 4])
    cfg = cfg_for(str(tmp_path), num_workers=2, batch_size=2)
    first = build_loader(cfg, train=True)
    it = first.epoch_iter()
    head = all_keys(_take(it, 3))
    it.close()
    resumed = build_loader(cfg, train=True, state=first.state)
    rest = all_keys(list(resumed.epoch_iter()))
    assert not set(head) & set(rest)
    assert sorted(head + rest) == sorted(all_keys(list(build_loader(cfg).epoch_iter())))
    # a different worker count cannot continue the epoch exactly: it moves to the next epoch instead
    with pytest.warns(UserWarning, match="layout changed"):
        moved = build_loader(cfg_for(str(tmp_path), num_workers=0), train=True, state=first.state)
    assert moved.state.epoch == 1 and moved.state.batches_consumed == 0


def test_resampled_epochs_and_reseeded_resume(tmp_path: Path) -> None:
    write_shards(str(tmp_path), [3, 3, 3])
    cfg = cfg_for(str(tmp_path), resampled=True, epoch_samples=6, batch_size=2, num_workers=0)
    loader = build_loader(cfg, train=True)
    it = iter(loader)
    head = _take(it, 4)
    assert loader.state.epoch == 1 and loader.state.batches_consumed == 1  # 3 batches per epoch
    again = _take(iter(build_loader(cfg, train=True)), 6)
    resumed = build_loader(cfg, train=True, state=loader.state)
    tail = _take(iter(resumed), 2)
    assert all_keys(head) == all_keys(again[:4])  # deterministic from the seed
    assert resumed.state.reseed != 0
    assert all_keys(tail) != all_keys(again[4:])  # fresh randomness after a resume, no replayed stream


# --------------------------------------------------------------------------------- real mp4 shards


def test_reads_synthetic_mp4_shards(tmp_path: Path) -> None:
    pytest.importorskip("av")
    from vqvdm_scale.prep.synthetic import make_synthetic_shards

    out = str(tmp_path / "mp4")
    manifest = make_synthetic_shards(
        out, num_classes=2, videos_per_class=3, num_frames=16, size=32, resolution=32, shard_size=2
    )
    assert len(resolve_shards(out)) == 3
    cfg = BatchedConfig(
        train_shards=out,
        eval_shards=out,
        frames=8,
        resolution=24,
        batch_size=2,
        num_workers=2,
        drop_last=False,
    )
    batches = list(build_loader(cfg, train=True).epoch_iter())
    assert sorted(all_keys(batches)) == sorted(all_keys(list(build_loader(cfg, train=False))))
    assert len(all_keys(batches)) == manifest["num_samples"] == 6
    for b in batches:
        assert b["video"].shape[1:] == (3, 8, 24, 24) and b["video"].abs().max() <= 1.0
        assert b["video"].std() > 0.05  # real decoded content, not a constant
        assert torch.all(b["fps"] == 8.0)  # the synthetic set's frame rate, stride 1
        names = [manifest["classes"][int(label)] for label in b["label"]]
        assert all(name in key for name, key in zip(names, b["key"], strict=True))


def test_package_import_does_not_load_pyav() -> None:
    code = "import sys, vqvdm_scale.data; assert 'av' not in sys.modules, 'PyAV imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_bench_data_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("av")
    from benchmarks.data import main
    from vqvdm_scale.prep.synthetic import make_synthetic_shards

    out = str(tmp_path / "mp4")
    make_synthetic_shards(out, num_classes=2, videos_per_class=2, num_frames=16, size=32, resolution=32)
    main(["--shards", out, "--seconds", "0.3", "--frames", "8", "--resolution", "32", "--workers", "0"])
    text = capsys.readouterr().out
    assert "loader, 0 worker(s)" in text and "clips/s" in text and "window end" in text
