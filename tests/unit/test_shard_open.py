"""Network faults while reading a shard are retried from the shard's start at the exact sample; bad data is not.

The shards are real tar files in ``memory://``; the faults come from a filesystem whose files break off
with a connection reset after some bytes (as a dying store does), for their first few opens.
"""

from __future__ import annotations

import errno
import io
import os
import threading
import time
from typing import Any

import fsspec
import pytest
import webdataset as wds
from fsspec.implementations.memory import MemoryFileSystem

from vqvdm_scale.data.pipeline import ErrorCounter, shard_sample_pipeline
from vqvdm_scale.data.shard_open import open_tar_files
from vqvdm_scale.formats.faults import StorageUnreachable, is_network_error, unreachable_line
from vqvdm_scale.formats.object_store import ObjectStoreConfig, RetryPolicy, apply_object_store, retry_policy


class _Breaking(io.BytesIO):
    """A file that raises ConnectionResetError once ``limit`` bytes have been read."""

    def __init__(self, data: bytes, limit: int) -> None:
        super().__init__(data)
        self.limit = limit

    def read(self, size: int | None = -1) -> bytes:
        whole = size is None or size < 0
        if self.tell() >= self.limit or (whole and self.limit < len(self.getbuffer())):
            raise ConnectionResetError(errno.ECONNRESET, "connection reset by peer")
        size = self.limit - self.tell() if size is None or size < 0 else min(size, self.limit - self.tell())
        return super().read(size)


class FlakyFS(MemoryFileSystem):
    """memory:// whose first ``breaks`` opens of each file break off half-way (class-level state per test)."""

    protocol = "flaky"
    breaks = 0
    opened: dict[str, int] = {}

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        f = super()._open(path, mode, **kwargs)
        if "r" not in mode:
            return f
        n = FlakyFS.opened[path] = FlakyFS.opened.get(path, 0) + 1
        if n > FlakyFS.breaks:
            return f
        data = f.read()
        return _Breaking(data, len(data) // 2)


fsspec.register_implementation("flaky", FlakyFS, clobber=True)


@pytest.fixture(autouse=True)
def _restore_store_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """apply_object_store writes the environment and fsspec's conf: give both back after each test."""
    for name in ("FSSPEC_S3", "FSSPEC_GCS", "VQVDM_STORAGE_RETRY", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"):
        monkeypatch.delenv(name, raising=False)
    for proto in ("s3", "s3a", "gcs", "gs"):
        monkeypatch.setitem(fsspec.config.conf, proto, dict(fsspec.config.conf.get(proto, {})))


@pytest.fixture
def shards() -> list[str]:
    """Two tar shards of 6 samples with 3 files each, in the flaky store."""
    urls = []
    for s in range(2):
        buf = io.BytesIO()
        with wds.TarWriter(buf) as w:
            for i in range(6):
                w.write(
                    {"__key__": f"s{s}_{i:02d}", "txt": f"{s}-{i}", "cls": str(i), "bin": os.urandom(3000)}
                )
        url = f"flaky://shards/{s}.tar"
        with fsspec.open(url, "wb") as f:
            f.write(buf.getvalue())
        urls.append(url)
    FlakyFS.opened = {}
    return urls


def _keys(urls: list[str], breaks: int, tries: int, ahead: int = 0) -> tuple[list[str], ErrorCounter]:
    FlakyFS.opened, FlakyFS.breaks = {}, breaks
    counter = ErrorCounter("test")
    files = open_tar_files(
        [{"url": u} for u in urls],
        counter,
        counter,
        policy=RetryPolicy(tries, 0.0),
        sleep=lambda s: None,
        ahead=ahead,
    )
    keys = [f["fname"] for f in files if f]  # {} marks a shard's end
    return keys, counter


def test_a_reset_mid_shard_is_retried_from_the_same_file(shards: list[str]) -> None:
    clean, _ = _keys(shards, breaks=0, tries=1)
    assert len(clean) == 2 * 6 * 3
    keys, counter = _keys(shards, breaks=2, tries=3)
    assert keys == clean  # nothing lost, nothing repeated
    assert (counter.count, counter.network, counter.retries) == (0, 4, 4)  # 2 faults per shard, none data


def test_a_spent_budget_raises_storage_unreachable_naming_the_shard(shards: list[str]) -> None:
    with pytest.raises(StorageUnreachable) as info:
        _keys(shards, breaks=5, tries=3)
    assert info.value.line == (
        f"storage unreachable: {shards[0]} after 3 tries (ConnectionResetError); re-run the same command to resume"
    )


def test_corrupt_data_is_counted_and_skipped_not_retried(shards: list[str]) -> None:
    with fsspec.open("flaky://shards/bad.tar", "wb") as f:
        f.write(b"this is not a tar file" * 50)
    keys, counter = _keys(["flaky://shards/bad.tar", shards[1]], breaks=0, tries=3)
    assert len(keys) == 6 * 3 and counter.count == 1 and counter.network == 0
    assert [n for path, n in FlakyFS.opened.items() if path.endswith("bad.tar")] == [1]  # opened once


def test_the_pipeline_keeps_its_sample_order_through_faults(shards: list[str]) -> None:
    apply_object_store(ObjectStoreConfig(tries=3, backoff_s=0.0))
    FlakyFS.breaks = 0
    clean = [s["__key__"] for s in shard_sample_pipeline(shards, rank=0, world_size=1, seed=3)]
    FlakyFS.opened, FlakyFS.breaks = {}, 1
    counter = ErrorCounter("test")
    flaky = [
        s["__key__"] for s in shard_sample_pipeline(shards, rank=0, world_size=1, seed=3, handler=counter)
    ]
    assert flaky == clean and len(clean) == 12 and counter.retries == 2


def _ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("shards-ahead")]


def test_shards_downloaded_ahead_keep_the_order_and_retry_their_faults(shards: list[str]) -> None:
    clean, _ = _keys(shards, breaks=0, tries=1)
    assert _keys(shards, breaks=0, tries=1, ahead=2)[0] == clean
    keys, counter = _keys(shards, breaks=2, tries=3, ahead=1)
    assert keys == clean  # a failed download is re-opened like a failed read: nothing lost or repeated
    assert (counter.count, counter.network, counter.retries) == (0, 4, 4)
    with pytest.raises(StorageUnreachable):
        _keys(shards, breaks=5, tries=3, ahead=1)


def test_the_next_shard_downloads_while_the_first_is_read_and_the_threads_end(shards: list[str]) -> None:
    FlakyFS.opened, FlakyFS.breaks = {}, 0
    counter = ErrorCounter("test")
    files = open_tar_files([{"url": u} for u in shards], counter, counter, ahead=1)
    next(files)  # the first file of the first shard
    deadline = time.monotonic() + 10
    while len(FlakyFS.opened) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(FlakyFS.opened) == sorted(shards)
    files.close()  # a reader stopped mid-epoch leaves no download thread behind
    while _ahead_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _ahead_threads()


def test_network_errors_are_told_from_data_errors() -> None:
    assert is_network_error(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    assert is_network_error(OSError(errno.ETIMEDOUT, "timed out"))
    assert is_network_error(TimeoutError())
    wrapped = OSError("read failed")
    wrapped.__cause__ = type("EndpointConnectionError", (Exception,), {})("no endpoint")
    assert is_network_error(wrapped)
    assert not is_network_error(ValueError("bad tar header"))
    assert not is_network_error(OSError(errno.ENOENT, "no such file"))
    assert not is_network_error(PermissionError(errno.EACCES, "denied"))


def test_the_line_survives_a_dataloader_worker_and_hides_credentials() -> None:
    line = unreachable_line("s3://AKIAXXX:secret/key@bucket/shard-000001.tar", 5, TimeoutError())
    assert "secret" not in line and line.startswith(
        "storage unreachable: s3://***@bucket/shard-000001.tar after 5"
    )
    # torch re-raises a worker's exception as type(msg) with the worker's traceback around the message
    wrapped = StorageUnreachable(
        f"Caught StorageUnreachable in DataLoader worker process 0.\nTraceback:\n  x\n{line}\n"
    )
    assert wrapped.line == line


def test_object_store_options_reach_fsspec_and_are_undone() -> None:
    apply_object_store(
        ObjectStoreConfig(endpoint_url="http://127.0.0.1:9", anon=True, tries=7, backoff_s=1.5)
    )
    assert fsspec.config.conf["s3"]["endpoint_url"] == "http://127.0.0.1:9"
    assert fsspec.config.conf["s3"]["anon"] is True
    assert fsspec.config.conf["gcs"]["token"] == "anon"
    assert '"endpoint_url": "http://127.0.0.1:9"' in os.environ["FSSPEC_S3"]  # spawned workers read it
    assert retry_policy() == RetryPolicy(7, 1.5)
    apply_object_store(None)  # the next run's defaults replace them
    assert "endpoint_url" not in fsspec.config.conf["s3"] and "anon" not in fsspec.config.conf["s3"]
    assert retry_policy() == RetryPolicy()


def test_an_endpoint_turns_off_gcsfs_zonal_bucket_probe_unless_the_user_set_it() -> None:
    # gcsfs asks a gRPC control API per bucket first; an emulator has none (60 s per bucket, seen 6 Dec)
    apply_object_store(ObjectStoreConfig())
    assert "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT" not in os.environ  # Google's own endpoint: gcsfs decides
    apply_object_store(ObjectStoreConfig(endpoint_url="http://127.0.0.1:9"))
    assert os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] == "false"
    os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "true"
    apply_object_store(ObjectStoreConfig(endpoint_url="http://127.0.0.1:9"))
    assert os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] == "true"


def test_options_inherited_from_an_earlier_run_are_replaced() -> None:
    # a process started by another run reads that run's FSSPEC_S3 at import: this run's section wins
    fsspec.config.conf["s3"] = {"endpoint_url": "http://127.0.0.1:9", "anon": True, "key_file": "kept"}
    apply_object_store(ObjectStoreConfig(profile="work"))
    assert fsspec.config.conf["s3"]["profile"] == "work" and fsspec.config.conf["s3"]["key_file"] == "kept"
    assert "endpoint_url" not in fsspec.config.conf["s3"] and "anon" not in fsspec.config.conf["s3"]
