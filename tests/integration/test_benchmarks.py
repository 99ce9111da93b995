"""Smoke tests of the model benchmarks (benchmarks.vqgan/ldm/sampling) and their timing helper.

They check that each script runs end to end on the tiny configs and reports what it claims (columns, keys,
parameter counts, the step-scaling arithmetic), that a timed step is the trainer's micro-step (the
weights held by the engines move, with the optimiser the config names), not how fast anything is.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from benchmarks import common, ldm, sampling, steps, vqgan
from vqvdm_scale.config import ConfigError
from vqvdm_scale.models.tokenizer import DiscriminatorConfig, Discriminators, VQTokenizer, tokenizer_preset
from vqvdm_scale.models.unet.model import UNet3D
from vqvdm_scale.train.ldm import LDMRunConfig
from vqvdm_scale.train.vqgan import VQGANRunConfig

TINY = ["--config", "vqgan/tiny.yaml", "--repeats", "1", "--warmup", "0", "--batch", "1"]


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
    out = vqgan.main(TINY)
    text = capsys.readouterr().out
    assert "machine:" in text and "generator_step" in text and "autoencoder AdamW" in text
    for col in vqgan.COLUMNS:
        assert col in text
    r = out["results"]["vqgan/tiny.yaml"]
    assert r["params"] == _n_params(VQTokenizer(tokenizer_preset("tiny")))
    assert r["disc_params"] == _n_params(Discriminators(DiscriminatorConfig(base_channels=16, num_layers=2)))
    assert r["clip"] == [16, 32, 32] and r["latent"] == [8, 4, 8, 8] and r["batch"] == 1
    assert (r["precision"], r["zero_stage"]) == ("fp32", 2)  # tiny.yaml's train section
    assert r["optimizers"] == {"autoencoder": "AdamW", "discriminator": "AdamW"}
    # Both updates stepped their engine: the GAN is on at the step the benchmark hands the step functions.
    assert r["weights_changed"] == {"autoencoder": True, "discriminator": True}
    assert r["flops_fwd_per_clip"] > 0 and r["train_step"]["median_s"] > 0 and r["infer_clips_per_s"] > 0
    with pytest.raises(ConfigError, match="no shipped config"):
        vqgan.main(["--config", "vqgan/nope.yaml"])


def test_train_steps_use_the_configs_optimiser() -> None:
    """The engines hold torch.optim.AdamW with the config's hyper-parameters, and a step moves every engine."""
    cfg = steps.load_stage_config(VQGANRunConfig, "vqgan/tiny.yaml", ["train.optim.lr=0.002"])
    step = steps.vqgan_train_step(cfg, batch=1)
    for engine in step.engines.values():
        opt = steps.torch_optimizer(engine)
        assert type(opt) is torch.optim.AdamW
        group = opt.param_groups[0]
        assert tuple(group["betas"]) == tuple(cfg.train.optim.betas) == (0.5, 0.9)  # vqgan/base.yaml's betas
        assert group["initial_lr"] == pytest.approx(0.002)
    before = step.snapshot()
    logs = step()
    assert logs is not None and "psnr_batch" in logs  # the generator step function's scalars
    assert step.changed_since(before) == {"autoencoder": True, "discriminator": True}

    lcfg = steps.load_stage_config(
        LDMRunConfig, "ldm/tiny.yaml", ["model.in_channels=8", "model.num_classes=4"]
    )
    lstep = steps.ldm_train_step(lcfg, [8, 4, 8, 8], batch=2)
    assert type(steps.torch_optimizer(lstep.engines["unet"])) is torch.optim.AdamW
    before = lstep.snapshot()
    logs = lstep()
    assert logs is not None and "loss" in logs  # diffusion_step's scalars
    assert lstep.changed_since(before) == {"unet": True}
    assert not lstep.changed_since(lstep.snapshot())["unet"]  # no step, no change: the check can fail


def test_ldm_bench_tiny_in_fresh_processes(capsys: pytest.CaptureFixture[str]) -> None:
    out = ldm.main(["--config", "ldm/tiny.yaml", "--repeats", "1", "--warmup", "0", "--batch", "1"])
    text = capsys.readouterr().out
    assert "machine:" in text and "pixel/latent training step time" in text and "optimisers: AdamW" in text
    for col in ldm.COLUMNS:
        assert col in text
    latent, pixel = out["results"]
    assert latent["kind"] == "latent" and latent["shape"] == [8, 4, 8, 8]
    assert (
        pixel["kind"] == "pixel" and pixel["shape"] == [3, 16, 16, 16] and pixel["block_type"] == "factorized"
    )
    for r in (latent, pixel):
        assert r["isolated"] and r["batch"] == 1
        assert r["optimizers"] == {"unet": "AdamW"} and r["weights_changed"] == {"unet": True}
        cfg, _, _ = ldm.network(r)
        assert r["params"] == _n_params(UNet3D(cfg.model))
        assert r["peak_rss_gib"] > 0 and r["flops_fb_per_sample"] > 0 and r["samples_per_s"] > 0
    cmp = out["comparisons"]["ldm/tiny.yaml"]
    assert cmp["step_time_ratio"] == pytest.approx(pixel["step"]["median_s"] / latent["step"]["median_s"])
    assert cmp["flop_ratio"] > 1  # 16x16x16 RGB pixels are a larger input than 8x4x8x8 latents


def test_sampling_bench_tiny_scales_timed_steps(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--config", "ldm/tiny.yaml", "--steps", "3", "--timed-steps", "1", "--repeats", "1"]
    out = sampling.main([*argv, "--guidance", "4"])
    text = capsys.readouterr().out
    assert "machine:" in text and "(scaled)" in text and "35.26" in text and "generate_latents" in text
    for col in sampling.COLUMNS:
        assert col in text
    lat, pix = out["results"]["latent"], out["results"]["pixel"]
    assert lat["timed_steps"] == 1 and lat["scaled"] and lat["video"] == [16, 32, 32] and lat["guidance"] == 4
    assert lat["decode_s"] > 0 and lat["s_per_video"] == pytest.approx(
        3 * lat["s_per_step"] + lat["decode_s"]
    )
    assert pix["decode_s"] == 0 and pix["video"] == [16, 16, 16]
    assert pix["s_per_video"] == pytest.approx(3 * pix["s_per_step"])
    assert out["ratio"] == pytest.approx(pix["s_per_video"] / lat["s_per_video"])
    assert out["paper_ratio"] == pytest.approx(35.26 / 3.95)
    with pytest.raises(ValueError, match="single pass"):
        sampling.main([*argv, "--guidance", "1"])


def test_evaluate_benchmark_times_the_detectors_and_the_statistics() -> None:
    """benchmarks.evaluate runs the real I3D/C3D (random weights) and the FVD/KVD maths, and estimates a
    whole protocol's detector time from them."""
    from benchmarks import evaluate

    r = evaluate.main(["--resolution", "16", "--batch", "1", "--features", "64", "--repeats", "1"])
    assert r["i3d_s_per_clip"] > 0 and r["c3d_s_per_clip"] > 0 and r["fvd_s"] > 0 and r["kvd_s"] > 0
    assert r["protocol_detector_s"] == pytest.approx(4096 * r["i3d_s_per_clip"] + 2048 * r["c3d_s_per_clip"])


def test_long_video_benchmark_needs_a_finished_quickstart(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from benchmarks import long_video

    with pytest.raises(SystemExit) as e:
        long_video.main(["--quickstart", str(tmp_path / "nothing"), "--work", str(tmp_path / "w")])
    assert e.value.code == 2 and "is not a finished quickstart" in capsys.readouterr().out


def test_sampler_steps_benchmark_judges_matches_by_the_measured_noise(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from benchmarks import sampler_steps as ss

    def r(sampler: str, steps: int, acc: float, to_ref: float, to_real: float) -> dict:
        keys = ("class_accuracy", "fvd_to_reference", "fvd_to_real")
        return {"sampler": sampler, "steps": steps, **dict(zip(keys, (acc, to_ref, to_real), strict=True))}

    refs = [r("ddim", 100, 0.75, 0.0, 10.0), r("ddim", 100, 0.70, 3.0, 12.0), r("ddim", 100, 0.80, 2.0, 9.0)]
    noise = ss.noise_of(refs)
    assert noise == pytest.approx({"class_accuracy": 0.05, "fvd_to_real": 2.0, "fvd_to_reference": 3.0})
    rows = [
        r("dpmpp2m", 5, 0.60, 9.0, 20.0),  # off on every count
        r("dpmpp2m", 10, 0.75, 3.5, 10.5),  # within the noise but for its FVD to the reference
        r("dpmpp2m", 15, 0.72, 1.0, 11.9),
        r("dpmpp2m", 20, 0.76, 0.5, 10.1),
    ]
    for row in rows:
        row["matches"] = ss.matches(row, refs[0], noise)
    assert [row["matches"] for row in rows] == [False, False, True, True]
    assert ss.smallest_match(rows, "dpmpp2m") == 15 and ss.smallest_match(rows, "ddim") is None

    for argv, said in (
        (["--quickstart", str(tmp_path / "nothing")], "is not a finished quickstart"),
        (["--quickstart", str(tmp_path), "--steps", "0,5"], "--steps takes"),
    ):
        with pytest.raises(SystemExit) as e:
            ss.main(argv)
        assert e.value.code == 2 and said in capsys.readouterr().out


def test_peers_benchmark_says_what_is_missing_in_one_line(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from benchmarks import peers

    for argv, said in (
        (["--only", "tokenizer"], "--tats CHECKOUT is needed for tokenizer"),
        (["--only", "speed"], "--only takes sampling, tokenizer, train, got speed"),
        (["--only", "train", "--vdm", str(tmp_path)], "video_diffusion_pytorch does not exist"),
    ):
        with pytest.raises(SystemExit) as e:
            peers.main(argv)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and said in err and len(err.splitlines()) == 1, err


PEERS = {k: os.environ.get(f"VQVDM_PEER_{k.upper()}", "") for k in ("vdm", "tats")}


@pytest.mark.skipif(not all(PEERS.values()), reason="VQVDM_PEER_VDM / VQVDM_PEER_TATS: the peers' checkouts")
@pytest.mark.timeout(600)
def test_peers_benchmark_tiny_runs_both_sides_of_every_pair(capsys: pytest.CaptureFixture[str]) -> None:
    """Tiny networks of both sides (random weights), each in its own process: the plumbing, not the speed."""
    from benchmarks import peers

    argv = ["--tiny", "--steps", "4", "--timed-steps", "2", "--vdm", PEERS["vdm"], "--tats", PEERS["tats"]]
    out = peers.main(argv)
    assert set(out["results"]) == set(peers.PAIRS)
    for pair, got in out["results"].items():
        assert got["ratio"]["x"] == pytest.approx(got["peer"]["seconds"] / got["ours"]["seconds"])
        assert all(got[s]["seconds"] > 0 and got[s]["params"] > 0 for s in ("ours", "peer")), pair
    sampling_ = out["results"]["sampling"]
    assert sampling_["peer"]["seconds"] == pytest.approx(4 * sampling_["peer"]["s_per_step"])
    assert sampling_["ours"]["decode_s"] > 0 and sampling_["peer"]["video"] == [16, 16, 16]
    assert out["results"]["train"]["peer"]["what"].endswith("4 clips of 16px")
    assert "ours faster" in capsys.readouterr().out


def test_latency_proxy_holds_each_request() -> None:
    import socket
    import threading

    from benchmarks.object_store import start_latency_proxy

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()

        def echo() -> None:
            conn, _ = server.accept()
            with conn:
                while data := conn.recv(1024):
                    conn.sendall(data)

        threading.Thread(target=echo, daemon=True).start()
        url = start_latency_proxy(server.getsockname()[1], 0.2)
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as client:
            for request in (b"GET /a", b"GET /b"):
                t0 = time.perf_counter()
                client.sendall(request)
                assert client.recv(1024) == request
                assert time.perf_counter() - t0 >= 0.2  # each request pays the round trip


def test_object_store_bench_tiny_times_shards_ahead_behind_a_slow_store(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import fsspec.config

    from benchmarks import object_store

    # the benchmark sets the endpoint and credentials in this process: give them back afterwards
    monkeypatch.setitem(fsspec.config.conf, "s3", {})
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.setenv(name, os.environ.get(name, ""))
    args = ["--seconds", "0.5", "--workers", "1", "--resolution", "64", "--frames", "8"]
    args += ["--block-sizes", "5242880"]
    object_store.main([*args, "--ahead", "0,1", "--latency-ms", "20"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("loader")]
    assert len(lines) == 3 and "local disk" in lines[0]
    assert "S3 +20 ms" in lines[1] and "0 shard(s) ahead" in lines[1] and "1 shard(s) ahead" in lines[2]
