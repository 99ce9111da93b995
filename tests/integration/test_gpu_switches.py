"""Every GPU switch runs on CPU: two tiny DeepSpeed steps of each stage with one switch on, then a resume.

Switches: ``train.precision=bf16``, ``train.compile=true`` (Inductor's C++ path, with bf16: the pair that
failed to build), ``train.channels_last=true``, ``model.checkpoint_activations=true``, and ZeRO-3 + bf16
(stage 2 only: stage 1 refuses ZeRO-3). Each case is one command run twice with ``run.stop_after=1``:
the first invocation trains step 1 and checkpoints, the second resumes from it and trains step 2.
Forward hooks on the convolutions record what the step really runs: weight and activation dtypes, the
input layout, and how often each residual block runs (twice per step when checkpointing recomputes it).

The cases of both stages share one spawned rank (one import of torch and DeepSpeed); ZeRO-3 takes two.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import REPO
from tests.helpers import run_on_ranks

# The smallest U-Net the tiny preset reaches by overrides: one level, one block, 8 channels, no attention.
LDM_SMALLEST = (
    "model.model_channels=8",
    "model.head_dim=8",
    "model.channel_mult=[1]",
    "model.attention_resolutions=[]",
)
# The smallest tokenizer: two levels of 4 channels, no attention block; a one-layer discriminator.
VQGAN_SMALLEST = (
    "model.base_channels=4",
    "model.channel_mult=[1,1]",
    "model.downsample=[2,2,2]",
    "model.attn_at_lowest=false",
    "disc.base_channels=4",
    "disc.num_layers=1",
)

LDM_CASES: dict[str, tuple[str, ...]] = {
    "bf16": ("train.precision=bf16",),
    "channels_last": ("train.channels_last=true",),
    "checkpoint_activations": ("model.checkpoint_activations=true",),
    "compile_bf16": ("train.compile=true", "train.precision=bf16", *LDM_SMALLEST),
}
VQGAN_CASES: dict[str, tuple[str, ...]] = {
    "bf16": ("train.precision=bf16",),
    "channels_last": ("train.channels_last=true",),
    "checkpoint_activations": ("model.checkpoint_activations=true",),
    "compile_bf16": ("train.compile=true", "train.precision=bf16", *VQGAN_SMALLEST),
}


def _probe(trainer: Any, attr: str, block: type) -> dict[str, Any]:
    """Wrap ``trainer.micro_step``: losses and the step counter of every step; for the first step of this
    invocation, each convolution's dtypes and layouts, and how often each residual block's forward ran."""
    seen: dict[str, Any] = {"losses": [], "steps": [], "convs": [], "block_calls": 0, "blocks": 0}
    step = trainer.micro_step

    def conv_hook(mod: torch.nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        x = inputs[0]
        cl = torch.channels_last_3d
        dtypes = (str(mod.weight.dtype), str(x.dtype), str(out.dtype))
        layouts = (x.is_contiguous(memory_format=cl), out.is_contiguous(memory_format=cl))
        seen["convs"].append((*dtypes, *layouts, max(mod.kernel_size) == 1))

    def counted(forward: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            seen["block_calls"] += 1  # a forward hook would miss checkpoint's recomputation
            return forward(*args, **kwargs)

        return run

    def record(batch: dict) -> dict[str, float] | None:
        first = not seen["steps"]
        hooks, blocks = [], []
        if first and not trainer.cfg.train.compile:  # hooks inside a compiled graph are not what it runs
            for m in getattr(trainer, attr).modules():  # built by fit(), so looked up here
                if isinstance(m, torch.nn.Conv3d):
                    hooks.append(m.register_forward_hook(conv_hook))
                if isinstance(m, block):
                    m.forward = counted(m.forward)
                    blocks.append(m)
            seen["blocks"] = len(blocks)
        seen["steps"].append(trainer.step)
        out = step(batch)
        for h in hooks:
            h.remove()
        for m in blocks:
            del m.forward
        if out is not None:
            seen["losses"].append(out["loss"])
        return out

    trainer.micro_step = record
    return seen


def _invocation(stage: str, overrides: list[str]) -> dict[str, Any]:
    from vqvdm_scale.config import load_config

    if stage == "ldm":
        from vqvdm_scale.models.unet.blocks import ResBlock
        from vqvdm_scale.train.ldm import LDMRunConfig, LDMTrainer, resolve_from_cache

        cfg, manifest = resolve_from_cache(
            load_config(LDMRunConfig, REPO / "configs/ldm/tiny.yaml", overrides)
        )
        trainer: Any = LDMTrainer(cfg, manifest)
        seen = _probe(trainer, "net", ResBlock)
    else:
        from vqvdm_scale.models.layers import ResBlock3d
        from vqvdm_scale.train.vqgan import VQGANRunConfig, VQGANTrainer

        trainer = VQGANTrainer(load_config(VQGANRunConfig, REPO / "configs/vqgan/tiny.yaml", overrides))
        seen = _probe(trainer, "model", ResBlock3d)
    trainer.fit()
    seen["resumed_from"] = None if trainer.resumed_from is None else trainer.resumed_from.name
    return seen


def _cases(rank: int, world: int, jobs: list[tuple[str, list[str], str, dict]]) -> dict[str, Any]:
    """For each (stage, base overrides, root, cases): each case's command twice (``run.stop_after=1``);
    the two invocations' records, or the traceback, by stage and case."""
    from vqvdm_scale.engine.checkpoint import latest_checkpoint

    # A fresh Inductor cache: compile=true must generate and build its C++ kernels, not find them on disk.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(jobs[0][2]).parent / f"inductor_rank{rank}")
    out: dict[str, Any] = {}
    for stage, base, root, cases in jobs:
        results = out.setdefault(stage, {})
        for name, extra in cases.items():
            run, start = Path(root) / name, time.monotonic()
            cmd = [*base, f"run.dir={run}", "train.max_steps=2", "run.stop_after=1", *extra]
            try:
                results[name] = {"runs": [_invocation(stage, cmd) for _ in range(2)]}
            except Exception:  # noqa: BLE001 - one case's failure is reported by its own test
                results[name] = {"error": traceback.format_exc()}
                continue
            latest = latest_checkpoint(run / "checkpoints")
            results[name]["latest"] = None if latest is None else latest.name
            results[name]["seconds"] = time.monotonic() - start
    return out


def _ldm_base(cache: dict[str, Path]) -> list[str]:
    return [
        f"data.train_latents={cache['latents']}",
        f"tokenizer={cache['tokenizer']}",
        "data.num_workers=1",
        "data.shuffle_buffer=0",
        "train.micro_batch_size=2",
        "run.log_every=1",
        "run.progress=false",
        "run.media_every=0",
        "run.ckpt_every=100",
        "model.model_channels=16",
        "model.head_dim=16",
    ]


def _vqgan_base(shards: Path) -> list[str]:
    return [
        f"data.train_shards={shards}",
        "data.frames=8",
        "data.resolution=16",
        "data.num_workers=1",
        "data.shuffle_buffer=0",
        "train.micro_batch_size=2",
        "run.log_every=1",
        "run.progress=false",
        "run.media_every=0",
        "run.ckpt_every=100",
        "loss.disc_start_step=1",  # the discriminator update runs in both steps
    ]


@pytest.fixture(scope="module")
def runs(tiny_latent_cache: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every case of both stages on one spawned rank (one start of torch and DeepSpeed)."""
    from vqvdm_scale.prep.synthetic import make_synthetic_shards

    shards = tmp_path_factory.mktemp("vq_switch_shards") / "synthetic"
    make_synthetic_shards(
        str(shards), num_classes=2, videos_per_class=2, num_frames=8, size=20, resolution=16, shard_size=2
    )
    root = tmp_path_factory.mktemp("switches")
    jobs = [
        ("ldm", _ldm_base(tiny_latent_cache), str(root / "ldm"), LDM_CASES),
        ("vqgan", _vqgan_base(shards), str(root / "vqgan"), VQGAN_CASES),
    ]
    return run_on_ranks(_cases, 1, timeout=560, args=(jobs,))[0]


def _check_resumed(name: str, result: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both invocations ran one finite step, the second from the first one's checkpoint."""
    assert "error" not in result, f"{name}:\n{result.get('error')}"
    first, second = result["runs"]
    assert first["steps"] == [0] and second["steps"] == [1], (first["steps"], second["steps"])
    assert first["resumed_from"] is None and second["resumed_from"] == "step_00000001"
    assert result["latest"] == "step_00000002"
    losses = first["losses"] + second["losses"]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses), losses
    return first, second


def _check_switch(name: str, result: dict[str, Any]) -> None:
    first, second = _check_resumed(name, result)
    print(f"{name}: both invocations in {result['seconds']:.0f} s")  # shown by pytest -rP
    if name.startswith("compile"):
        return  # what a compiled graph runs is not seen by module hooks; it ran, finite, and resumed
    for run in (first, second):
        convs = run["convs"]
        assert convs, f"{name}: no convolution ran"
        dtype = "torch.bfloat16" if name == "bf16" else "torch.float32"
        # weights, activations in and out of every convolution: the precision the switch names
        assert {c[:3] for c in convs} == {(dtype, dtype, dtype)}, convs
        # channels_last: every convolution takes channels_last_3d, and every one wider than 1x1x1 returns it
        # (one CPU thread runs 1x1x1 ones as a matmul, contiguous out). Off, the first one (on the step's
        # input) takes it contiguous; later ones may see a permuted tensor (the quantizer's output) either way
        if name == "channels_last":
            assert all(c[3] for c in convs) and all(c[4] for c in convs if not c[5]), convs
        else:
            assert not convs[0][3], convs
        # checkpointing re-runs each residual block's forward once more in backward
        per_block = 2 if name == "checkpoint_activations" else 1
        assert run["block_calls"] == per_block * run["blocks"] > 0, (run["block_calls"], run["blocks"])


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", list(LDM_CASES))
def test_ldm_switch_trains_and_resumes(runs: dict[str, Any], name: str) -> None:
    _check_switch(name, runs["ldm"][name])


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", list(VQGAN_CASES))
def test_vqgan_switch_trains_and_resumes(runs: dict[str, Any], name: str) -> None:
    _check_switch(name, runs["vqgan"][name])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ldm_zero3_bf16_on_two_ranks_trains_and_resumes(
    tiny_latent_cache: dict[str, Path], tmp_path: Path
) -> None:
    cases = {"bf16": ("train.zero_stage=3", "train.precision=bf16")}
    jobs = [("ldm", _ldm_base(tiny_latent_cache), str(tmp_path), cases)]
    for rank in run_on_ranks(_cases, 2, timeout=280, args=(jobs,)):
        _check_switch("bf16", rank["ldm"]["bf16"])
