"""Clip-loader throughput: clips/s with 1 and 2 loader workers, against the raw PyAV decode ceiling.

``python -m benchmarks.data [--shards URL] [--seconds S]``. Without ``--shards`` it writes the
synthetic dataset (128 px, 32- and 48-frame mp4 videos) to a temporary folder first.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from vqvdm_scale.data import ClipLoaderConfig, build_clip_loader, shard_sample_pipeline
from vqvdm_scale.data.urls import resolve_shards


def make_bench_shards(root: Path, resolution: int = 128) -> str:
    """Synthetic mp4 shards with 32- and 48-frame videos under ``root``; returns a comma-list shard spec."""
    from vqvdm_scale.prep.synthetic import make_synthetic_shards

    specs = []
    for frames in (32, 48):
        out = root / f"synthetic_{frames}f"
        make_synthetic_shards(
            str(out),
            num_classes=4,
            videos_per_class=6,
            num_frames=frames,
            size=resolution,
            resolution=resolution,
            shard_size=6,
            seed=frames,
        )
        specs.append(str(out))
    return ",".join(specs)


def loader_clips_per_s(
    shards: str,
    workers: int,
    seconds: float,
    frames: int,
    resolution: int,
    batch_size: int,
    shards_ahead: int = 0,
) -> float:
    """Clips/s the train-mode clip loader delivers (after its first batch, which pays worker start-up)."""
    cfg = ClipLoaderConfig(
        train_shards=shards,
        frames=frames,
        resolution=resolution,
        num_workers=workers,
        resampled=True,  # endless stream: the measurement is time-bound, not epoch-bound
        shuffle_buffer=16,
        short_videos="loop",
        shards_ahead=shards_ahead,
    )
    it = iter(build_clip_loader(cfg, batch_size=batch_size, train=True))
    next(it)
    clips, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        clips += len(next(it)["key"])
    return clips / (time.perf_counter() - start)


def decode_ceiling(urls: Sequence[str], seconds: float, span: int | None = None) -> tuple[float, float]:
    """(videos/s, frames/s) of PyAV decoding the shards' mp4 bytes in a loop in this process.

    With ``span`` each video is decoded only up to the end of a random ``span``-frame window, as the
    loader does; without it, whole videos are decoded.
    """
    from vqvdm_scale.data.video_io import decode_mp4_bytes

    samples = [
        (s["mp4"], int(json.loads(s["json"]).get("num_frames", 0)))
        for s in shard_sample_pipeline(urls, rank=0, world_size=1, shuffle_shards=False)
        if "mp4" in s
    ]
    if not samples:
        raise ValueError(
            "these shards hold no mp4 samples (npy storage): there is no decode ceiling to measure"
        )
    rng = random.Random(0)
    videos = frames = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        blob, num_frames = samples[videos % len(samples)]
        end = None if span is None or num_frames < span else rng.randint(span, num_frames)
        decoded, _ = decode_mp4_bytes(blob, max_frames=end)
        videos += 1
        frames += decoded.shape[0]
    elapsed = time.perf_counter() - start
    return videos / elapsed, frames / elapsed


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print one line per measurement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shards", default=None, help="shard dir / brace pattern / comma list (default: synthetic)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", default="1,2", help="comma list of loader worker counts")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vqvdm_bench_data_") as tmp:
        shards = args.shards
        if shards is None:
            t0 = time.perf_counter()
            shards = make_bench_shards(Path(tmp), args.resolution)
            print(f"synthetic shards written in {time.perf_counter() - t0:.1f}s")
        urls = resolve_shards(shards)
        print(
            f"{len(urls)} shards; clips {args.frames}x{args.resolution}x{args.resolution}, batch {args.batch_size}"
        )
        for workers in (int(w) for w in args.workers.split(",")):
            rate = loader_clips_per_s(
                shards, workers, args.seconds, args.frames, args.resolution, args.batch_size
            )
            print(f"loader, {workers} worker(s): {rate:8.1f} clips/s")
        videos, frames = decode_ceiling(urls, args.seconds)
        print(f"PyAV decode, whole videos (1 process): {videos:8.1f} clips/s ({frames:.0f} frames/s)")
        videos, frames = decode_ceiling(urls, args.seconds, span=args.frames)
        print(f"PyAV decode, up to the window end (1 process): {videos:8.1f} clips/s ({frames:.0f} frames/s)")


if __name__ == "__main__":
    main()
