"""Benchmark the two shard storage options (H.264 mp4 vs raw uint8 npy): size, write time, decode time.

    python -m benchmarks.shards [--input DIR] [--resolution 128] [--max-frames N]

Uses ../shared/data/videos beside the checkout when present (else the built-in synthetic dataset). Decode
time is reported per 16-frame clip two ways: the whole sample decoded and divided over its 16-frame clips
(a loader that uses every window of a video), and only the first 16 frames decoded (one random window).
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np

from vqvdm_scale.data.synthetic import write_synthetic_dataset
from vqvdm_scale.data.video_io import decode_mp4_bytes
from vqvdm_scale.prep.make_shards import ShardsConfig, main

CLIP = 16
SHARED_VIDEOS = Path(__file__).resolve().parents[3] / "shared" / "data" / "videos"


def _samples(shard_dir: Path) -> list[tuple[str, bytes]]:
    """(storage, payload) of every sample in the shards of ``shard_dir``."""
    import tarfile

    out = []
    for tar_path in sorted(shard_dir.glob("shard-*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                ext = member.name.rsplit(".", 1)[-1]
                if ext in ("mp4", "npy"):
                    out.append((ext, tar.extractfile(member).read()))  # type: ignore[union-attr]
    return out


def bench_storage(
    input_dir: Path, work: Path, storage: str, resolution: int, max_frames: int | None
) -> dict[str, float]:
    """Shard ``input_dir`` with ``storage`` and time writing and decoding; returns the figures."""
    out = work / storage
    start = time.perf_counter()
    manifest = main(
        ShardsConfig(
            input=str(input_dir),
            output=str(out),
            resolution=resolution,
            storage=storage,
            max_frames=max_frames,
            shard_size=64,
            progress=False,
        )
    )  # type: ignore[arg-type]
    write_s = time.perf_counter() - start
    samples = _samples(out)
    total_bytes = sum(len(p) for _, p in samples)
    frames_total = 0
    whole_s = first_s = 0.0
    for ext, payload in samples:
        t0 = time.perf_counter()
        frames = (
            decode_mp4_bytes(payload)[0] if ext == "mp4" else np.load(io.BytesIO(payload), allow_pickle=False)
        )
        whole_s += time.perf_counter() - t0
        frames_total += frames.shape[0]
        t0 = time.perf_counter()
        if ext == "mp4":
            clip = decode_mp4_bytes(payload, max_frames=CLIP)[0]
        else:
            clip = np.load(io.BytesIO(payload), allow_pickle=False)[:CLIP].copy()
        first_s += time.perf_counter() - t0
        assert clip.shape[0] == CLIP
    n = manifest["num_samples"]
    return {
        "samples": n,
        "frames": frames_total,
        "mb_per_sample": total_bytes / n / 1e6,
        "kb_per_frame": total_bytes / frames_total / 1e3,
        "write_s_per_sample": write_s / n,
        "ms_per_clip_whole": 1e3 * whole_s * CLIP / frames_total,
        "ms_per_clip_first": 1e3 * first_s / n,
    }


def main_cli() -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--input", default=None, help="folder of videos (default: ../shared/data/videos or synthetic)"
    )
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--max-frames", type=int, default=None, help="cap frames per video (default: all)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vqvdm_bench_shards_") as tmp:
        work = Path(tmp)
        if args.input:
            source, input_dir = args.input, Path(args.input)
        elif SHARED_VIDEOS.is_dir():
            source, input_dir = str(SHARED_VIDEOS), SHARED_VIDEOS
        else:
            source = "synthetic (4 classes x 4 videos, 64 frames, 128 px)"
            input_dir = write_synthetic_dataset(work / "synthetic", 4, 4, num_frames=64, size=128)
        rows = {
            s: bench_storage(input_dir, work, s, args.resolution, args.max_frames) for s in ("mp4", "npy")
        }
    print(f"\nshard storage benchmark: {source}, short side {args.resolution}, 1 process")
    print(
        f"{'storage':8} {'samples':>7} {'frames':>7} {'MB/sample':>10} {'kB/frame':>9} {'write s/sample':>15} "
        f"{'ms/16f clip (whole)':>20} {'ms/16f clip (first 16)':>23}"
    )
    for name, r in rows.items():
        print(
            f"{name:8} {r['samples']:7d} {r['frames']:7d} {r['mb_per_sample']:10.2f} {r['kb_per_frame']:9.1f} "
            f"{r['write_s_per_sample']:15.2f} {r['ms_per_clip_whole']:20.2f} {r['ms_per_clip_first']:23.2f}"
        )
    ratio = rows["npy"]["mb_per_sample"] / rows["mp4"]["mb_per_sample"]
    print(f"npy is {ratio:.0f}x larger than mp4")


if __name__ == "__main__":
    main_cli()
