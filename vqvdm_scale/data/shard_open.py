"""Open and expand shards (sha256 checked where known), re-opening a shard from its start after a network fault (no sample lost or repeated).

A network or timeout error while opening or reading a shard is not bad data: the shard is re-opened
after an exponential backoff and the files already passed on are skipped, so the stream continues at
the exact sample it stopped at (a tar shard reads back in the same order). Faults and retries are
counted apart from corrupt data. When the budget (:func:`~vqvdm_scale.formats.object_store.retry_policy`)
is spent, :class:`~vqvdm_scale.formats.faults.StorageUnreachable` ends the stream: the epoch's sample
set is never silently changed. Any other error goes to the handler (counted and skipped).

With ``ahead`` > 0 a reader downloads its next ``ahead`` shards whole, on as many threads, while it reads
the current one (each held in memory until read): the store's latency is then paid beside the decode,
not before it. A fault in such a download is retried like any other, by re-opening the shard.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Optional, Protocol

from webdataset.tariterators import tar_file_expander

from vqvdm_scale.config.text import redact
from vqvdm_scale.formats.faults import StorageUnreachable, is_network_error, unreachable_line
from vqvdm_scale.formats.fs import open_url
from vqvdm_scale.formats.object_store import RetryPolicy, retry_policy

log = logging.getLogger(__name__)

__all__ = ["FaultCounts", "ShardChecksumError", "open_tar_files", "read_verified"]


class ShardChecksumError(ValueError):
    """A shard whose bytes do not hash to the sha256 its manifest records (counted and skipped, like a bad tar)."""


def read_verified(stream: Any, url: str, sha256: str) -> io.BytesIO:
    """The whole of ``stream`` in memory, if it hashes to ``sha256``; else :class:`ShardChecksumError` naming ``url``.

    The shard is read before any of its samples is used: a mismatch found at its end would come after its
    samples had been trained on. Holding one shard per reader is cheap for latent shards (code indices).
    """
    data = stream.read()
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ShardChecksumError(
            f"shard {url} hashes to sha256 {actual[:16]}..., its manifest records {sha256[:16]}...: it is "
            "corrupt or was changed after writing (re-run the writer, which redoes such shards); skipped"
        )
    return io.BytesIO(data)


class FaultCounts(Protocol):
    """Where network faults and retries are counted (the reader's error counter)."""

    network: int
    retries: int


def _download(url: str) -> bytes:
    """The whole of one shard (a download ahead of its reading)."""
    with open_url(url, "rb") as f:
        data: bytes = f.read()
    return data


def _with_downloads(
    data: Iterable[dict[str, Any]], ahead: int
) -> Iterator[tuple[dict[str, Any], Optional[Future[bytes]]]]:
    """Each ``{"url"}`` item with its shard's download, kept ``ahead`` shards in front (None: not ahead)."""
    if ahead <= 0:
        yield from ((item, None) for item in data)
        return
    pool = ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="shards-ahead")
    pending: deque[tuple[dict[str, Any], Future[bytes]]] = deque()
    items = iter(data)
    try:
        while True:
            while len(pending) <= ahead:  # the shard about to be read + the ``ahead`` after it
                item = next(items, None)
                if item is None:
                    break
                pending.append((item, pool.submit(_download, item["url"])))
            if not pending:
                return
            yield pending.popleft()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _shard_files(
    item: dict[str, Any],
    handler: Callable[[BaseException], bool],
    checksums: Optional[Mapping[str, str]],
    download: Optional[Future[bytes]] = None,
) -> Iterator[dict[str, Any]]:
    """One shard's tar files (and webdataset's end-of-shard marker), read through fsspec or downloaded."""
    url = item["url"]
    stream = open_url(url, "rb") if download is None else io.BytesIO(download.result())
    try:
        if checksums and url in checksums:
            with stream:
                stream = read_verified(stream, url, checksums[url])
        yield from tar_file_expander([{**item, "stream": stream}], handler=handler)
    finally:
        stream.close()


def open_tar_files(
    data: Iterable[dict[str, Any]],
    handler: Callable[[BaseException], bool],
    faults: FaultCounts,
    checksums: Optional[Mapping[str, str]] = None,
    policy: Optional[RetryPolicy] = None,
    sleep: Callable[[float], None] = time.sleep,
    ahead: int = 0,
) -> Iterator[dict[str, Any]]:
    """``{"url"}`` items -> their tar files, each shard retried from its start after a network fault.

    ``handler`` gets every other error (a missing, unreadable, altered or corrupt shard) and says whether
    to go on; a URL in ``checksums`` is read whole and checked against its sha256 first. ``ahead``: shards
    downloaded in the background in front of the one being read.
    """
    policy = policy if policy is not None else retry_policy()

    def data_only(exn: BaseException) -> bool:
        if is_network_error(exn):
            raise exn  # leaves the tar reader, to be retried below
        return handler(exn)

    shards = _with_downloads(data, ahead)
    try:
        yield from _retried(shards, handler, data_only, faults, checksums, policy, sleep)
    finally:
        shards.close()


def _retried(
    shards: Iterator[tuple[dict[str, Any], Optional[Future[bytes]]]],
    handler: Callable[[BaseException], bool],
    data_only: Callable[[BaseException], bool],
    faults: FaultCounts,
    checksums: Optional[Mapping[str, str]],
    policy: RetryPolicy,
    sleep: Callable[[float], None],
) -> Iterator[dict[str, Any]]:
    """The loop of :func:`open_tar_files`: a failed download or read re-opens its shard after a backoff."""
    for item, download in shards:
        url = item["url"]
        passed = 0  # files of this shard already passed on, skipped after a re-open
        attempt = 0
        while True:
            attempt += 1
            try:
                files = _shard_files(item, data_only, checksums, download if attempt == 1 else None)
                for index, sample in enumerate(files):
                    if index >= passed:
                        passed += 1
                        yield sample
                break
            except Exception as exn:  # noqa: BLE001 - sorted into network faults and bad data
                if not is_network_error(exn):
                    exn.args = (*exn.args, url)
                    if handler(exn):
                        break
                    return
                faults.network += 1
                if attempt >= policy.tries:
                    raise StorageUnreachable(unreachable_line(url, attempt, exn)) from exn
                faults.retries += 1
                wait = policy.wait(attempt)
                log.warning(
                    "network fault reading %s (%s); try %d of %d in %.1f s",
                    redact(url),
                    type(exn).__name__,
                    attempt + 1,
                    policy.tries,
                    wait,
                )
                sleep(wait)
