"""A worker process killed mid-job (the out-of-memory killer's SIGKILL) costs one retry, then a counted skip.

Before, make_shards' multiprocessing.Pool lost the killed worker's task and waited for it forever. Here:
the runner's own jobs with inputs that SIGKILL their worker; make_shards with a worker killed from outside
whenever it has the victim video open; encode_latents' decode pool with a video that kills its decoder.
Every job must finish within a bounded time, with the input a worker died on twice skipped and named.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vqvdm_scale.prep.worker_pool import Watch, run_watched

BOUND_S = 180  # a job that hangs fails here, not at pytest's timeout
# not tests.conftest's REPO: worker processes import this module, and conftest imports torch
REPO = Path(__file__).resolve().parents[2]


@dataclass
class _Job:
    index: int
    items: list[str]
    plan: str = ""
    name: str = ""
    sidecar: str = ""


def _write(job: _Job, watch: Watch) -> dict[str, Any]:
    """A job whose item ``die`` SIGKILLs its worker every time and ``once:PATH`` only the first time."""
    done: list[str] = []
    skipped: list[list[str]] = []
    for position, item in enumerate(job.items):
        watch.enter(position)
        why = watch.skipped(position)
        if why is not None:
            skipped.append([item, why])
            continue
        if item == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        if item.startswith("once:") and not Path(item[5:]).exists():
            Path(item[5:]).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        done.append(item)
    return {"done": done, "skipped": skipped}


def test_runner_retries_once_then_skips_the_killing_input(tmp_path: Path) -> None:
    once = f"once:{tmp_path / 'killed-once'}"
    jobs = [_Job(0, ["a", "b"]), _Job(1, ["c", "die", "d"]), _Job(2, [once, "e"]), _Job(3, ["f"])]
    start = time.monotonic()
    out = {job.index: side for job, side in run_watched(jobs, _write, workers=2)}
    assert time.monotonic() - start < BOUND_S
    assert sorted(out) == [0, 1, 2, 3]  # every job returned, once
    assert out[0] == {"done": ["a", "b"], "skipped": []}
    assert out[3] == {"done": ["f"], "skipped": []}
    assert out[2] == {"done": [once, "e"], "skipped": []}  # died once, retried, kept
    assert out[1]["done"] == ["c", "d"]
    [[item, why]] = out[1]["skipped"]
    assert item == "die" and "died" in why and "retried once" in why


def test_inline_jobs_have_a_watch_that_skips_nothing() -> None:
    from vqvdm_scale.prep.runner import run_jobs  # not at the top: workers import this module

    out = list(run_jobs([_Job(0, ["a"]), _Job(1, ["b"])], _write, workers=0))
    assert [side["done"] for _, side in out] == [["a"], ["b"]]


# ------------------------------------------------------------------------ make_shards, killed from outside


def _pids_with_open(path: Path) -> list[int]:
    """Processes other than this one that have ``path`` open (read off /proc/<pid>/fd)."""
    target, found = str(path), []
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        if pid == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == target for fd in fds):
                found.append(pid)
        except OSError:
            continue
    return found


def _kill_whoever_opens(path: Path, times: int, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the worker that has ``path`` open, ``times`` times (the OOM killer's choice, made on purpose)."""
    while len(killed) < times and not stop.is_set():
        for pid in _pids_with_open(path):
            if pid not in killed:  # a killed process can list its files until it is gone
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
        time.sleep(0.005)


_MAKE_SHARDS = """
import json, sys
from vqvdm_scale.prep.make_shards import ShardsConfig, main
main(ShardsConfig(**json.loads(sys.argv[1])))
"""


@pytest.mark.slow
def test_make_shards_finishes_when_its_workers_are_killed(tmp_path: Path) -> None:
    from vqvdm_scale.data.video_io import encode_mp4

    rng = np.random.default_rng(0)
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a", "c", "d"):
        (videos / f"{name}.mp4").write_bytes(encode_mp4(rng.integers(0, 255, (16, 32, 32, 3), np.uint8), 10))
    victim = videos / "b.mp4"  # noise that takes a while to decode, so it is seen open
    victim.write_bytes(encode_mp4(rng.integers(0, 255, (600, 64, 64, 3), np.uint8), 25))
    cfg = {"input": str(videos), "output": str(tmp_path / "out"), "resolution": 16, "shard_size": 1}
    cfg |= {"workers": 2, "progress": False}
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_whoever_opens, args=(victim, 2, killed, stop), daemon=True)
    killer.start()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _MAKE_SHARDS, json.dumps(cfg)],
            env=env,
            capture_output=True,
            timeout=BOUND_S,
            start_new_session=True,
        )
    finally:
        stop.set()
        killer.join(timeout=5)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert len(killed) == 2  # killed in the pool, and again when retried alone
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["num_samples"] == 3 and manifest["skip_counts"] == {"worker_died": 1}
    [skip] = manifest["skipped"]
    assert skip["source"] == "b.mp4" and "retried once" in skip["detail"]
    assert not list((tmp_path / "out").glob(".*.tmp"))


# --------------------------------------------------------------------------- encode_latents' decode pool


VICTIM_KEY = "00000003_"  # the fourth video of the synthetic shards


def _prepare_or_die(job: tuple[Any, ...]) -> tuple[str, Any]:
    """encode_latents' decode, except that the victim video kills its worker (every time)."""
    from vqvdm_scale.prep.encode_windows import prepare_job

    if str(job[0].get("__key__")).startswith(VICTIM_KEY):
        os.kill(os.getpid(), signal.SIGKILL)
    return prepare_job(job)


@pytest.mark.slow
def test_encode_latents_skips_a_video_that_kills_its_decoder(
    tiny_latent_cache: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vqvdm_scale.prep.encode_latents as el
    from vqvdm_scale.prep.encode_windows import DecodePool

    monkeypatch.setattr(el, "DecodePool", functools.partial(DecodePool, prepare=_prepare_or_die))
    cfg = el.EncodeConfig(
        tokenizer=str(tiny_latent_cache["tokenizer"]),
        input=str(tiny_latent_cache["videos"]),
        output=str(tmp_path / "latents"),
        frames=8,
        resolution=16,
        workers=2,
        progress=False,
    )
    start = time.monotonic()
    manifest = el.main(cfg)
    assert time.monotonic() - start < BOUND_S
    assert manifest["counts"]["videos"] == 7 and manifest["counts"]["skip_counts"] == {"worker_died": 1}
    [skip] = manifest["skipped"]
    assert skip["key"].startswith(VICTIM_KEY) and "retried once" in skip["detail"]
