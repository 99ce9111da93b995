"""Fault injection: kill a tiny LDM training job at random points, resume it, and check the resume is exact.

python benchmarks/fault_injection.py --trials 50 --out runs/fault_injection

A reference run trains ``--steps`` steps uninterrupted. Each trial starts the same run in a fresh
directory, kills it with SIGKILL at one point, re-runs the same command to the end, and compares with the
reference. The kill points, drawn in turn:

* ``timer``: at a random moment of the run (start-up, a step, a save, an export: wherever it is);
* ``step``: inside a step, after its losses were computed and before the engines stepped;
* ``save``: inside a checkpoint save, after the engines' files and before ``COMPLETE``;
* ``export``: after a save, before the next step (the window between ``latest`` and the exports
  the checkpoint promises, if any).

Each trial records:

* ``exact``: every step's loss and the final EMA weights equal the reference;
* lost/repeated samples: the sample keys each step of the finished run consumed (the last time it ran)
  against the reference's;
* checkpoints lost: the newest checkpoint that was COMPLETE before the kill, when the resume did not
  start from it (its progress is lost; a silent restart from step 0 counts here).

The child process is the real trainer (launchers' ``main``) with two hooks patched in: the kill
points, and a record of the keys of every batch it trains on (appended and flushed per step).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "ldm" / "tiny.yaml"
POINTS = ("timer", "step", "save", "export")


def _overrides(cache: Path, run: Path, steps: int) -> list[str]:
    return [
        f"data.train_latents={cache / 'latents'}",
        f"tokenizer={cache / 'tokenizer.safetensors'}",
        f"run.dir={run}",
        "data.num_workers=1",
        "data.shuffle_buffer=0",
        "train.micro_batch_size=2",
        "run.log_every=1",
        "run.progress=false",
        "run.media_every=0",
        "run.ckpt_every=4",
        "run.keep_last=2",
        "model.model_channels=16",
        "model.head_dim=16",
        f"train.max_steps={steps}",
    ]


# ------------------------------------------------------------------------------------------- child side


def child(run: Path, overrides: list[str], point: str, at: int) -> None:
    """The trainer with the kill point and the key record patched in (runs in its own process)."""
    import torch

    torch.set_num_threads(1)
    from vqvdm_scale.config import load_config
    from vqvdm_scale.engine import checkpoint as ckpt
    from vqvdm_scale.train import ldm, loop

    keys_file = open(run.parent / f"{run.name}.keys.jsonl", "a")  # noqa: SIM115 - lives as long as the process
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)  # noqa: E731

    original_micro = loop.Trainer.micro_step

    def micro_step(self: Any, batch: Any) -> Any:
        if point == "step" and self.step + 1 == at:
            self._updates[0].loss(batch, {})  # the losses of the step are being computed ...
            die()  # ... when the job dies, before any engine stepped
        out = original_micro(self, batch)
        keys_file.write(json.dumps({"step": self.step + 1, "keys": list(batch["key"])}) + "\n")
        keys_file.flush()
        return out

    original_save = ckpt.save_checkpoint

    def save_checkpoint(engines: Any, root: Any, step: int, *args: Any, **kwargs: Any) -> Any:
        if point == "save" and step == at:
            next(iter(engines.values())).save(str(Path(root) / f"step_{step:08d}"), "unet", {})
            die()  # the engine files are written, COMPLETE is not
        return original_save(engines, root, step, *args, **kwargs)

    original_on_checkpoint = ldm.LDMTrainer.on_checkpoint

    def on_checkpoint(self: Any, directory: Any) -> None:
        if point == "export" and self.step == at:
            die()
        original_on_checkpoint(self, directory)

    loop.Trainer.micro_step = micro_step  # type: ignore[method-assign]
    loop.save_checkpoint = save_checkpoint  # type: ignore[assignment]
    ldm.LDMTrainer.on_checkpoint = on_checkpoint  # type: ignore[method-assign]
    ldm.main(load_config(ldm.LDMRunConfig, TINY, overrides))


# ------------------------------------------------------------------------------------------ parent side


def _start(run: Path, cache: Path, steps: int, point: str = "none", at: int = 0) -> subprocess.Popen[str]:
    cmd = [sys.executable, __file__, "--child", str(run), "--cache", str(cache), "--steps", str(steps)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd += ["--point", point, "--at", str(at)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _keys(run: Path) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    path = run.parent / f"{run.name}.keys.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        rec = json.loads(line)
        out[rec["step"]] = rec["keys"]  # the last time a step ran is the one that counts
    return out


def _losses(run: Path) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[int, float] = {}
    for f in sorted((run / "tb").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        out.update(
            {e.step: e.value for e in acc.Scalars("train/loss")}
            if "train/loss" in acc.Tags()["scalars"]
            else {}
        )
    return out


def _complete(run: Path) -> set[str]:
    root = run / "checkpoints"
    return {d.name for d in root.glob("step_*") if (d / "COMPLETE").exists()} if root.is_dir() else set()


def _weights(run: Path, steps: int) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoints" / f"step_{steps:08d}" / "ema.safetensors"))


def trial(
    n: int, point: str, ref: Path, cache: Path, out: Path, steps: int, rng: random.Random, ref_s: float
) -> dict[str, Any]:
    """One kill-and-resume trial; returns its record."""
    import torch

    run = out / f"trial_{n:03d}_{point}"
    at = rng.randint(1, steps) if point == "step" else rng.choice(range(4, steps + 1, 4))
    proc = _start(run, cache, steps, point, at)
    if point == "timer":
        time.sleep(rng.uniform(0.3, 1.0) * ref_s)
        proc.send_signal(signal.SIGKILL)
    first_out = proc.communicate(timeout=600)[0]
    killed = proc.returncode == -signal.SIGKILL
    before = _complete(run)
    resume = _start(run, cache, steps)
    resume_out = resume.communicate(timeout=600)[0]
    record: dict[str, Any] = {
        "trial": n,
        "point": point,
        "at": at,
        "killed": killed,
        "resume_rc": resume.returncode,
    }
    if resume.returncode != 0:
        record.update(exact=False, error=(first_out + resume_out)[-2000:])
        return record
    started = [
        line.split("resumed from ")[1].strip() for line in resume_out.splitlines() if "resumed from " in line
    ]
    resumed = Path(started[0]).name if started else None
    newest = max(before) if before else None
    lost = [c for c in before if c == newest and resumed != newest]
    keys, ref_keys = _keys(run), _keys(ref)
    flat, ref_flat = (
        [k for s in sorted(keys) for k in keys[s]],
        [k for s in sorted(ref_keys) for k in ref_keys[s]],
    )
    got, want = _weights(run, steps), _weights(ref, steps)
    record.update(
        resumed_from=resumed,
        exact=_losses(run) == _losses(ref) and all(torch.equal(got[k], want[k]) for k in want),
        samples_lost=sum(max(0, ref_flat.count(k) - flat.count(k)) for k in set(ref_flat)),
        samples_repeated=sum(max(0, flat.count(k) - ref_flat.count(k)) for k in set(flat)),
        checkpoints_lost=len(set(lost)),
    )
    return record


def main() -> None:
    """Parse, run the reference and the trials, print the table, write results.json."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--out", default="runs/fault_injection")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    p.add_argument("--point", default="none", help=argparse.SUPPRESS)
    p.add_argument("--at", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(
            Path(args.child), _overrides(Path(args.cache), Path(args.child), args.steps), args.point, args.at
        )
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    if not (cache / "latents" / "manifest.json").exists():
        _make_cache(cache)
    ref = out / "reference"
    if not (ref / "checkpoints" / f"step_{args.steps:08d}" / "COMPLETE").exists():
        t0 = time.time()
        ref_out = _start(ref, cache, args.steps).communicate(timeout=600)[0]
        ref_s = time.time() - t0
        assert "done at step" in ref_out, ref_out[-3000:]
    else:
        ref_s = 15.0
    rng = random.Random(args.seed)
    records = []
    for n in range(args.trials):
        rec = trial(n, POINTS[n % len(POINTS)], ref, cache, out, args.steps, rng, ref_s)
        records.append(rec)
        print(json.dumps({k: v for k, v in rec.items() if k != "error"}), flush=True)
    (out / "results.json").write_text(json.dumps(records, indent=1))
    print(
        f"\n{_table(records)}\n{time.strftime('%Y-%m-%d %H:%M')}, load {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs"
    )


def _table(records: list[dict[str, Any]]) -> str:
    rows = [
        "| kill point | trials | exact resumes | samples lost | samples repeated | checkpoints lost |",
        "|---|---|---|---|---|---|",
    ]
    for point in (*POINTS, "all"):
        rs = [r for r in records if point in ("all", r["point"])]
        if rs:
            rows.append(
                f"| {point} | {len(rs)} | {sum(bool(r['exact']) for r in rs)} | {sum(r.get('samples_lost', 0) for r in rs)} "
                f"| {sum(r.get('samples_repeated', 0) for r in rs)} | {sum(r.get('checkpoints_lost', 0) for r in rs)} |"
            )
    return "\n".join(rows)


def _make_cache(root: Path) -> None:
    """Synthetic shards, a random tiny tokenizer and its latent cache (as the tests' fixture)."""
    import torch

    from vqvdm_scale.formats.tokenizer_export import export_tokenizer
    from vqvdm_scale.models.tokenizer import VQTokenizer, tokenizer_preset
    from vqvdm_scale.prep.encode_latents import EncodeConfig
    from vqvdm_scale.prep.encode_latents import main as encode_main
    from vqvdm_scale.prep.synthetic import make_synthetic_shards

    make_synthetic_shards(
        str(root / "videos"),
        num_classes=2,
        videos_per_class=8,
        num_frames=16,
        size=24,
        resolution=16,
        shard_size=4,
    )
    torch.manual_seed(0)
    cfg = tokenizer_preset("tiny")
    export_tokenizer(VQTokenizer(cfg).eval(), cfg, root / "tokenizer.safetensors")
    encode_main(
        EncodeConfig(
            tokenizer=str(root / "tokenizer.safetensors"),
            input=str(root / "videos"),
            output=str(root / "latents"),
            frames=8,
            resolution=16,
            progress=False,
        )
    )


if __name__ == "__main__":
    main()
