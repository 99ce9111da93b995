"""The whole pipeline end to end with reduced steps, and the files sampling writes.

Every stage is real (make_shards, VQGAN + export, encode_latents, LDM, DDIM sampling with CFG and
long-video extension); only the step counts are cut so the test runs in about a minute on CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import pytest

import vqvdm_scale.quickstart
from tests.helpers import run_on_ranks
from vqvdm_scale.config import ConfigError, load_config
from vqvdm_scale.config.shipped import shipped_config
from vqvdm_scale.quickstart import QuickstartConfig, main
from vqvdm_scale.sample.main import SampleRunConfig

# The reduced run every quickstart test uses (test_install runs it from a wheel).
TINY_RUN = [
    "vqgan_steps=3",
    "ldm_steps=3",
    "sample_steps=2",
    "videos_per_class=4",
    "classes=2",
    "videos_per_class_sampled=1",
    "long_clips=3",
    "long_overlap=1",
    "progress=false",
]


def _quickstart(rank: int, world: int, out: str) -> dict:
    return main(load_config(QuickstartConfig, None, [f"out={out}", *TINY_RUN]))


def _frames(path: Path) -> tuple[int, int, int]:
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return len(frames), frames[0].shape[0], frames[0].shape[1]


def test_quickstart_runs_every_stage_and_writes_playable_videos(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    summary = run_on_ranks(_quickstart, 1, timeout=600, args=(str(out),))[0]
    for part in (
        "shards/manifest.json",
        "vqgan/tokenizer.safetensors",
        "latents/manifest.json",
        "summary.json",
    ):
        assert (out / part).exists(), part
    assert list((out / "vqgan" / "tb").glob("events.*")) and list((out / "ldm" / "tb").glob("events.*"))
    # Inputs are recognised by the colour test: it is a meaningful yardstick for the trained models.
    assert summary["input_class_accuracy"] == 1.0
    cond = [Path(p) for p in summary["sample_files"]]
    long = [Path(p) for p in summary["long_files"]]
    assert len(cond) == 2 and len(long) == 2
    # 16-frame clips at 32x32; long videos: 3 clips of 4 latent frames sharing 1 -> 4 + 3 + 3 = 10 latent
    # frames, decoded 4 at a time by a tokenizer with temporal factor 4 -> 40 frames.
    assert all(_frames(p) == (16, 32, 32) for p in cond)
    assert all(_frames(p) == (40, 32, 32) for p in long)
    assert summary["long_video_frames"] == 40
    assert list((out / "samples" / "class_conditional").glob("*.gif"))
    assert list((out / "samples" / "class_conditional").glob("*.png"))
    assert (
        json.loads((out / "samples" / "long" / "sampling.json").read_text())["config"]["sample"]["num_clips"]
        == 3
    )


def test_sample_config_errors_say_what_to_do() -> None:
    with pytest.raises(ConfigError, match="exactly one of --run DIR or --checkpoint"):
        SampleRunConfig(tokenizer="t.safetensors")
    with pytest.raises(ConfigError, match="--tokenizer is required"):
        SampleRunConfig(run="r")


def test_quickstart_docstring_states_the_dataclass_defaults_and_uses_the_shipped_configs() -> None:
    doc = vqvdm_scale.quickstart.__doc__ or ""
    assert "{defaults}" not in doc
    for key in ("out", "classes", "vqgan_steps", "ldm_steps", "sample_steps", "guidance"):
        assert f"{key}={getattr(QuickstartConfig, key)}" in doc.split(), key
    cfg = QuickstartConfig()
    assert (cfg.vqgan_config, cfg.ldm_config) == (
        str(shipped_config("vqgan/tiny.yaml")),
        str(shipped_config("ldm/tiny.yaml")),
    )
