"""Latent-cache benchmark: encode throughput, bytes per cached sample, latent loader rate, raw one-sample-per-
member tar read rate, and the stage-2 step time with cached latents vs encoding video on the fly.

``python -m benchmarks.latents [--seconds S] [--resolution R] [--batch-size B] [--preset tiny]``.
Writes synthetic mp4 shards and a randomly initialised tokenizer of the given preset (speed does not depend
on the weights) to a temporary folder. The stage-2 step is the trainer's micro-step (``run_updates`` over
``diffusion_step`` on a ``build_engine`` engine) with the model, diffusion and train sections of
``--ldm-config`` (default ldm/tiny.yaml; channels and classes from the cache).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.steps import TrainStep, ldm_train_step, load_stage_config
from vqvdm_scale.data import ClipLoaderConfig, build_clip_loader, shard_sample_pipeline
from vqvdm_scale.data.latents import LatentLoaderConfig, build_latent_loader
from vqvdm_scale.data.urls import resolve_shards
from vqvdm_scale.formats.latent_shards import LatentStats
from vqvdm_scale.formats.tokenizer_export import export_tokenizer, load_tokenizer
from vqvdm_scale.models.tokenizer import VQTokenizer, tokenizer_preset
from vqvdm_scale.prep.encode_latents import EncodeConfig
from vqvdm_scale.prep.encode_latents import main as encode_main
from vqvdm_scale.prep.latent_writer import encode_clips
from vqvdm_scale.train.ldm import LDMRunConfig
from vqvdm_scale.train.loop import run_updates

NUM_CLASSES = 4


def _rate(step: Callable[[], int], seconds: float) -> float:
    """Items/s of ``step`` (returns items done) over ``seconds``, after one untimed warm-up call."""
    step()
    items, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        items += step()
    return items / (time.perf_counter() - start)


def latent_loader_rate(
    latents: str, fp: str, codebook: torch.Tensor, workers: int, batch: int, seconds: float
) -> float:
    """Samples/s the train-mode latent loader delivers (resampled: an endless stream)."""
    cfg = LatentLoaderConfig(train_latents=latents, num_workers=workers, resampled=True, shuffle_buffer=64)
    it = iter(build_latent_loader(cfg, batch_size=batch, tokenizer_fingerprint=fp, codebook=codebook))
    return _rate(lambda: len(next(it)["key"]), seconds)


def raw_member_rate(latents: str, seconds: float) -> float:
    """Samples/s of reading one-sample-per-member latent tars + np.load in one process (no torch, no batching)."""
    urls = resolve_shards(latents)

    def stream() -> Iterator[dict[str, Any]]:
        while True:
            yield from shard_sample_pipeline(urls, rank=0, world_size=1, shuffle_shards=False)

    it = stream()

    def step() -> int:
        sample = next(it)
        np.load(io.BytesIO(sample["npy"]), allow_pickle=False)
        return 1

    return _rate(step, seconds)


def bytes_per_sample(root: Path) -> tuple[float, int]:
    """(tar bytes per sample, npy payload bytes of one sample) of a latent cache folder."""
    tars = sorted(root.glob("latents-*.tar"))
    count = sum(1 for _ in shard_sample_pipeline([str(t) for t in tars], rank=0, world_size=1))
    first = next(iter(shard_sample_pipeline([str(tars[0])], rank=0, world_size=1)))
    return sum(t.stat().st_size for t in tars) / count, len(first["npy"])


def stage2_step_time(
    batches: Iterator[dict[str, Any]],
    to_latent: Callable[[dict[str, Any]], torch.Tensor],
    step: TrainStep,
    steps: int,
) -> float:
    """Seconds per stage-2 step (fetch batch -> latents -> the trainer's micro-step), mean of ``steps``."""

    def one() -> None:
        batch = next(batches)
        run_updates(step.updates, step.engines, {**batch, "latent": to_latent(batch)})

    one()  # warm-up (worker start, first allocation)
    start = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - start) / steps


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print one line per measurement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per rate measurement")
    parser.add_argument("--steps", type=int, default=10, help="stage-2 steps timed per mode")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--preset", default="tiny", help="tokenizer preset (randomly initialised)")
    parser.add_argument(
        "--ldm-config",
        default="ldm/tiny.yaml",
        help="stage-2 config whose model, diffusion and train are stepped",
    )
    parser.add_argument("--workers", default="1,2", help="comma list of latent loader worker counts")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (more than free cores thrashes)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from vqvdm_scale.prep.synthetic import make_synthetic_shards

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="vqvdm_bench_latents_") as tmp_dir:
        tmp = Path(tmp_dir)
        tcfg = tokenizer_preset(args.preset)
        export_tokenizer(VQTokenizer(tcfg), tcfg, tmp / "tok.safetensors")
        model, _, fp = load_tokenizer(tmp / "tok.safetensors")
        videos = tmp / "videos"
        make_synthetic_shards(
            str(videos),
            num_classes=NUM_CLASSES,
            videos_per_class=8,
            num_frames=48,
            size=args.resolution,
            resolution=args.resolution,
            shard_size=4,
        )
        print(
            f"tokenizer preset {args.preset!r} (random init), clips {args.frames}x{args.resolution}^2, "
            f"batch {args.batch_size}, torch threads {torch.get_num_threads()}"
        )

        caches: dict[str, Path] = {}
        for store in ("indices", "latents"):
            caches[store] = tmp / f"lat_{store}"
            cfg = EncodeConfig(
                tokenizer=str(tmp / "tok.safetensors"),
                input=str(videos),
                output=str(caches[store]),
                frames=args.frames,
                resolution=args.resolution,
                batch_size=8,
                store=store,
                progress=False,
                threads=torch.get_num_threads(),
            )
            start = time.perf_counter()
            manifest = encode_main(cfg)
            took = time.perf_counter() - start
            per, payload = bytes_per_sample(caches[store])
            print(
                f"encode_latents --store {store}: {manifest['num_samples']} clips in {took:.1f}s = "
                f"{manifest['num_samples'] / took:.1f} clips/s end to end (decode + encode + write); "
                f"{per:.0f} B/sample in tar ({payload} B npy payload, {manifest['dtype']} {manifest['sample_shape']})"
            )
        clips = torch.rand(8, 3, args.frames, args.resolution, args.resolution) * 2 - 1
        rate = _rate(lambda: int(encode_clips(model, clips)[0].shape[0]), args.seconds)
        print(f"tokenizer encode+quantize alone: {rate:.1f} clips/s (batch 8)")

        codebook = model.quantizer.codes()
        latents = str(caches["indices"])
        raw = raw_member_rate(latents, args.seconds)
        print(f"raw tar read, one sample per member (+ np.load): {raw:.0f} samples/s")
        for workers in (int(w) for w in args.workers.split(",")):
            r = latent_loader_rate(latents, fp, codebook, workers, args.batch_size, args.seconds)
            print(f"latent loader, {workers} worker(s): {r:.0f} samples/s")

        d = tcfg.latent_dim
        ldm = load_stage_config(LDMRunConfig, args.ldm_config)
        ldm = dataclasses.replace(
            ldm, model=dataclasses.replace(ldm.model, in_channels=d, num_classes=NUM_CLASSES)
        )
        unet = ldm_train_step(
            ldm, tcfg.latent_shape(args.frames, args.resolution, args.resolution), args.batch_size
        )
        lcfg = LatentLoaderConfig(
            train_latents=latents,
            num_workers=1,
            resampled=True,
            shuffle_buffer=64,
        )
        lat_loader = build_latent_loader(
            lcfg, batch_size=args.batch_size, tokenizer_fingerprint=fp, codebook=codebook
        )
        cached = stage2_step_time(iter(lat_loader), lambda b: b["latent"], unet, args.steps)
        manifest = lat_loader.manifest

        def encode_on_the_fly(batch: dict[str, Any]) -> torch.Tensor:
            with torch.no_grad():
                _, z = encode_clips(model, batch["video"])
            return LatentStats.from_manifest(manifest).normalize(z)

        ccfg = ClipLoaderConfig(
            train_shards=str(videos),
            frames=args.frames,
            resolution=args.resolution,
            num_workers=1,
            resampled=True,
            shuffle_buffer=16,
        )
        fly = stage2_step_time(
            iter(build_clip_loader(ccfg, batch_size=args.batch_size)), encode_on_the_fly, unet, args.steps
        )
        print(
            f"stage-2 step ({args.ldm_config}, batch {args.batch_size}): cached latents {cached * 1e3:.0f} ms, "
            f"decode+encode on the fly {fly * 1e3:.0f} ms -> on-the-fly / cached = {fly / cached:.2f}x"
        )
        steps_per_s = args.batch_size / cached
        print(
            f"packing: the step consumes {steps_per_s:.0f} samples/s; one-per-member reading gives {raw:.0f} "
            f"samples/s per reader ({raw / steps_per_s:.0f}x headroom): "
            f"{'no packing needed' if raw > 10 * steps_per_s else 'consider packing several samples per member'}"
        )


if __name__ == "__main__":
    main()
