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
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
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
# a short retry budget: the dead-store run gives up in seconds, not minutes
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


def _train(rank: int, world: int, overrides: list[str]) -> int:
    from vqvdm_scale.train.vqgan import VQGANRunConfig, VQGANTrainer

    trainer = VQGANTrainer(load_config(VQGANRunConfig, TINY, overrides))
    trainer.fit()
    return trainer.step


def _one_line(capsys: pytest.CaptureFixture[str], run: Any, *args: Any) -> str:
    """The stderr of ``run_cli(...)``, which must exit 2 with one line."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(*args, argv=run)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.timeout(200)
def test_make_shards_wrote_s3_and_two_ranks_train_from_it(s3: dict[str, Any], tmp_path: Path) -> None:
    fs = s3["fs"]
    tars = sorted(p for p in s3["shards"] if p.endswith(".tar"))
    assert len(tars) == 4 and fs.exists("clips/videos/manifest.json")
    run = tmp_path / "run"
    steps = run_on_ranks(_train, 2, timeout=180, args=(_overrides(run, "train.max_steps=2"),))
    assert steps == [2, 2]
    assert (run / "checkpoints" / "step_00000002" / "COMPLETE").exists()
    assert (run / "tokenizer.safetensors").is_file()


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

    torch.manual_seed(0)
    cfg = tokenizer_preset("tiny")
    tok = tmp_path / "tok.safetensors"
    model = VQTokenizer(cfg).eval()
    fingerprint = export_tokenizer(model, cfg, tok, frames=8, resolution=16)
    manifest = main(
        EncodeConfig(tokenizer=str(tok), input=VIDEOS, output="s3://clips/latents", progress=False)
    )
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
    ]
    run_on_ranks(_train_ldm, 2, timeout=240, args=(overrides,))
    assert (run / "checkpoints" / "step_00000002" / "COMPLETE").exists()


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


def _final_losses(stdout: str) -> str:
    found = re.findall(r"final losses ([^;]*);", stdout)
    assert found, stdout[-3000:]
    return found[-1]


FOUR_STEPS = [*FAST_FAIL, "train.max_steps=4", "data.num_workers=0", "run.progress=true"]


def _train_cmd(run: Path, *extra: str) -> list[str]:
    script = str(REPO / "launchers" / "train_vqgan.py")
    return [sys.executable, script, "--config", str(TINY), *_overrides(run, *FOUR_STEPS, *extra)]


def _run_and_at_step_2(cmd: list[str], action: Callable[[], None]) -> tuple[int, str, str]:
    """Run ``cmd``; once it reports step 2 (the loader reads one shard a step), call ``action``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if re.search(r"\bstep 2/4\b", line):
            action()
            break
    out, err = proc.communicate(timeout=200)
    return proc.returncode, "".join(seen) + out, err


@pytest.fixture(scope="module")
def uninterrupted(s3: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> str:
    """The final losses of the 4-step run with the store up throughout."""
    done = subprocess.run(
        _train_cmd(tmp_path_factory.mktemp("base") / "run"),
        capture_output=True,
        text=True,
        timeout=200,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return _final_losses(done.stdout)


@pytest.mark.timeout(300)
def test_a_stalled_store_costs_time_not_data(s3: dict[str, Any], uninterrupted: str, tmp_path: Path) -> None:
    server = s3["server"]
    # frozen past the read timeout: requests time out and are retried (by s3fs, then by the loader)
    cmd = _train_cmd(tmp_path / "run", "object_store.tries=5", "object_store.backoff_s=0.5")

    def stall() -> None:
        server.freeze()
        threading.Timer(2 * 5.0 + 1, server.thaw).start()  # FAST_FAIL's read timeout is 5 s

    try:
        start = time.monotonic()
        rc, out, err = _run_and_at_step_2(cmd, stall)
    finally:
        server.thaw()
    assert rc == 0, err[-3000:]
    assert time.monotonic() - start > 11  # the run did wait for the store
    assert _final_losses(out) == uninterrupted
    assert "skipping bad shard" not in err


@pytest.mark.timeout(300)
def test_dead_store_stops_after_saving_and_the_rerun_finishes_exactly(
    s3: dict[str, Any], uninterrupted: str, tmp_path: Path
) -> None:
    server, fs = s3["server"], s3["fs"]
    run = tmp_path / "run"
    cmd = _train_cmd(run)
    rc, out, err = _run_and_at_step_2(cmd, server.kill)
    assert rc == 2, out[-2000:] + err[-3000:]
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(
        r"error: storage unreachable: s3://clips/videos/shard-\d+\.tar after 2 tries \(\w+\); "
        r"re-run the same command to resume",
        last,
    ), err[-3000:]
    saved = sorted(p.name for p in (run / "checkpoints").glob("step_*") if (p / "COMPLETE").exists())
    assert saved and saved[-1] >= "step_00000002", saved
    assert "corrupt" not in err.lower() and "skipping bad shard" not in err
    server.start()  # a new, empty store on the same port: restore the same shards
    fs.invalidate_cache()
    fs.mkdir("clips")
    fs.pipe(s3["shards"])
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=200, cwd=REPO)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _final_losses(again.stdout) == uninterrupted
