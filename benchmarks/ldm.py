"""Stage-2 benchmark: latent video U-Net training step against a pixel-space VDM-style U-Net, side by side.

``python -m benchmarks.ldm [--config ldm/B.yaml[,ldm/tiny.yaml]] [--batch N] [--repeats N] [--threads N]
[a.b=c ...]``

Per stage-2 config (default the paper-scale ``ldm/B.yaml``; a path or a shipped name), two
class-conditional (UCF-101: 101 classes + the null class) networks, each in its own fresh process (so
peak-memory readings do not mix):

- latent: the config's U-Net on the latents of the stage-1 config that made its tokenizer (``--vqgan-config``;
  by default the shipped one named by the config's ``tokenizer`` path, ``runs/vqgan_<name>/...`` ->
  ``vqgan/<name>.yaml``): B.yaml on the vqvdm tokenizer's 8x4x16x16 latents of 16x128x128 clips,
  tiny.yaml on the tiny tokenizer's 8x4x8x8 latents of 16x32x32 clips;
- pixel: a VDM-style (Ho et al. 2022) pixel-space U-Net: the same widths and attention factors on RGB
  clips of half the side (VDM's 64x64 against VQ-VDM's 128x128), with space-time factorised blocks.

Both are stepped the same way, the way LDMTrainer steps its U-Net: one timed step is ``run_updates`` over
the update built on ``diffusion_step`` (vqvdm_scale.train.ldm: DiffusionLoss, the config's diffusion
section), then ``engine.backward`` and ``engine.step`` on a DeepSpeed engine from ``build_engine`` with
the config's ``train`` section (AdamW with ``train.optim``, grad clipping, precision, ZeRO stage,
``train.compile``). Reported per network: step time and samples/s at the same batch for both, GFLOPs
per sample of forward + backward (FlopCounterMode on the meta device, so attention is counted),
parameters, and peak resident memory above the fresh process's baseline after imports and process-group
start (Linux VmHWM: weights, optimiser state, activations and allocator slack).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    add_common_args,
    config_names,
    count_flops_meta,
    fmt,
    format_table,
    machine_info,
    machine_line,
    peak_rss_gib,
    rss_gib,
    run_worker,
    set_threads,
    time_call,
    worker_result,
)
from benchmarks.steps import UCF_FPS, ldm_train_step, load_stage_config
from vqvdm_scale.engine.env import init_distributed
from vqvdm_scale.models.unet.model import UNet3D, UNetConfig
from vqvdm_scale.train.ldm import LDMRunConfig
from vqvdm_scale.train.vqgan import VQGANRunConfig

__all__ = ["COLUMNS", "NUM_CLASSES", "PAPER_SPEEDUP", "bench_unet", "main", "network"]

NUM_CLASSES = 101  # UCF-101
# VQ-VDM's headline: about 9x faster sampling than VDM (3.95 s vs 35.26 s per video) at 4x the frame area.
PAPER_SPEEDUP = 35.26 / 3.95

COLUMNS = [
    "model",
    "input CxTxHxW",
    "params (M)",
    "GFLOPs/sample f+b",
    "batch",
    "precision",
    "step (s)",
    "samples/s",
    "peak RSS (GiB)",
    "timings",
]


def vqgan_config_name(cfg: LDMRunConfig) -> str:
    """The shipped stage-1 config whose export the LDM config names (``runs/vqgan_tiny/...`` -> ``vqgan/tiny.yaml``)."""
    run = Path(cfg.tokenizer).parent.name
    if not run.startswith("vqgan_"):
        raise ValueError(
            f"cannot tell the stage-1 config from tokenizer={cfg.tokenizer!r}: pass --vqgan-config"
        )
    return f"vqgan/{run.removeprefix('vqgan_')}.yaml"


def network(spec: dict[str, Any]) -> tuple[LDMRunConfig, list[int], VQGANRunConfig]:
    """A network spec's stage-2 config (``model`` set for latents or pixels), input shape and stage-1 config."""
    cfg = load_stage_config(LDMRunConfig, spec["config"], spec["overrides"])
    vq = load_stage_config(VQGANRunConfig, spec["vqgan_config"] or vqgan_config_name(cfg))
    clip = (vq.data.frames, vq.data.resolution, vq.data.resolution)
    if spec["kind"] == "latent":
        shape, block = list(vq.model.latent_shape(*clip)), cfg.model.block_type
    else:
        shape, block = [3, clip[0], clip[1] // 2, clip[2] // 2], "factorized"
    model = dataclasses.replace(
        cfg.model, in_channels=shape[0], out_channels=None, num_classes=NUM_CLASSES, block_type=block
    )
    return dataclasses.replace(cfg, model=model), shape, vq


def flops_fb(model: UNetConfig, shape: Sequence[int], batch: int) -> int:
    """FLOPs of one forward + backward of ``model`` on a batch (meta device; attention counted)."""

    def build() -> Callable[[], Any]:
        net = UNet3D(model)
        x = torch.randn(batch, *shape)
        kw = {"y": torch.zeros(batch, dtype=torch.long), "fps": torch.full((batch,), UCF_FPS)}
        if model.context_frames:
            kw.update(context=torch.randn_like(x), context_mask=torch.ones(batch, 1, *shape[1:]))
        t = torch.zeros(batch, dtype=torch.long)
        return lambda: net(x, t, **kw).float().pow(2).mean().backward()

    return count_flops_meta(build)


def bench_unet(spec: dict[str, Any], repeats: int, warmup: int, budget_s: float) -> dict[str, Any]:
    """Measure one network's training step in this process; returns the numbers as plain data."""
    import deepspeed  # noqa: F401 - imported before the baseline, like torch

    init_distributed("gloo")
    baseline = rss_gib()
    cfg, shape, _ = network(spec)
    torch.manual_seed(0)
    step = ldm_train_step(cfg, shape, spec["batch"])
    batch = int(step.batch["latent"].shape[0])
    flops = flops_fb(cfg.model, shape, batch)
    params = sum(p.numel() for p in step.engines["unet"].module.parameters() if p.numel() > 0)
    params = params or sum(p.numel() for p in UNet3D(cfg.model).parameters())  # ZeRO-3 partitions them
    before = step.snapshot()
    timing = time_call(step, repeats, warmup=warmup, budget_s=budget_s)
    return {
        **spec,
        "shape": shape,
        "batch": batch,
        "block_type": cfg.model.block_type,
        "precision": cfg.train.precision,
        "zero_stage": cfg.train.zero_stage,
        "optimizers": step.optimizers(),
        "weights_changed": step.changed_since(before),
        "params": params,
        "flops_fb_per_sample": flops / batch,
        "step": timing.to_dict(),
        "samples_per_s": batch / timing.median,
        "peak_rss_gib": max(peak_rss_gib() - baseline, 0.0),
        "timings_label": timing.label(),
    }


def _row(r: dict[str, Any]) -> dict[str, str]:
    cells = [
        r["name"],
        "x".join(str(s) for s in r["shape"]),
        fmt(r["params"] / 1e6),
        fmt(r["flops_fb_per_sample"] / 1e9),
        str(r["batch"]),
        f"{r['precision']}, ZeRO {r['zero_stage']}",
        fmt(r["step"]["median_s"]),
        fmt(r["samples_per_s"]),
        fmt(r["peak_rss_gib"]) + ("" if r.get("isolated", True) else " (shared)"),
        r["timings_label"],
    ]
    return dict(zip(COLUMNS, cells, strict=True))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the latent-vs-pixel U-Net benchmark, print a table and return the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, "ldm/B.yaml", what="network")
    parser.add_argument(
        "--batch", type=int, default=None, help="samples per step (default train.micro_batch_size)"
    )
    parser.add_argument(
        "--vqgan-config", default=None, help="stage-1 config of the tokenizer (default: see above)"
    )
    parser.add_argument(
        "--no-isolate",
        action="store_true",
        help="measure in this process (faster start; peak memory then mixes across networks)",
    )
    parser.add_argument(
        "--kinds", default="latent,pixel", help="networks to step: latent, pixel or both (default both)"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one spec as JSON
    args = parser.parse_args(argv)
    threads = set_threads(args.threads)
    if args.batch is not None and args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")

    if args.worker is not None:
        result = bench_unet(json.loads(args.worker), args.repeats, args.warmup, args.budget_s)
        worker_result(result)
        return result

    names = config_names(args.config)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds or any(k not in ("latent", "pixel") for k in kinds):
        raise ValueError(f"--kinds takes latent, pixel or latent,pixel, got {args.kinds!r}")
    specs = []
    for name in names:
        network(
            {"config": name, "overrides": args.overrides, "vqgan_config": args.vqgan_config, "kind": "latent"}
        )
        common = {"config": name, "overrides": list(args.overrides), "vqgan_config": args.vqgan_config}
        label = {"latent": f"latent U-Net of {name}", "pixel": f"pixel VDM-style, widths of {name}"}
        specs += [{**common, "batch": args.batch, "kind": k, "name": label[k]} for k in kinds]
    info = machine_info()
    print("Latent vs pixel-space video U-Net training step (stage 2), 101 classes + fps conditioning")
    print(machine_line(info))
    print(
        "step = run_updates(diffusion_step update) on a build_engine engine with the config's train section, "
        "for both networks; peak RSS = fresh process high-water mark above its post-import baseline"
    )
    rows: list[dict[str, Any]] = []
    for spec in specs:
        if args.no_isolate:
            r = bench_unet(spec, args.repeats, args.warmup, args.budget_s)
            r["isolated"] = False
        else:
            flags = ["--repeats", str(args.repeats), "--warmup", str(args.warmup)]
            flags += ["--budget-s", str(args.budget_s), "--threads", str(threads)]
            r = run_worker("benchmarks.ldm", spec, flags)
            r["isolated"] = True
        rows.append(r)
    print(format_table(COLUMNS, [_row(r) for r in rows]))
    print(
        f"median of the timed steps after {args.warmup} warm-up step(s); '*' = the warm-up step took > 30 s "
        "and is kept as the first sample (its one-time costs are < 1% of it); optimisers: "
        + ", ".join(sorted({o for r in rows for o in r["optimizers"].values()}))
    )

    comparisons: dict[str, dict[str, float]] = {}
    for name in names if len(kinds) == 2 else ():
        lat = next(r for r in rows if r["config"] == name and r["kind"] == "latent")
        pix = next(r for r in rows if r["config"] == name and r["kind"] == "pixel")
        ratio = pix["step"]["median_s"] / lat["step"]["median_s"]
        flop_ratio = pix["flops_fb_per_sample"] / lat["flops_fb_per_sample"]
        comparisons[name] = {"step_time_ratio": ratio, "flop_ratio": flop_ratio}
        lat_side, pix_side = lat["shape"][-1], pix["shape"][-1]
        frame_side = 2 * pix_side  # the latent model's clips have twice the pixel model's side
        print(
            f"[{name}] pixel/latent training step time: {ratio:.1f}x (FLOPs ratio {flop_ratio:.1f}x); the "
            f"latent model makes {frame_side}x{frame_side} frames from {lat_side}x{lat_side} latents, the "
            f"pixel model {pix_side}x{pix_side} frames (4x fewer pixels). Paper: VQ-VDM ~{PAPER_SPEEDUP:.1f}x "
            "faster than VDM (sampling 3.95 s vs 35.26 s per video, GPU) at 4x larger frames."
        )
    return {"machine": info, "results": rows, "comparisons": comparisons}


if __name__ == "__main__":
    main()
