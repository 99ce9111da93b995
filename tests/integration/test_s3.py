"""Every stage against a real local S3 endpoint (moto's server in its own process), and a store that dies.

make_shards writes s3://, a 2-rank VQGAN trains from it, encode_latents goes s3:// -> s3:// and a 2-rank
LDM trains from that, evaluation reads its real shards from s3://; an unreachable endpoint or a missing
bucket is one line and exit code 2 before any model is built; a store frozen past the read timeout costs
time, not data; a store killed mid-run stops the run with "storage unreachable" after a checkpoint, and
once the store is back with the same shards the same command finishes with the losses of an
uninterrupted run.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec.config
import pytest

from tests.conftest import REPO
from tests.helpers import free_port, run_on_ranks
from tests.s3_server import MotoServer
from vqvdm_scale.config import load_config
from vqvdm_scale.config.cli import run_cli

s3fs = pytest.importorskip("s3fs", reason="pip install -e '.[dev]' (s3fs, moto[server])")
pytest.importorskip("moto.server", reason="pip install -e '.[dev]' (moto[server])")

pytestmark = pytest.mark.slow
TINY = REPO / "configs" / "vqgan" / "tiny.yaml"
VIDEOS = "s3://clips/videos"
TOKENIZER = "s3://clips/exports/tokenizer.safetensors"  # the VQGAN run's export
# a short retry budget: the dead-store run gives up in seconds, not minutes
STALL_S = 11.0
FAST_FAIL = [
    "object_store.tries=2",
    "object_store.backoff_s=0.2",
    "object_store.client_retries=1",
    "object_store.connect_timeout_s=2",
    "object_store.read_timeout_s=5",
]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The endpoint with ``s3://clips/videos`` (4 shards of 2 synthetic videos), env pointing at it."""
    from vqvdm_scale.prep.synthetic import make_synthetic_shards

    server = MotoServer(tmp_path_factory.mktemp("moto"))
    server.start()
    saved_env, saved_conf = dict(os.environ), copy.deepcopy(fsspec.config.conf)
    os.environ.update(server.env())
    try:
        fs = s3fs.S3FileSystem(endpoint_url=server.url)
        fs.mkdir("clips")
        make_synthetic_shards(
            VIDEOS, num_classes=2, videos_per_class=4, num_frames=12, size=24, resolution=16, shard_size=2
        )
        shards = {path: fs.cat(path) for path in fs.find("clips/videos")}  # to restore after a restart
        yield {"server": server, "fs": fs, "shards": shards}
    finally:
        server.kill()
        os.environ.clear()
        os.environ.update(saved_env)
        fsspec.config.conf.clear()
        fsspec.config.conf.update(saved_conf)


def _evaluate(rank: int, world: int, options: dict[str, Any]) -> dict[str, Any]:
    from vqvdm_scale.evaluate.config import EvalConfig
    from vqvdm_scale.evaluate.main import main
    from vqvdm_scale.metrics.protocol import ProtocolConfig

    protocol = ProtocolConfig(num_real=8, num_fake=2, frames=8, resolution=16)
    return main(EvalConfig(**options, protocol=protocol, random_detectors=True, batch_size=4, progress=False))


@pytest.fixture
def _own_store_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs write their object_store options to the environment: give it back after the test."""
    for name in ("FSSPEC_S3", "FSSPEC_GCS", "VQVDM_STORAGE_RETRY"):
        monkeypatch.delenv(name, raising=False)
    for proto in ("s3", "s3a", "gcs", "gs"):
        monkeypatch.setitem(fsspec.config.conf, proto, dict(fsspec.config.conf.get(proto, {})))


FOUR_STEPS = ("train.max_steps=4", "data.num_workers=0")  # no workers: a shard is opened when a step needs it


def _overrides(run_dir: Path, *extra: str) -> list[str]:
    return [
        f"data.train_shards={VIDEOS}",
        f"run.dir={run_dir}",
        "data.frames=8",
        "data.resolution=16",
        "data.num_workers=1",
        "data.shuffle_buffer=0",
        "train.micro_batch_size=2",
        "run.log_every=1",
        "run.progress=false",
        "run.media_every=0",
        "loss.disc_start_step=2",
        *extra,
    ]


def _train(rank: int, world: int, overrides: list[str], events: dict[Any, str], pid: int) -> dict[str, Any]:
    """One rank's run: its step, per-step losses and how it ended. Rank 0 stalls or kills the store ``pid``
    during the steps named in ``events``; the next step opens a shard (one shard a step, no workers)."""
    from vqvdm_scale.formats.faults import StorageUnreachable
    from vqvdm_scale.train.vqgan import VQGANRunConfig, VQGANTrainer

    trainer = VQGANTrainer(load_config(VQGANRunConfig, TINY, overrides))
    losses: list[float] = []
    step = trainer.micro_step

    def record(batch: dict[str, Any]) -> dict[str, float] | None:
        out = step(batch)
        losses.append(out["loss"] if out else float("nan"))
        act = events.pop(trainer.step + 1, "") if rank == 0 else ""  # once, at the step's first micro-batch
        if act == "kill":
            os.kill(pid, signal.SIGKILL)
        if act == "stall":  # frozen past FAST_FAIL's 5 s read timeout
            os.kill(pid, signal.SIGSTOP)
            threading.Timer(STALL_S, os.kill, (pid, signal.SIGCONT)).start()
        return out

    trainer.micro_step = record  # type: ignore[method-assign]
    read = trainer._batches

    def reading() -> Iterator[Any]:  # "read k": the store dies once step k's first micro-batch is read
        for batch in read():
            if rank == 0 and events.pop(f"read {trainer.step + 1}", "") == "kill":
                os.kill(pid, signal.SIGKILL)
            yield batch

    trainer._batches = reading  # type: ignore[method-assign]
    try:
        trainer.fit()
        end = "finished"
    except StorageUnreachable as lost:
        end = lost.line
    return {"step": trainer.step, "losses": losses, "end": end}


@pytest.fixture(scope="module")
def two_ranks(s3: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 2-rank, 4-step VQGAN run from s3:// with the store up throughout (one shard per rank a step)."""
    run = tmp_path_factory.mktemp("two_ranks") / "run"
    overrides = _overrides(run, *FOUR_STEPS, f"export={TOKENIZER}")
    ranks = run_on_ranks(_train, 2, timeout=180, args=(overrides, {}, 0))
    return {"run": run, "ranks": ranks}


def _one_line(capsys: pytest.CaptureFixture[str], run: Any, *args: Any) -> str:
    """The stderr of ``run_cli(...)``, which must exit 2 with one line."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(*args, argv=run)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.timeout(200)
def test_make_shards_wrote_s3_and_two_ranks_train_from_it(
    s3: dict[str, Any], two_ranks: dict[str, Any]
) -> None:
    fs = s3["fs"]
    tars = sorted(p for p in s3["shards"] if p.endswith(".tar"))
    assert len(tars) == 4 and fs.exists("clips/videos/manifest.json")
    assert [(r["step"], r["end"]) for r in two_ranks["ranks"]] == [(4, "finished")] * 2
    assert (two_ranks["run"] / "checkpoints" / "step_00000004" / "COMPLETE").exists()
    assert not (two_ranks["run"] / "tokenizer.safetensors").exists()  # exported to the store instead
    assert fs.exists(TOKENIZER) and fs.exists(TOKENIZER + ".json")
    from vqvdm_scale.formats.tokenizer_export import clip_size, load_tokenizer

    sidecar = json.loads(fs.cat(TOKENIZER + ".json"))
    assert load_tokenizer(TOKENIZER)[2] == sidecar["fingerprint"]  # verified against its recorded hash
    assert clip_size(TOKENIZER) == (8, 16)


@pytest.mark.timeout(400)
def test_a_stalled_store_costs_time_a_dead_one_stops_the_run_and_the_rerun_is_exact(
    s3: dict[str, Any], two_ranks: dict[str, Any], tmp_path: Path
) -> None:
    server = s3["server"]
    overrides = _overrides(tmp_path / "run", *FOUR_STEPS, *FAST_FAIL, "object_store.tries=5")
    assert server.proc is not None
    start = time.monotonic()
    try:  # frozen in step 1, for longer than the read timeout; killed in step 3
        lost = run_on_ranks(
            _train, 2, timeout=300, args=(overrides, {1: "stall", 3: "kill"}, server.proc.pid)
        )
    finally:
        server.thaw()
    assert time.monotonic() - start > STALL_S
    server.proc.wait(timeout=10)
    # the stall cost retries and time only: the losses so far are an uninterrupted run's; the dead store
    # stopped both ranks at step 3 (rank 0's loader lost it), each with a checkpoint of step 3
    assert [r["step"] for r in lost] == [3, 3], lost
    for rank in range(2):
        assert lost[rank]["losses"] == two_ranks["ranks"][rank]["losses"][:3], rank
    assert re.fullmatch(
        r"storage unreachable: s3://clips/videos/shard-\d+\.tar after 5 tries .*", lost[0]["end"]
    )
    assert lost[1]["end"].startswith("storage unreachable: ")
    assert (tmp_path / "run" / "checkpoints" / "step_00000003" / "COMPLETE").exists()
    _restore(s3)
    again = run_on_ranks(_train, 2, timeout=200, args=(overrides, {}, 0))
    assert [r["end"] for r in again] == ["finished"] * 2
    for rank in range(2):
        assert lost[rank]["losses"] + again[rank]["losses"] == two_ranks["ranks"][rank]["losses"], rank


def _restore(s3: dict[str, Any]) -> None:
    """A new, empty store on the same port, given back the same shards."""
    s3["server"].start()
    s3["fs"].invalidate_cache()
    s3["fs"].mkdir("clips")
    s3["fs"].pipe(s3["shards"])


@pytest.mark.timeout(600)
def test_a_store_lost_between_accumulated_micro_batches_reruns_that_step_exactly(
    s3: dict[str, Any], tmp_path: Path
) -> None:
    # grad_accum 2: a step is two shards per rank; the store dies once step 3's first micro-batch is read,
    # so the second cannot be. A step reads all its micro-batches before computing any (forward passes
    # move buffers such as the codebook's), so the save is step 2's as it was, and the re-run is exact.
    accum = (*FOUR_STEPS, "train.grad_accum=2")
    straight = run_on_ranks(_train, 2, timeout=200, args=(_overrides(tmp_path / "a", *accum), {}, 0))
    assert [r["end"] for r in straight] == ["finished"] * 2 and len(straight[0]["losses"]) == 8
    overrides = _overrides(tmp_path / "b", *accum, *FAST_FAIL)
    pid = s3["server"].proc.pid
    lost = run_on_ranks(_train, 2, timeout=200, args=(overrides, {"read 3": "kill"}, pid))
    s3["server"].proc.wait(timeout=10)
    _restore(s3)
    assert [r["step"] for r in lost] == [2, 2], lost
    assert all(r["end"].startswith("storage unreachable: ") for r in lost)
    assert (tmp_path / "b" / "checkpoints" / "step_00000002" / "COMPLETE").exists()
    again = run_on_ranks(_train, 2, timeout=200, args=(overrides, {}, 0))
    assert [r["end"] for r in again] == ["finished"] * 2
    for rank in range(2):
        assert lost[rank]["losses"] == straight[rank]["losses"][:4], rank
        assert again[rank]["losses"] == straight[rank]["losses"][4:], rank


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("_own_store_settings")
def test_a_store_lost_in_a_loader_worker_is_raised_with_its_line(s3: dict[str, Any]) -> None:
    from vqvdm_scale.data import ClipLoaderConfig, build_clip_loader
    from vqvdm_scale.formats.faults import StorageUnreachable
    from vqvdm_scale.formats.object_store import ObjectStoreConfig, apply_object_store

    apply_object_store(ObjectStoreConfig(tries=2, backoff_s=0.1, client_retries=1))
    cfg = ClipLoaderConfig(train_shards=VIDEOS, frames=8, resolution=16, num_workers=1, shuffle_buffer=0)
    batches = iter(build_clip_loader(cfg, batch_size=2))
    keys = [next(batches)["key"] for _ in range(4)]  # the first epoch: one worker read all 4 shards
    assert len(keys) == 4
    server, fs = s3["server"], s3["fs"]
    server.kill()
    try:
        with pytest.raises(StorageUnreachable) as info:
            next(batches)  # the second epoch's worker cannot open its first shard
    finally:
        server.start()
        fs.invalidate_cache()
        fs.mkdir("clips")
        fs.pipe(s3["shards"])
    assert "DataLoader worker" in str(info.value)  # torch re-raised it from the worker's traceback
    assert re.fullmatch(
        r"storage unreachable: s3://clips/videos/shard-\d+\.tar after 2 tries \(\w+\); "
        r"re-run the same command to resume",
        info.value.line,
    )


def _train_ldm(rank: int, world: int, overrides: list[str]) -> str:
    from vqvdm_scale.train.ldm import LDMRunConfig, main

    return str(main(load_config(LDMRunConfig, REPO / "configs" / "ldm" / "tiny.yaml", overrides)))


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("_own_store_settings")
def test_encode_latents_s3_to_s3_and_two_ranks_train_the_ldm_from_it(
    s3: dict[str, Any], tmp_path: Path
) -> None:
    import torch

    from vqvdm_scale.data import LatentLoaderConfig, build_latent_loader
    from vqvdm_scale.formats.tokenizer_export import export_tokenizer
    from vqvdm_scale.models.tokenizer import VQTokenizer, tokenizer_preset
    from vqvdm_scale.prep.encode_latents import EncodeConfig, main
    from vqvdm_scale.sample.api import SampleConfig
    from vqvdm_scale.sample.main import SampleRunConfig
    from vqvdm_scale.sample.main import main as sample_main

    torch.manual_seed(0)
    cfg = tokenizer_preset("tiny")
    tok = "s3://clips/exports/tiny.safetensors"  # exports are written to and read from the store too
    model = VQTokenizer(cfg).eval()
    fingerprint = export_tokenizer(model, cfg, tok, frames=8, resolution=16)
    manifest = main(EncodeConfig(tokenizer=tok, input=VIDEOS, output="s3://clips/latents", progress=False))
    assert manifest["num_samples"] == 8, manifest["counts"]  # 8 videos of 12 frames: one 8-frame window each
    assert len(s3["fs"].glob("clips/latents/latents-*.tar")) == 4
    loader = build_latent_loader(
        LatentLoaderConfig(train_latents="s3://clips/latents", num_workers=0, drop_last=False),
        batch_size=8,
        train=False,
        tokenizer_fingerprint=fingerprint,
        codebook=model.quantizer.codes(),
    )
    batch = next(iter(loader))
    assert len(batch["key"]) == 8 and loader.stats["network"] == 0
    run = tmp_path / "ldm"
    overrides = [
        "data.train_latents=s3://clips/latents",
        f"tokenizer={tok}",
        f"run.dir={run}",
        "data.num_workers=1",
        "data.shuffle_buffer=0",
        "train.micro_batch_size=2",
        "train.max_steps=2",
        "run.progress=false",
        "run.media_every=0",
        "model.model_channels=16",
        "model.head_dim=16",
        "export=s3://clips/exports/ldm.safetensors",
    ]
    run_on_ranks(_train_ldm, 2, timeout=240, args=(overrides,))
    last = run / "checkpoints" / "step_00000002"
    assert (last / "COMPLETE").exists()
    assert s3["fs"].cat("clips/exports/ldm.safetensors") == (last / "ema.safetensors").read_bytes()
    sample_main(
        SampleRunConfig(
            checkpoint="s3://clips/exports/ldm.safetensors",
            tokenizer=tok,
            num_videos=2,
            output=str(tmp_path / "samples"),
            formats=["npy"],
            progress=False,
            sample=SampleConfig(steps=2),
        )
    )
    assert len(list((tmp_path / "samples").glob("*.npy"))) == 2


@pytest.mark.timeout(200)
def test_evaluation_reads_the_real_shards_from_s3(s3: dict[str, Any], tmp_path: Path) -> None:
    import torch

    from vqvdm_scale.formats.tokenizer_export import export_tokenizer
    from vqvdm_scale.models.tokenizer import VQTokenizer, tokenizer_preset

    torch.manual_seed(0)
    cfg = tokenizer_preset("tiny")
    export_tokenizer(VQTokenizer(cfg).eval(), cfg, tmp_path / "tok.safetensors", frames=8, resolution=16)
    options = dict(
        real=VIDEOS,
        metrics=["recon"],
        tokenizer=str(tmp_path / "tok.safetensors"),
        cache_dir=str(tmp_path / "cache"),
        output=str(tmp_path / "results.json"),
    )
    res = run_on_ranks(_evaluate, 1, timeout=180, args=(options,))[0]
    assert res["metrics"]["recon"]["clips"] == 8 and res["metrics"]["recon"]["psnr"] > 0


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("_own_store_settings")
def test_unreachable_endpoint_and_missing_bucket_are_one_line(
    s3: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vqvdm_scale.data.synthetic import write_synthetic_dataset
    from vqvdm_scale.evaluate.config import EvalConfig
    from vqvdm_scale.evaluate.main import main as evaluate
    from vqvdm_scale.formats.tokenizer_export import export_tokenizer
    from vqvdm_scale.models.tokenizer import VQTokenizer, tokenizer_preset
    from vqvdm_scale.prep.encode_latents import EncodeConfig
    from vqvdm_scale.prep.encode_latents import main as encode
    from vqvdm_scale.prep.make_shards import ShardsConfig
    from vqvdm_scale.prep.make_shards import main as make_shards
    from vqvdm_scale.sample.main import SampleRunConfig
    from vqvdm_scale.sample.main import main as sample
    from vqvdm_scale.train.vqgan import VQGANRunConfig
    from vqvdm_scale.train.vqgan import main as train

    dead = f"object_store.endpoint_url=http://127.0.0.1:{free_port()}"  # the config beats AWS_ENDPOINT_URL
    run = tmp_path / "run"
    err = _one_line(
        capsys, ["--config", str(TINY), *_overrides(run, dead, *FAST_FAIL)], VQGANRunConfig, train
    )
    assert err.startswith("error: storage unreachable: cannot reach the store of s3://clips/videos"), err
    assert not (run / "checkpoints").exists()  # stopped before any model or run state
    err = _one_line(capsys, ["--config", str(TINY), *_overrides(run, "data.train_shards=s3://nobucket/v")], VQGANRunConfig, train)  # fmt: skip
    assert err.startswith("error: no shards found at s3://nobucket/v"), err
    videos = write_synthetic_dataset(tmp_path / "in", 1, 1, 4, 8, 0)
    args = [f"input={videos}", "output=s3://clips/out", dead, *FAST_FAIL]
    err = _one_line(capsys, args, ShardsConfig, make_shards)
    assert err.startswith("error: storage unreachable: cannot reach the store of s3://clips/out"), err
    cfg = tokenizer_preset("tiny")
    tok = tmp_path / "tok.safetensors"
    export_tokenizer(VQTokenizer(cfg), cfg, tok, frames=8, resolution=16)
    args = [f"tokenizer={tok}", f"input={VIDEOS}", "output=s3://clips/l2", dead, *FAST_FAIL]
    err = _one_line(capsys, args, EncodeConfig, encode)
    assert err.startswith("error: storage unreachable: cannot reach the store of s3://clips/videos"), err
    args = [
        f"real={VIDEOS}",
        "metrics=[recon]",
        f"tokenizer={tok}",
        "protocol.resolution=16",
        "random_detectors=true",
        dead,
    ]
    err = _one_line(capsys, args, EvalConfig, evaluate)
    assert err.startswith("error: storage unreachable: cannot reach the store of s3://clips/videos"), err
    args = ["checkpoint=s3://clips/exports/none.safetensors", f"tokenizer={tok}", "progress=false"]
    err = _one_line(capsys, args, SampleRunConfig, sample)
    assert err == "error: LDM EMA export s3://clips/exports/none.safetensors does not exist", err
