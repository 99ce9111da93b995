"""Stage-2 benchmark: latent video U-Net training step against a pixel-space VDM-style U-Net, side by side.

``python -m benchmarks.ldm [--presets tiny,B] [--repeats N] [--batch N] [--threads N]``

For each U-Net preset, two class-conditional (UCF-101: 101 classes + the null class) fps-conditioned
networks, each in its own fresh process (so peak-memory readings do not mix):

- latent: the preset on the tokenizer's latents. "tiny" runs on the tiny tokenizer's latents of 16x32x32
  clips (D=8 x 4x8x8); S/B/L on the vqvdm tokenizer's latents of 16x128x128 clips (D=8 x 4x16x16). "B" is
  the paper-scale model: it is what configs/ldm/B.yaml trains on those latents (139M parameters, four
  levels with attention at 1/2, 1/4, 1/8); "S" (52M) can be given with --presets for comparison.
- pixel: a VDM-style (Ho et al. 2022) pixel-space U-Net: the same preset widths (model_channels,
  channel_mult, attention factors) on RGB clips of half the side, as VDM's 64x64 against VQ-VDM's 128x128
  (16x64x64 for the paper-scale presets, 16x16x16 for tiny), with space-time factorised blocks
  ((1,3,3) spatial then (3,1,1) temporal convs, as VDM), attention at the lower resolutions only.

Measured per network, fp32 on CPU: one training step (DiffusionLoss forward: q_sample + label dropout +
U-Net forward + L_simple; backward; AdamW step) at the same batch for both networks, samples/s, GFLOPs
per sample of forward + backward (FlopCounterMode on the meta device, so attention is counted),
parameters, and peak resident memory above the fresh process's baseline after imports (Linux VmHWM: a
process-wide high-water mark of everything the step touched: weights, AdamW state, activations and
allocator slack; tracemalloc cannot see torch's C++ allocations).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any

import torch

from benchmarks.common import (
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
from vqvdm_scale.diffusion import DiffusionConfig, DiffusionLoss, GaussianDiffusion
from vqvdm_scale.models.tokenizer import tokenizer_preset
from vqvdm_scale.models.unet.model import UNet3D, UNetConfig
from vqvdm_scale.models.unet.presets import UNET_PRESETS, unet_preset

__all__ = ["COLUMNS", "NUM_CLASSES", "PAPER_SPEEDUP", "bench_unet", "main", "network_specs"]

NUM_CLASSES = 101  # UCF-101
UCF_FPS = 25.0
# VQ-VDM's headline: about 9x faster sampling than VDM (3.95 s vs 35.26 s per video) at 4x the frame area.
PAPER_SPEEDUP = 35.26 / 3.95

COLUMNS = [
    "model",
    "input CxTxHxW",
    "params (M)",
    "GFLOPs/sample f+b",
    "batch",
    "step (s)",
    "samples/s",
    "peak RSS (GiB)",
    "timings",
]


def network_specs(preset: str, batch: int | None) -> list[dict[str, Any]]:
    """The latent and the pixel-space network measured for U-Net ``preset`` (plain data for a worker)."""
    if preset not in UNET_PRESETS:
        raise ValueError(f"unknown U-Net preset {preset!r}; choose from {', '.join(UNET_PRESETS)}")
    tok, clip = ("tiny", (16, 32, 32)) if preset == "tiny" else ("vqvdm", (16, 128, 128))
    latent = list(tokenizer_preset(tok).latent_shape(*clip))
    frames, side = clip[0], clip[1] // 2
    b = batch if batch is not None else (8 if preset == "tiny" else 2)
    common = {"preset": preset, "batch": b}
    return [
        {
            **common,
            "kind": "latent",
            "name": f"latent {preset} ({tok} tok. latents of {'x'.join(map(str, clip))})",
            "block_type": "3d",
            "shape": latent,
        },
        {
            **common,
            "kind": "pixel",
            "name": f"pixel VDM-style {preset}, factorised",
            "block_type": "factorized",
            "shape": [3, frames, side, side],
        },
    ]


def unet_config(spec: dict[str, Any]) -> UNetConfig:
    """The U-Net config of a network spec: the preset, class- and fps-conditional."""
    return unet_preset(
        spec["preset"],
        in_channels=spec["shape"][0],
        num_classes=NUM_CLASSES,
        use_fps=True,
        block_type=spec["block_type"],
    )


def _inputs(batch: int, shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    z0 = torch.randn(batch, *shape)
    y = torch.randint(0, NUM_CLASSES, (batch,))
    fps = torch.full((batch,), UCF_FPS)
    return z0, y, fps


def bench_unet(spec: dict[str, Any], repeats: int, warmup: int, budget_s: float) -> dict[str, Any]:
    """Measure one network's training step in this process; returns the numbers as plain data."""
    baseline = rss_gib()
    cfg = unet_config(spec)
    batch, shape = int(spec["batch"]), spec["shape"]

    def build() -> Callable[[], Any]:
        net = UNet3D(cfg)
        x = torch.randn(batch, *shape)
        t = torch.zeros(batch, dtype=torch.long)
        y = torch.zeros(batch, dtype=torch.long)
        fps = torch.full((batch,), UCF_FPS)
        return lambda: net(x, t, y=y, fps=fps).float().pow(2).mean().backward()

    flops = count_flops_meta(build)

    torch.manual_seed(0)
    net = UNet3D(cfg)
    params = sum(p.numel() for p in net.parameters())
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    loss_fn = DiffusionLoss(GaussianDiffusion(DiffusionConfig()), NUM_CLASSES)
    z0, y, fps = _inputs(batch, shape)

    def step() -> None:
        loss, _, _ = loss_fn(net, z0, {"y": y, "fps": fps})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    timing = time_call(step, repeats, warmup=warmup, budget_s=budget_s)
    return {
        **spec,
        "params": params,
        "flops_fb_per_sample": flops / batch,
        "step": timing.to_dict(),
        "samples_per_s": batch / timing.median,
        "peak_rss_gib": max(peak_rss_gib() - baseline, 0.0),
        "timings_label": timing.label(),
    }


def _row(r: dict[str, Any]) -> dict[str, str]:
    return {
        "model": r["name"],
        "input CxTxHxW": "x".join(str(s) for s in r["shape"]),
        "params (M)": fmt(r["params"] / 1e6),
        "GFLOPs/sample f+b": fmt(r["flops_fb_per_sample"] / 1e9),
        "batch": str(r["batch"]),
        "step (s)": fmt(r["step"]["median_s"]),
        "samples/s": fmt(r["samples_per_s"]),
        "peak RSS (GiB)": fmt(r["peak_rss_gib"]) + ("" if r.get("isolated", True) else " (shared)"),
        "timings": r["timings_label"],
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the latent-vs-pixel U-Net benchmark, print a table and return the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,B", help="comma list of U-Net presets (tiny, S, B, L)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per network (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps per network")
    parser.add_argument("--batch", type=int, default=None, help="samples per step (default: tiny 8, else 2)")
    parser.add_argument(
        "--budget-s", type=float, default=240.0, help="stop repeating a measurement past this many seconds"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--no-isolate",
        action="store_true",
        help="measure in this process (faster start; peak memory then mixes across networks)",
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

    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    specs = [s for p in presets for s in network_specs(p, args.batch)]
    info = machine_info()
    print("Latent vs pixel-space video U-Net training step (stage 2), fp32, 101 classes + fps conditioning")
    print(machine_line(info))
    print(
        "step = DiffusionLoss (q_sample, label dropout p=0.5, U-Net fwd, L_simple) + backward + AdamW; "
        "peak RSS = fresh process high-water mark above its post-import baseline"
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
        "and is kept as the first sample (its one-time costs are < 1% of it)"
    )

    comparisons: dict[str, dict[str, float]] = {}
    for preset in presets:
        lat = next(r for r in rows if r["preset"] == preset and r["kind"] == "latent")
        pix = next(r for r in rows if r["preset"] == preset and r["kind"] == "pixel")
        ratio = pix["step"]["median_s"] / lat["step"]["median_s"]
        flop_ratio = pix["flops_fb_per_sample"] / lat["flops_fb_per_sample"]
        comparisons[preset] = {"step_time_ratio": ratio, "flop_ratio": flop_ratio}
        lat_side, pix_side = lat["shape"][-1], pix["shape"][-1]
        frame_side = 2 * pix_side  # the latent model's clips have twice the pixel model's side
        print(
            f"[{preset}] pixel/latent training step time: {ratio:.1f}x (FLOPs ratio {flop_ratio:.1f}x); the "
            f"latent model makes {frame_side}x{frame_side} frames from {lat_side}x{lat_side} latents, the "
            f"pixel model {pix_side}x{pix_side} frames (4x fewer pixels). Paper: VQ-VDM ~{PAPER_SPEEDUP:.1f}x "
            "faster than VDM (sampling 3.95 s vs 35.26 s per video, GPU) at 4x larger frames."
        )
    return {"machine": info, "results": rows, "comparisons": comparisons}


if __name__ == "__main__":
    main()
