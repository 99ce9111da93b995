"""What the shard writers put in names, reports and modes (issue 12, item 11).

Member names: a sample key taken from a source (an input shard's ``__key__``) used to reach the latent
shard's tar member names as it was, ``../`` included, so extracting a cache could write outside its
folder. URLs: the output URL, credentials and all, was written into manifest.json and printed. Modes: the
shards, sidecars and manifests get the umask's mode.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fsspec.core import url_to_fs

from vqvdm_scale.data.pipeline import shard_sample_pipeline
from vqvdm_scale.data.video_io import encode_mp4
from vqvdm_scale.formats.shard_io import member_key
from vqvdm_scale.prep.encode_latents import EncodeConfig
from vqvdm_scale.prep.encode_latents import main as encode
from vqvdm_scale.prep.make_shards import ShardsConfig
from vqvdm_scale.prep.make_shards import main as make_shards

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCY"
CLEAN_MEMBER = re.compile(r"^[A-Za-z0-9_-]+\.(npy|json)$")


def _tar_names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def test_member_key_cleans_what_a_source_key_carries() -> None:
    assert member_key("00000003_cls_video_mp4") == "00000003_cls_video_mp4"  # clean keys are kept
    dirty = [member_key(k) for k in ("../../evil", "sub/dir/clip", "sub_dir_clip", "a b\x00c")]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", k) for k in dirty)
    assert len(set(dirty)) == 4  # "sub/dir/clip" and "sub_dir_clip" stay apart


def test_latent_member_names_never_carry_a_path(tiny_latent_cache: dict[str, Path], tmp_path: Path) -> None:
    good = next(
        iter(
            shard_sample_pipeline(
                [str(tiny_latent_cache["videos"] / "shard-000000.tar")], rank=0, world_size=1
            )
        )
    )
    src = tmp_path / "src"
    src.mkdir()
    with tarfile.open(src / "shard-000000.tar", "w") as tar:
        for key in ("../../evil", "sub/dir/clip"):
            for ext in ("mp4", "json"):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(good[ext])
                tar.addfile(info, io.BytesIO(good[ext]))
    assert [
        s["__key__"] for s in shard_sample_pipeline([str(src / "shard-000000.tar")], rank=0, world_size=1)
    ] == [
        "../../evil",
        "sub/dir/clip",
    ]
    cfg = EncodeConfig(
        tokenizer=str(tiny_latent_cache["tokenizer"]),
        input=str(src / "shard-000000.tar"),
        output=str(tmp_path / "latents"),
        frames=8,
        resolution=16,
        progress=False,
    )
    manifest = encode(cfg)
    assert manifest["num_samples"] == 4
    names = _tar_names(tmp_path / "latents" / "latents-000000.tar")
    assert len(names) == 8 and all(CLEAN_MEMBER.match(n) for n in names), names


def _one_video(root: Path) -> Path:
    root.mkdir()
    (root / "clip.mp4").write_bytes(encode_mp4(np.full((16, 16, 16, 3), 80, np.uint8), 10))
    return root


def test_make_shards_masks_credentials_in_what_it_writes_and_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = f"memory://AKIAEXAMPLE:{SECRET}@bucket/hygiene"
    cfg = ShardsConfig(
        input=str(_one_video(tmp_path / "videos")), output=output, resolution=16, progress=False
    )
    make_shards(cfg)
    fs, root = url_to_fs(output)
    assert fs.exists(root + "/shard-000000.tar")  # the real URL was used to write
    for name in ("manifest.json", "shard-000000.json"):
        text = fs.cat(root + "/" + name).decode()
        assert SECRET not in text and "AKIAEXAMPLE" not in text, name
    assert json.loads(fs.cat(root + "/manifest.json"))["params"]["output"] == "memory://***@bucket/hygiene"
    out = capsys.readouterr().out
    assert SECRET not in out and "memory://***@bucket/hygiene" in out


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def test_shards_and_reports_follow_the_umask(tmp_path: Path, umask_027: None) -> None:
    out = tmp_path / "out"
    make_shards(
        ShardsConfig(
            input=str(_one_video(tmp_path / "videos")), output=str(out), resolution=16, progress=False
        )
    )
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes == dict.fromkeys(["manifest.json", "shard-000000.json", "shard-000000.tar"], 0o640)
