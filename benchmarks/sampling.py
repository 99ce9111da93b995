"""Sampling-speed benchmark: seconds per video for N DDIM steps with classifier-free guidance, latent vs pixel.

``python -m benchmarks.sampling [--preset B] [--steps 100] [--repeats N] [--threads N]``

One class-conditional video per run, fp32 on CPU, guidance weight ``--guidance`` (default 4.0, as
configs/ldm/B.yaml; any weight other than 0 and 1 runs the conditional and unconditional passes as one
batch-of-2 forward per step):

- latent (VQ-VDM style): the U-Net preset (default B, the paper-scale model of ``bench.ldm``) on the
  vqvdm tokenizer's 8x4x16x16 latents, then nearest-code quantisation and the tokenizer's decoder to a
  16x128x128 video (decode included in the total);
- pixel (VDM style): the same preset widths with factorised space-time blocks on 3x16x64x64 RGB clips.

For "tiny": the tiny tokenizer's 8x4x8x8 latents of 16x32x32 clips against 3x16x16x16 pixels.

All DDIM steps cost the same (one guided network call plus a few element-wise ops), so when running every
step would take too long the script times ``k`` steps (``--timed-steps``, or as many as fit in
``--step-budget-s`` after a one-call warm-up) and scales linearly to ``--steps``, saying so in the output.
The paper's figures (VQ-VDM 3.95 s vs VDM 35.26 s per video, on their GPU) are printed beside ours.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from benchmarks.common import (
    count_flops_meta,
    fmt,
    format_table,
    machine_info,
    machine_line,
    set_threads,
    time_call,
)
from vqvdm_scale.diffusion import DiffusionConfig, GaussianDiffusion, cfg_model_fn, ddim_sample
from vqvdm_scale.models.tokenizer import VQTokenizer, tokenizer_preset
from vqvdm_scale.models.unet.model import UNet3D, UNetConfig
from vqvdm_scale.models.unet.presets import UNET_PRESETS, unet_preset

__all__ = ["COLUMNS", "PAPER_SECONDS", "bench_sampler", "main"]

NUM_CLASSES = 101  # UCF-101
UCF_FPS = 25.0
# VQ-VDM's reported seconds per video (100 DDIM steps, their GPU): theirs vs VDM's.
PAPER_SECONDS = {"latent": 3.95, "pixel": 35.26}

COLUMNS = [
    "model",
    "video TxHxW",
    "denoiser input",
    "timed steps",
    "s/DDIM step",
    "decode (s)",
    "s/video",
    "GFLOPs/video",
    "paper s/video (GPU)",
    "timings",
]


def _unet(preset: str, shape: Sequence[int], block_type: str) -> UNetConfig:
    return unet_preset(
        preset, in_channels=shape[0], num_classes=NUM_CLASSES, use_fps=True, block_type=block_type
    )


def _choose_timed_steps(steps: int, one_call_s: float, timed_steps: int | None, step_budget_s: float) -> int:
    """How many DDIM steps to time per repeat: all when they fit in the budget, else fewer (>= 1)."""
    if timed_steps is not None:
        return min(timed_steps, steps)
    return max(1, min(steps, int(step_budget_s / max(one_call_s, 1e-6))))


def bench_sampler(
    kind: str,
    preset: str,
    steps: int,
    guidance: float,
    repeats: int,
    timed_steps: int | None,
    step_budget_s: float,
    budget_s: float,
) -> dict[str, Any]:
    """Seconds per video of ``steps`` guided DDIM steps (+ tokenizer decode for ``kind="latent"``)."""
    if preset == "tiny":
        tok_name, video = "tiny", (16, 32, 32)
    else:
        tok_name, video = "vqvdm", (16, 128, 128)
    tok_cfg = tokenizer_preset(tok_name)
    if kind == "latent":
        shape = list(tok_cfg.latent_shape(*video))
        block_type = "3d"
        out_video = list(video)
    elif kind == "pixel":
        out_video = [video[0], video[1] // 2, video[2] // 2]
        shape = [3, *out_video]
        block_type = "factorized"
    else:
        raise ValueError(f"kind must be 'latent' or 'pixel', got {kind!r}")
    cfg = _unet(preset, shape, block_type)

    torch.manual_seed(0)
    net = UNet3D(cfg).eval()
    diffusion = GaussianDiffusion(DiffusionConfig(clip_denoised=kind == "pixel"))
    y = torch.zeros(1, dtype=torch.long)
    fps = torch.full((1,), UCF_FPS)
    model_fn = cfg_model_fn(net, y, fps, guidance, null_class=NUM_CLASSES)
    noise = torch.randn(1, *shape)

    def build_step() -> Callable[[], Any]:
        meta_net = UNet3D(cfg)
        fn = cfg_model_fn(meta_net, torch.zeros(1, dtype=torch.long), torch.ones(1), guidance, NUM_CLASSES)
        z = torch.randn(1, *shape)
        t = torch.zeros(1, dtype=torch.long)
        return lambda: fn(z, t)

    step_flops = count_flops_meta(build_step)

    with torch.no_grad():
        t0 = time.perf_counter()
        model_fn(noise, torch.full((1,), diffusion.num_timesteps - 1, dtype=torch.long))  # warm-up call
        one_call = time.perf_counter() - t0
        k = _choose_timed_steps(steps, one_call, timed_steps, step_budget_s)
        sample = time_call(
            lambda: ddim_sample(model_fn, noise, diffusion, steps=k), repeats, warmup=0, budget_s=budget_s
        )
    per_step = sample.median / k
    result: dict[str, Any] = {
        "kind": kind,
        "preset": preset,
        "video": out_video,
        "shape": shape,
        "guidance": guidance,
        "steps": steps,
        "timed_steps": k,
        "scaled": k < steps,
        "sample": sample.to_dict(),
        "s_per_step": per_step,
        "step_flops": step_flops,
        "decode_s": 0.0,
        "decode_flops": 0,
        "paper_s": PAPER_SECONDS[kind],
        "timings_label": f"steps {sample.label()}",
    }
    if kind == "latent":
        tok = VQTokenizer(tok_cfg).eval()
        z = torch.randn(1, *shape)

        def decode() -> None:
            with torch.no_grad():
                tok.decode(tok.quantize(z).z_q)

        dec = time_call(decode, repeats, warmup=1, budget_s=budget_s)

        def build_decoder() -> Callable[[], Any]:
            decoder = VQTokenizer(tok_cfg).decoder
            zz = torch.randn(1, *shape)
            return lambda: decoder(zz)

        result["decode_s"] = dec.median
        result["decode"] = dec.to_dict()
        result["decode_flops"] = count_flops_meta(build_decoder)
        result["timings_label"] += f", decode {dec.label()}"
    result["s_per_video"] = steps * per_step + result["decode_s"]
    result["flops_per_video"] = steps * step_flops + result["decode_flops"]
    return result


def _row(r: dict[str, Any]) -> dict[str, str]:
    name = f"latent {r['preset']} + decode" if r["kind"] == "latent" else f"pixel VDM-style {r['preset']}"
    return {
        "model": name,
        "video TxHxW": "x".join(str(s) for s in r["video"]),
        "denoiser input": "x".join(str(s) for s in r["shape"]),
        "timed steps": f"{r['timed_steps']}/{r['steps']}",
        "s/DDIM step": fmt(r["s_per_step"]),
        "decode (s)": fmt(r["decode_s"]) if r["kind"] == "latent" else "-",
        "s/video": fmt(r["s_per_video"]) + (" (scaled)" if r["scaled"] else ""),
        "GFLOPs/video": fmt(r["flops_per_video"] / 1e9),
        "paper s/video (GPU)": f"{r['paper_s']:.2f}",
        "timings": r["timings_label"],
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the sampling benchmark (latent then pixel), print a table and return the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="B", help="U-Net preset for both networks (tiny, S, B, L)")
    parser.add_argument("--steps", type=int, default=100, help="DDIM steps per video")
    parser.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance weight w")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    parser.add_argument(
        "--timed-steps",
        type=int,
        default=None,
        help="DDIM steps per timed run (default: what fits the budget)",
    )
    parser.add_argument(
        "--step-budget-s", type=float, default=60.0, help="seconds one timed run may take (sets timed steps)"
    )
    parser.add_argument(
        "--budget-s", type=float, default=180.0, help="stop repeating a measurement past this many seconds"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    if args.preset not in UNET_PRESETS:
        raise ValueError(f"unknown U-Net preset {args.preset!r}; choose from {', '.join(UNET_PRESETS)}")
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.timed_steps is not None and args.timed_steps < 1:
        raise ValueError(f"--timed-steps must be >= 1, got {args.timed_steps}")
    if args.guidance in (0.0, 1.0):
        raise ValueError(
            "--guidance 0 or 1 runs a single pass; give another weight to measure guided sampling"
        )

    info = machine_info()
    print(
        f"Sampling speed: one video, {args.steps} DDIM steps, classifier-free guidance w={args.guidance} "
        "(cond + uncond as one batch of 2), fp32"
    )
    print(machine_line(info))
    rows = [
        bench_sampler(
            kind,
            args.preset,
            args.steps,
            args.guidance,
            args.repeats,
            args.timed_steps,
            args.step_budget_s,
            args.budget_s,
        )
        for kind in ("latent", "pixel")
    ]
    print(format_table(COLUMNS, [_row(r) for r in rows]))
    if any(r["scaled"] for r in rows):
        print(
            f"(scaled): timed fewer than {args.steps} DDIM steps per run (see 'timed steps') and scaled the "
            f"step time linearly to {args.steps}; every DDIM step costs one guided network call"
        )
    print(
        "medians of the timed runs; decode = nearest-code quantisation + tokenizer decoder, after one warm-up "
        "('*': the warm-up took > 30 s and is kept as the first sample)"
    )
    lat, pix = rows
    ratio = pix["s_per_video"] / lat["s_per_video"]
    flop_ratio = pix["flops_per_video"] / lat["flops_per_video"]
    paper_ratio = PAPER_SECONDS["pixel"] / PAPER_SECONDS["latent"]
    print(
        f"pixel/latent seconds per video: {ratio:.2f}x here (FLOPs ratio {flop_ratio:.2f}x); paper: "
        f"{PAPER_SECONDS['pixel']} s / {PAPER_SECONDS['latent']} s = {paper_ratio:.2f}x, with the latent "
        f"model's frames 4x larger ({'x'.join(map(str, lat['video'][1:]))} vs "
        f"{'x'.join(map(str, pix['video'][1:]))})"
    )
    return {
        "machine": info,
        "results": {r["kind"]: r for r in rows},
        "ratio": ratio,
        "flop_ratio": flop_ratio,
        "paper_ratio": paper_ratio,
    }


if __name__ == "__main__":
    main()
