"""Smoke tests of the model benchmarks (benchmarks.vqgan/ldm/sampling) and their timing helper.

They check that each script runs end to end in a tiny mode and reports what it claims (columns, keys,
parameter counts, the step-scaling arithmetic), not how fast anything is.
"""

from __future__ import annotations

import time

import pytest
import torch

from benchmarks import common, ldm, sampling, vqgan
from vqvdm_scale.models.tokenizer import DiscriminatorConfig, Discriminators, VQTokenizer, tokenizer_preset
from vqvdm_scale.models.unet.model import UNet3D


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_time_call_median_warmup_and_budget() -> None:
    calls: list[int] = []
    timing = common.time_call(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and timing.n == 3 and not timing.warmup_counted
    assert timing.median == sorted(timing.samples)[1]

    # A warm-up slower than long_call_s is kept as the first sample (no extra call for it).
    calls.clear()
    timing = common.time_call(lambda: (calls.append(1), time.sleep(0.01)), repeats=2, long_call_s=0.0)
    assert len(calls) == 2 and timing.n == 2 and timing.warmup_counted and timing.label() == "n=2*"

    # The budget stops repeating once another call would not fit, after at least one sample.
    timing = common.time_call(lambda: time.sleep(0.02), repeats=10, warmup=0, budget_s=0.03)
    assert timing.n == 1
    with pytest.raises(ValueError, match="repeats"):
        common.time_call(lambda: None, repeats=0)


def test_format_table_and_flops_on_meta() -> None:
    text = common.format_table(
        ["name", "value"], [{"name": "a", "value": "1.5"}, {"name": "long", "value": "10"}]
    )
    lines = text.splitlines()
    assert lines[0].startswith("name") and lines[2] == "a    |   1.5" and lines[3] == "long |    10"
    assert common.fmt(0.012345) == "0.0123" and common.fmt(12.345) == "12.3" and common.fmt(1234.5) == "1,234"

    def build() -> object:
        lin = torch.nn.Linear(16, 8)
        x = torch.randn(4, 16)
        return lambda: lin(x)

    assert common.count_flops_meta(build) == 2 * 4 * 16 * 8  # type: ignore[arg-type]


def test_vqgan_bench_tiny(capsys: pytest.CaptureFixture[str]) -> None:
    out = vqgan.main(["--presets", "tiny", "--repeats", "1", "--warmup", "0", "--batch", "1"])
    text = capsys.readouterr().out
    assert "machine:" in text and "LPIPS OFF" in text
    for col in vqgan.COLUMNS:
        assert col in text
    r = out["results"]["tiny"]
    assert r["params"] == _n_params(VQTokenizer(tokenizer_preset("tiny")))
    assert r["disc_params"] == _n_params(Discriminators(DiscriminatorConfig(base_channels=16, num_layers=2)))
    assert r["clip"] == [16, 32, 32] and r["latent"] == [8, 4, 8, 8] and r["batch"] == 1
    assert r["flops_fwd_per_clip"] > 0 and r["train_step"]["median_s"] > 0 and r["infer_clips_per_s"] > 0
    with pytest.raises(ValueError, match="unknown tokenizer preset"):
        vqgan.main(["--presets", "nope"])


def test_ldm_bench_tiny_in_fresh_processes(capsys: pytest.CaptureFixture[str]) -> None:
    out = ldm.main(["--presets", "tiny", "--repeats", "1", "--warmup", "0", "--batch", "1"])
    text = capsys.readouterr().out
    assert "machine:" in text and "pixel/latent training step time" in text
    for col in ldm.COLUMNS:
        assert col in text
    latent, pixel = out["results"]
    assert latent["kind"] == "latent" and latent["shape"] == [8, 4, 8, 8]
    assert (
        pixel["kind"] == "pixel" and pixel["shape"] == [3, 16, 16, 16] and pixel["block_type"] == "factorized"
    )
    for r in (latent, pixel):
        assert r["isolated"] and r["batch"] == 1
        assert r["params"] == _n_params(UNet3D(ldm.unet_config(r)))
        assert r["peak_rss_gib"] > 0 and r["flops_fb_per_sample"] > 0 and r["samples_per_s"] > 0
    cmp = out["comparisons"]["tiny"]
    assert cmp["step_time_ratio"] == pytest.approx(pixel["step"]["median_s"] / latent["step"]["median_s"])
    assert cmp["flop_ratio"] > 1  # 16x16x16 RGB pixels are a larger input than 8x4x8x8 latents


def test_sampling_bench_tiny_scales_timed_steps(capsys: pytest.CaptureFixture[str]) -> None:
    out = sampling.main(["--preset", "tiny", "--steps", "3", "--timed-steps", "1", "--repeats", "1"])
    text = capsys.readouterr().out
    assert "machine:" in text and "(scaled)" in text and "35.26" in text
    for col in sampling.COLUMNS:
        assert col in text
    lat, pix = out["results"]["latent"], out["results"]["pixel"]
    assert lat["timed_steps"] == 1 and lat["scaled"] and lat["video"] == [16, 32, 32]
    assert lat["decode_s"] > 0 and lat["s_per_video"] == pytest.approx(
        3 * lat["s_per_step"] + lat["decode_s"]
    )
    assert pix["decode_s"] == 0 and pix["video"] == [16, 16, 16]
    assert pix["s_per_video"] == pytest.approx(3 * pix["s_per_step"])
    assert out["ratio"] == pytest.approx(pix["s_per_video"] / lat["s_per_video"])
    assert out["paper_ratio"] == pytest.approx(35.26 / 3.95)
