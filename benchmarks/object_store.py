"""Clip-loader throughput from a local S3 endpoint against local disk, as a ratio, per s3fs block size.

``python -m benchmarks.object_store [--seconds S] [--workers 1,2] [--block-sizes 5242880,1048576]``.
It writes the synthetic benchmark shards of :mod:`benchmarks.data`, copies them to moto's S3 server
started on 127.0.0.1 (``pip install -e '.[dev]'``), and times the train-mode clip loader on both. A local
endpoint measures what the S3 client path costs (HTTP, s3fs buffering), not a real store's latency.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import fsspec.config

from benchmarks.data import loader_clips_per_s, make_bench_shards


def _start_moto() -> tuple[subprocess.Popen[bytes], str]:
    """moto's S3 server on a free localhost port, with dummy credentials in this process's environment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
            os.environ["AWS_ENDPOINT_URL"] = url
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"moto server did not start on {url}")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print one line per measurement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", default="1,2", help="comma list of loader worker counts")
    parser.add_argument(
        "--block-sizes", default="5242880,1048576", help="comma list of s3fs default_block_size in bytes"
    )
    args = parser.parse_args(argv)
    import s3fs

    proc, url = _start_moto()
    try:
        with tempfile.TemporaryDirectory(prefix="vqvdm_bench_s3_") as tmp:
            local = make_bench_shards(Path(tmp), args.resolution)
            fs = s3fs.S3FileSystem(endpoint_url=url)
            fs.mkdir("bench")
            remote = []
            for d in local.split(","):
                fs.put(d, f"bench/{Path(d).name}", recursive=True)
                remote.append(f"s3://bench/{Path(d).name}")
            print(
                f"clips {args.frames}x{args.resolution}x{args.resolution}, batch {args.batch_size}; S3 at {url}"
            )
            geometry = (args.frames, args.resolution, args.batch_size)
            for workers in (int(w) for w in args.workers.split(",")):
                disk = loader_clips_per_s(local, workers, args.seconds, *geometry)
                print(f"loader, {workers} worker(s), local disk: {disk:8.1f} clips/s")
                for block in (int(b) for b in args.block_sizes.split(",")):
                    fsspec.config.conf.setdefault("s3", {})["default_block_size"] = (
                        block  # forked workers see it
                    )
                    rate = loader_clips_per_s(",".join(remote), workers, args.seconds, *geometry)
                    print(
                        f"loader, {workers} worker(s), S3, block {block >> 10} KiB: {rate:8.1f} clips/s "
                        f"({rate / disk:.2f} of local disk)"
                    )
    finally:
        proc.kill()


if __name__ == "__main__":
    main()
