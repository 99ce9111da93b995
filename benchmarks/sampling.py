"""Sampling-speed benchmark: seconds per video for N DDIM steps with classifier-free guidance, latent vs pixel.

``python -m benchmarks.sampling [--config ldm/B.yaml] [--steps 100] [--guidance 4] [--repeats N]
[--threads N] [a.b=c ...]``

One class-conditional video per run on CPU, in ``sample.precision`` (fp32 unless overridden), through
the functions the sampler and the trainer's sample videos use: ``generate_latents``
(vqvdm_scale.sample.api: DDIM with the config's ``sample`` and ``diffusion`` sections; any guidance
weight other than 0 and 1 runs the conditional and unconditional passes as one batch-of-2 forward per
step) and, for the latent model, ``decode_latents`` (nearest-code quantisation when ``sample.quantize``,
then the tokenizer's decoder). The networks are the ones
``benchmarks.ldm`` trains (default config ``ldm/B.yaml``):

- latent (VQ-VDM style): the config's U-Net on the latents of its stage-1 config (B: the vqvdm
  tokenizer's 8x4x16x16 latents, decoded to a 16x128x128 video, decode included in the total);
- pixel (VDM style): the same widths with factorised space-time blocks on 3x16x64x64 RGB clips.

All DDIM steps cost the same (one guided network call plus a few element-wise ops), so when running every
step would take too long the script times ``k`` steps (``--timed-steps``, or as many as fit in
``--step-budget-s`` after a one-step warm-up) and scales linearly to ``--steps``, saying so in the output.
The paper's figures (VQ-VDM 3.95 s vs VDM 35.26 s per video, on their GPU) are printed beside ours.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from benchmarks import common
from benchmarks.ldm import NUM_CLASSES, network
from benchmarks.steps import UCF_FPS
from vqvdm_scale.diffusion import GaussianDiffusion, cfg_model_fn
from vqvdm_scale.formats.latent_shards import LatentStats
from vqvdm_scale.formats.ldm_export import LatentSpec
from vqvdm_scale.models.tokenizer import VQTokenizer
from vqvdm_scale.models.unet.model import UNet3D
from vqvdm_scale.sample.api import SampleConfig, compile_for_sampling, decode_latents, generate_latents

__all__ = ["COLUMNS", "PAPER_SECONDS", "bench_sampler", "choose_timed_steps", "main"]

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
    "warm-up s",
    "timings",
]


def choose_timed_steps(steps: int, one_call_s: float, timed_steps: int | None, step_budget_s: float) -> int:
    """How many DDIM steps to time per repeat: all when they fit in the budget, else fewer (>= 1)."""
    if timed_steps is not None:
        return min(timed_steps, steps)
    return max(1, min(steps, int(step_budget_s / max(one_call_s, 1e-6))))


def bench_sampler(
    spec: dict[str, Any],
    sample: SampleConfig,
    repeats: int,
    timed_steps: int | None,
    step_budget_s: float,
    budget_s: float,
) -> dict[str, Any]:
    """Seconds per video of ``sample.steps`` guided DDIM steps (+ tokenizer decode for the latent kind)."""
    kind = spec["kind"]
    cfg, shape, vq = network(spec)
    torch.manual_seed(0)
    net = UNet3D(cfg.model).eval()
    diffusion = GaussianDiffusion(
        dataclasses.replace(cfg.diffusion, clip_denoised=cfg.diffusion.clip_denoised or kind == "pixel")
    )
    c = shape[0]
    latent = LatentSpec(tuple(shape), LatentStats(torch.zeros(c), torch.ones(c)), fps=UCF_FPS)  # type: ignore[arg-type]
    labels = torch.zeros(1, dtype=torch.long)
    tok = VQTokenizer(vq.model).eval() if kind == "latent" else None
    if sample.compile:  # compiled in the warm-up calls below, not timed
        net = compile_for_sampling(net, tok)  # type: ignore[assignment]

    def run(k: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(sample.seed)
        return generate_latents(
            net, diffusion, latent, labels, dataclasses.replace(sample, steps=k), generator=g
        )

    def build_step() -> Callable[[], Any]:
        meta_net = UNet3D(cfg.model)
        y, fps = torch.zeros(1, dtype=torch.long), torch.ones(1)
        fn = cfg_model_fn(meta_net, y, fps, sample.guidance, NUM_CLASSES)
        z, t = torch.randn(1, *shape), torch.zeros(1, dtype=torch.long)
        return lambda: fn(z, t)

    step_flops = common.count_flops_meta(build_step)
    t0 = time.perf_counter()
    z = run(1)  # warm-up: one guided step (and the compile, with sample.compile)
    warmup_s = time.perf_counter() - t0
    if sample.compile:
        t0 = time.perf_counter()
        z = run(1)
    k = choose_timed_steps(sample.steps, time.perf_counter() - t0, timed_steps, step_budget_s)
    timing = common.time_call(lambda: run(k), repeats, warmup=0, budget_s=budget_s)
    per_step = timing.median / k
    frames, side = vq.data.frames, vq.data.resolution
    result: dict[str, Any] = {
        "kind": kind,
        "config": spec["config"],
        "video": [frames, side, side] if kind == "latent" else shape[1:],
        "shape": shape,
        "guidance": sample.guidance,
        "steps": sample.steps,
        "timed_steps": k,
        "scaled": k < sample.steps,
        "sample": timing.to_dict(),
        "s_per_step": per_step,
        "step_flops": step_flops,
        "decode_s": 0.0,
        "decode_flops": 0,
        "paper_s": PAPER_SECONDS[kind],
        "warmup_s": warmup_s,
        "timings_label": f"steps {timing.label()}",
    }
    if tok is not None:
        t0 = time.perf_counter()
        decode_latents(tok, z, latent, sample.quantize, sample.precision)  # warm-up (compile)
        result["warmup_s"] += time.perf_counter() - t0
        dec = common.time_call(
            lambda: decode_latents(tok, z, latent, sample.quantize, sample.precision),
            repeats,
            warmup=0,
            budget_s=budget_s,
        )

        def build_decoder() -> Callable[[], Any]:
            decoder = VQTokenizer(vq.model).decoder
            zz = torch.randn(1, *shape)
            return lambda: decoder(zz)

        result["decode_s"] = dec.median
        result["decode"] = dec.to_dict()
        result["decode_flops"] = common.count_flops_meta(build_decoder)
        result["timings_label"] += f", decode {dec.label()}"
    result["s_per_video"] = sample.steps * per_step + result["decode_s"]
    result["flops_per_video"] = sample.steps * step_flops + result["decode_flops"]
    return result


def _row(r: dict[str, Any]) -> dict[str, str]:
    name = f"latent U-Net of {r['config']} + decode" if r["kind"] == "latent" else "pixel VDM-style"
    return {
        "model": name,
        "video TxHxW": "x".join(str(s) for s in r["video"]),
        "denoiser input": "x".join(str(s) for s in r["shape"]),
        "timed steps": f"{r['timed_steps']}/{r['steps']}",
        "s/DDIM step": common.fmt(r["s_per_step"]),
        "decode (s)": common.fmt(r["decode_s"]) if r["kind"] == "latent" else "-",
        "s/video": common.fmt(r["s_per_video"]) + (" (scaled)" if r["scaled"] else ""),
        "GFLOPs/video": common.fmt(r["flops_per_video"] / 1e9),
        "paper s/video (GPU)": f"{r['paper_s']:.2f}",
        "warm-up s": common.fmt(r["warmup_s"]),
        "timings": r["timings_label"],
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the sampling benchmark (latent then pixel) for one config, print a table and return the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser, "ldm/B.yaml", what="measurement")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps per video (default sample.steps)")
    parser.add_argument(
        "--guidance", type=float, default=None, help="guidance weight w (default sample.guidance)"
    )
    parser.add_argument(
        "--timed-steps", type=int, default=None, help="DDIM steps per timed run (default: fit)"
    )
    parser.add_argument(
        "--step-budget-s", type=float, default=60.0, help="seconds one timed run may take (sets timed steps)"
    )
    parser.add_argument(
        "--vqgan-config", default=None, help="stage-1 config of the tokenizer (see benchmarks.ldm)"
    )
    args = parser.parse_args(argv)
    common.set_threads(args.threads)
    names = common.config_names(args.config)
    if len(names) != 1:
        raise ValueError(f"--config takes one stage-2 config here, got {len(names)}")
    spec = {"config": names[0], "overrides": list(args.overrides), "vqgan_config": args.vqgan_config}
    cfg, _, _ = network({**spec, "kind": "latent"})
    sample = dataclasses.replace(
        cfg.sample,
        num_clips=1,
        steps=cfg.sample.steps if args.steps is None else args.steps,
        guidance=cfg.sample.guidance if args.guidance is None else args.guidance,
    )
    if sample.sampler != "ddim":
        raise ValueError("the benchmark times DDIM sampling: pass sample.sampler=ddim")
    if args.timed_steps is not None and args.timed_steps < 1:
        raise ValueError(f"--timed-steps must be >= 1, got {args.timed_steps}")
    if sample.guidance in (0.0, 1.0):
        raise ValueError("guidance 0 or 1 runs a single pass; give another weight to measure guided sampling")

    info = common.machine_info()
    print(
        f"Sampling speed ({names[0]}): one video, generate_latents with {sample.steps} DDIM steps, "
        f"classifier-free guidance w={sample.guidance} (cond + uncond as one batch of 2), {sample.precision}"
    )
    print(common.machine_line(info))
    rows = [
        bench_sampler(
            {**spec, "kind": kind}, sample, args.repeats, args.timed_steps, args.step_budget_s, args.budget_s
        )
        for kind in ("latent", "pixel")
    ]
    print(common.format_table(COLUMNS, [_row(r) for r in rows]))
    if any(r["scaled"] for r in rows):
        print(
            f"(scaled): timed fewer than {sample.steps} DDIM steps per run (see 'timed steps') and scaled the "
            f"step time linearly to {sample.steps}; every DDIM step costs one guided network call"
        )
    print(
        "medians of the timed runs; decode = decode_latents (nearest-code quantisation + tokenizer decoder), "
        "after one warm-up ('*': the warm-up took > 30 s and is kept as the first sample)"
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
