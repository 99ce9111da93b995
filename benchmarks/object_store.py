"""Clip-loader throughput from a local S3 endpoint against local disk, as a ratio, per s3fs block size.

``python -m benchmarks.object_store [--seconds S] [--workers 1,2] [--block-sizes 5242880,1048576]
[--ahead 0,2] [--latency-ms 0,50]``. It writes the synthetic benchmark shards of :mod:`benchmarks.data`,
copies them to moto's S3 server started on 127.0.0.1 (``pip install -e '.[dev]'``), and times the
train-mode clip loader on both. A local endpoint measures what the S3 client path costs (HTTP, s3fs
buffering); ``--latency-ms`` puts a proxy in front of it that holds every request that long (a store's
round trip), to measure what ``data.shards_ahead`` hides of it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from itertools import product
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


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy one direction of a connection; each burst from the client (a request) is held ``delay`` s."""
    try:
        while chunk := await reader.read(1 << 16):
            if delay:
                await asyncio.sleep(delay)
            writer.write(chunk)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def start_latency_proxy(upstream_port: int, delay_s: float) -> str:
    """A localhost TCP proxy to ``upstream_port`` holding each request ``delay_s`` (a daemon thread); its URL."""
    loop = asyncio.new_event_loop()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", upstream_port)
        await asyncio.gather(_pipe(client_r, up_w, delay_s), _pipe(up_r, client_w, 0.0))

    server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0))
    threading.Thread(target=loop.run_forever, daemon=True, name="latency-proxy").start()
    return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


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
    parser.add_argument("--ahead", default="0", help="comma list of data.shards_ahead values")
    parser.add_argument("--latency-ms", default="0", help="comma list of round trips added by a proxy")
    args = parser.parse_args(argv)
    import s3fs

    proc, url = _start_moto()
    port = int(url.rsplit(":", 1)[1])
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
            for workers in _ints(args.workers):
                disk = loader_clips_per_s(local, workers, args.seconds, *geometry)
                print(f"loader, {workers} worker(s), local disk: {disk:8.1f} clips/s")
                for latency, block, ahead in product(
                    _ints(args.latency_ms), _ints(args.block_sizes), _ints(args.ahead)
                ):
                    endpoint = start_latency_proxy(port, latency / 1000) if latency else url
                    # in fsspec's conf (which forked workers see) both are s3fs arguments: a new instance
                    conf = fsspec.config.conf.setdefault("s3", {})
                    conf.update(endpoint_url=endpoint, default_block_size=block)
                    rate = loader_clips_per_s(",".join(remote), workers, args.seconds, *geometry, ahead)
                    print(
                        f"loader, {workers} worker(s), S3 +{latency} ms, block {block >> 10} KiB, "
                        f"{ahead} shard(s) ahead: {rate:8.1f} clips/s ({rate / disk:.2f} of local disk)"
                    )
    finally:
        proc.kill()


if __name__ == "__main__":
    main()
