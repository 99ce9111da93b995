"""What the training loop reports at a logging step and at its end: TensorBoard scalars, lines, a summary.

Every rank takes part (the per-rank step time and data wait are gathered, so a slow node or slow storage
shows up as one rank's curve in TensorBoard); rank 0 writes.
"""

from __future__ import annotations

import math
from typing import Any

from vqvdm_scale.config.text import plural
from vqvdm_scale.engine.env import gather_floats, is_main
from vqvdm_scale.monitor.meters import StepTimer, peak_memory_gib
from vqvdm_scale.monitor.progress import Progress


def report_step(
    trainer: Any, logs: dict[str, float], timer: StepTimer, flops_step: float | None, progress: Progress
) -> None:
    """Scalars of this logging window (losses, throughput, per-rank timing, memory, MFU, lr) and a line."""
    perf = timer.summary(trainer.world_size)
    values = {f"train/{k}": v for k, v in logs.items()}
    values.update(perf)
    values["perf/peak_mem_gib"] = peak_memory_gib(trainer.device)
    values["train/nonfinite_skipped"] = float(trainer.nonfinite_total)
    if flops_step:
        achieved = flops_step / perf["perf/s_per_step"]
        values["perf/tflops_per_device"] = achieved / 1e12
        values["perf/mfu"] = achieved / (trainer.train_cfg.flops_peak_tflops * 1e12)
    stats = trainer.loader.stats if trainer.loader is not None and hasattr(trainer.loader, "stats") else {}
    counts = [stats.get(name, 0) for name in ("errors", "skipped", "network", "retries")]
    ranks = gather_floats([perf["perf/s_per_step"], perf["perf/data_wait_pct"], *counts])
    for r, (s_per_step, data_pct, *_) in enumerate(ranks):
        values[f"perf_rank/{r}/s_per_step"] = s_per_step
        values[f"perf_rank/{r}/data_wait_pct"] = data_pct
    values["data/corrupt_skipped"] = sum(r[2] for r in ranks)  # all ranks, this run so far
    values["data/short_skipped"] = sum(r[3] for r in ranks)
    values["data/network_faults"] = sum(r[4] for r in ranks)  # retried, never skipped
    values["data/network_retries"] = sum(r[5] for r in ranks)
    values.update(engine_scalars(trainer.engines))
    trainer.logger.scalars(values, trainer.step)
    loss = logs.get("loss", next(iter(logs.values()), math.nan))
    progress.report(
        trainer.step, loss, perf["perf/samples_per_s"], perf["perf/data_wait_pct"], perf["perf/s_per_step"]
    )


def summary_line(trainer: Any, throughput: str, logs: dict[str, float]) -> str:
    """The stage's closing line: steps, wall time, throughput, final losses, checkpoint, bad inputs."""
    stats = trainer.loader.stats if trainer.loader is not None and hasattr(trainer.loader, "stats") else {}
    bad = gather_floats([stats.get("errors", 0), stats.get("skipped", 0)])
    corrupt, short = int(sum(r[0] for r in bad)), int(sum(r[1] for r in bad))
    losses = ", ".join(f"{k}={v:.4f}" for k, v in list(logs.items())[:6]) or "none this run"
    line = (
        f"[{trainer.stage}] done at step {trainer.step}: {throughput}; final losses {losses}; "
        f"checkpoint {trainer.ckpt_dir / f'step_{trainer.step:08d}'}; bad inputs skipped: "
        f"{plural(corrupt, 'corrupt sample')}, {plural(short, 'short video')}"
    )
    return line if is_main() else ""


def engine_scalars(engines: dict[str, Any]) -> dict[str, float]:
    """Each engine's learning rate and gradient norm, when it knows them."""
    out: dict[str, float] = {}
    for name, eng in engines.items():
        lr = eng.lr()
        if lr is not None:
            out[f"lr/{name}"] = lr
        gn = eng.grad_norm()
        if gn is not None:
            out[f"grad_norm/{name}"] = gn
    return out
