"""make_shards reports the classes it found, with the videos written per class (issue 14, item 8)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from vqvdm_scale.data.video_io import encode_mp4
from vqvdm_scale.prep.make_shards import ShardsConfig, class_summary, main


def _video(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_mp4(np.full((16, 16, 16, 3), value, np.uint8), 10))


def _run(input_dir: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[dict, list[str]]:
    capsys.readouterr()
    manifest = main(ShardsConfig(input=str(input_dir), output=str(out), resolution=16, progress=False))
    lines = capsys.readouterr().out.strip().splitlines()
    return manifest, lines


def test_class_folders_are_listed_with_their_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "videos"
    for name, value in [("Walk/a.mp4", 10), ("Walk/b.mp4", 20), ("Run/c.mp4", 30)]:
        _video(root / name, value)
    (root / "Run" / "broken.mp4").write_bytes(b"")  # skipped as zero_byte: not counted
    manifest, lines = _run(root, tmp_path / "out", capsys)
    assert manifest["classes"] == ["Run", "Walk"] and manifest["num_samples"] == 3
    at = next(i for i, line in enumerate(lines) if "2 classes" in line)
    assert lines[at] == "make_shards: 2 classes (label, name, videos written):"
    assert [line.split() for line in lines[at + 1 :]] == [["0", "Run", "1"], ["1", "Walk", "2"]]
    assert not [line for line in lines if "flat folder" in line]


def test_a_flat_folder_says_it_made_one_class(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "my_videos"
    for i in range(3):
        _video(root / f"clip{i}.mp4", 40 * i)
    manifest, lines = _run(root, tmp_path / "out", capsys)
    assert manifest["classes"] == ["my_videos"]
    assert lines[-1].startswith(
        "make_shards: one class: videos are in a flat folder; put them in <class>/ subfolders for "
        "class-conditional training"
    )
    assert "'my_videos': 3 videos" in lines[-1]


def test_one_class_folder_is_not_called_flat(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _video(tmp_path / "videos" / "Only" / "a.mp4", 50)
    _, lines = _run(tmp_path / "videos", tmp_path / "out", capsys)
    assert lines[-2:] == ["make_shards: 1 class (label, name, videos written):", "    0 Only 1"]


def test_long_class_lists_stop_at_twenty() -> None:
    classes = [f"class{i:02d}" for i in range(25)]
    counts = Counter({c: i for i, c in enumerate(classes)})
    lines = class_summary(classes, counts, flat_folder=False)
    assert lines[0] == "make_shards: 25 classes (label, name, videos written):"
    assert len(lines) == 1 + 20 + 1
    assert lines[1].split() == ["0", "class00", "0"] and lines[20].split() == ["19", "class19", "19"]
    assert lines[-1] == f"  ... and 5 more ({sum(range(20, 25))} videos)"
