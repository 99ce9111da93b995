"""Stage-1 tokenizer benchmark: parameters, forward FLOPs, training-step time and inference clips/s.

``python -m benchmarks.vqgan [--presets tiny,vqvdm] [--repeats N] [--threads N]``

Per tokenizer preset at its clip size (tiny 16x32x32, batch 8; vqvdm/tats 16x128x128, batch 1) in fp32:
- parameters of the tokenizer and, separately, of its discriminators (3D clip + 2D frame PatchGANs);
- GFLOPs per clip of encoder + quantizer + decoder forward (torch's FlopCounterMode);
- a full training step: tokenizer forward, VQGAN generator loss (L1 + VQ + adaptive-weighted GAN +
  feature matching, GAN on from step 0), backward, Adam step; then a discriminator forward/backward/Adam
  step. The LPIPS term is OFF: its VGG16 weights cannot be downloaded offline (with them, add one VGG16
  pass on ``perceptual_frames`` frames per clip). Loss weights and discriminator sizes follow
  configs/vqgan/{tiny,vqvdm}.yaml; activation checkpointing is off (the vqvdm config turns it on to
  save memory, at the price of about one more forward);
- encoder + quantizer + decoder inference (eval mode, no grad) clips/s.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
from vqvdm_scale.losses.vqgan_loss import VQGANLoss, VQGANLossConfig
from vqvdm_scale.models.tokenizer import (
    TOKENIZER_PRESETS,
    DiscriminatorConfig,
    Discriminators,
    VQTokenizer,
    tokenizer_preset,
)
from vqvdm_scale.monitor.meters import count_flops

__all__ = ["COLUMNS", "TokenizerBench", "bench_tokenizer", "main"]

COLUMNS = [
    "preset",
    "clip TxHxW",
    "params (M)",
    "disc params (M)",
    "GFLOPs/clip fwd",
    "batch",
    "train step (s)",
    "train clips/s",
    "infer clips/s",
    "infer GFLOP/s",
    "timings",
]


@dataclass
class TokenizerBench:
    """What to measure for one tokenizer preset: clip size, batch, discriminator and loss settings."""

    preset: str
    clip: tuple[int, int, int]
    batch: int
    disc: DiscriminatorConfig
    loss: VQGANLossConfig
    lr: float


def bench_spec(preset: str) -> TokenizerBench:
    """The measured setting of ``preset`` (clip size from its preset comment; losses from configs/vqgan)."""
    if preset not in TOKENIZER_PRESETS:
        raise ValueError(f"unknown tokenizer preset {preset!r}; choose from {', '.join(TOKENIZER_PRESETS)}")
    if preset == "tiny":
        return TokenizerBench(
            preset,
            (16, 32, 32),
            8,
            DiscriminatorConfig(base_channels=16, num_layers=2, frames_2d=4),
            VQGANLossConfig(
                perceptual_weight=0.0, gan_weight=0.1, feature_match_weight=0.1, disc_start_step=0
            ),
            5e-4,
        )
    return TokenizerBench(
        preset,
        (16, 128, 128),
        1,
        DiscriminatorConfig(base_channels=64, num_layers=3, frames_2d=4),
        VQGANLossConfig(perceptual_weight=0.0, gan_weight=1.0, feature_match_weight=4.0, disc_start_step=0),
        1e-4,
    )


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def forward_flops_per_clip(model: VQTokenizer, clip: tuple[int, int, int]) -> int:
    """FLOPs of encoder + quantizer + decoder forward for one clip.

    Encoder and decoder are counted on the meta device (see :func:`count_flops_meta`); the quantizer uses
    ``bincount``, which has no meta kernel, so it runs for real on a random latent of the right shape
    (it is a small nearest-code search).
    """
    cfg = model.cfg
    latent = cfg.latent_shape(*clip)

    def build_encoder() -> Callable[[], Any]:
        enc = VQTokenizer(cfg).encoder
        x = torch.randn(1, cfg.in_channels, *clip)
        return lambda: enc(x)

    def build_decoder() -> Callable[[], Any]:
        dec = VQTokenizer(cfg).decoder
        z = torch.randn(1, *latent)
        return lambda: dec(z)

    quantizer = model.quantizer
    was_training = quantizer.training
    quantizer.eval()  # no EMA codebook update from a benchmark input
    z = torch.randn(1, *latent)
    with torch.no_grad():
        q_flops = count_flops(lambda: quantizer(z))
    quantizer.train(was_training)
    return count_flops_meta(build_encoder) + q_flops + count_flops_meta(build_decoder)


def bench_tokenizer(spec: TokenizerBench, repeats: int, budget_s: float, warmup: int = 1) -> dict[str, Any]:
    """Measure one tokenizer preset; returns parameters, FLOPs and timings as plain data."""
    torch.manual_seed(0)
    cfg = tokenizer_preset(spec.preset)
    model = VQTokenizer(cfg)
    disc = Discriminators(spec.disc)
    loss = VQGANLoss(spec.loss)
    opt_g = torch.optim.Adam(model.parameters(), lr=spec.lr, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=spec.lr, betas=(0.5, 0.9))
    # Clips in [-1, 1] as the loader delivers them.
    x = torch.rand(spec.batch, cfg.in_channels, *spec.clip) * 2 - 1

    flops = forward_flops_per_clip(model, spec.clip)

    def train_step() -> None:
        model.train()
        x_rec, qout = model(x)
        disc.requires_grad_(False)  # the generator loss must not leave gradients in the discriminators
        try:
            g_loss, _ = loss.generator_loss(x, x_rec, qout, disc, step=0, last_layer=model.last_layer)
        finally:
            disc.requires_grad_(True)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        d_loss, _ = loss.discriminator_loss(x, x_rec.detach(), disc, step=0)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

    def infer() -> None:
        model.eval()
        with torch.no_grad():
            model.decode(model.quantize(model.encode(x)).z_q)

    train = time_call(train_step, repeats, warmup=warmup, budget_s=budget_s)
    inference = time_call(infer, repeats, warmup=warmup, budget_s=budget_s)
    infer_clips_s = spec.batch / inference.median
    return {
        "preset": spec.preset,
        "clip": list(spec.clip),
        "latent": list(cfg.latent_shape(*spec.clip)),
        "batch": spec.batch,
        "params": _params(model),
        "disc_params": _params(disc),
        "flops_fwd_per_clip": flops,
        "train_step": train.to_dict(),
        "train_clips_per_s": spec.batch / train.median,
        "infer": inference.to_dict(),
        "infer_clips_per_s": infer_clips_s,
        "infer_gflop_per_s": flops * infer_clips_s / 1e9,
        "timings_label": f"train {train.label()}, infer {inference.label()}",
    }


def _row(r: dict[str, Any]) -> dict[str, str]:
    return {
        "preset": r["preset"],
        "clip TxHxW": "x".join(str(s) for s in r["clip"]),
        "params (M)": fmt(r["params"] / 1e6),
        "disc params (M)": fmt(r["disc_params"] / 1e6),
        "GFLOPs/clip fwd": fmt(r["flops_fwd_per_clip"] / 1e9),
        "batch": str(r["batch"]),
        "train step (s)": fmt(r["train_step"]["median_s"]),
        "train clips/s": fmt(r["train_clips_per_s"]),
        "infer clips/s": fmt(r["infer_clips_per_s"]),
        "infer GFLOP/s": fmt(r["infer_gflop_per_s"]),
        "timings": r["timings_label"],
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the tokenizer benchmark, print a table and return the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,vqvdm", help="comma list of tokenizer presets")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up calls per measurement")
    parser.add_argument("--batch", type=int, default=None, help="clips per step for every preset")
    parser.add_argument(
        "--budget-s", type=float, default=240.0, help="stop repeating a measurement past this many seconds"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    specs = [bench_spec(p) for p in presets]  # validate every name before spending minutes on the first
    if args.batch is not None:
        if args.batch < 1:
            raise ValueError(f"--batch must be >= 1, got {args.batch}")
        for spec in specs:
            spec.batch = args.batch

    info = machine_info()
    print("VQGAN tokenizer benchmark (stage 1), fp32")
    print(machine_line(info))
    print(
        "train step = tokenizer fwd + generator loss (L1 + VQ + GAN x eq.7 adaptive weight + feature matching)"
        " + backward + Adam, then discriminator fwd/bwd/Adam; LPIPS OFF (no VGG16 weights offline)"
    )
    results: dict[str, Any] = {}
    for spec in specs:
        results[spec.preset] = bench_tokenizer(spec, args.repeats, args.budget_s, args.warmup)
    print(format_table(COLUMNS, [_row(r) for r in results.values()]))
    print(
        f"median of the timed calls after {args.warmup} warm-up call(s); '*' = the warm-up call took > 30 s "
        "and is kept as the first sample (its one-time costs are < 1% of it)"
    )
    return {"machine": info, "results": results}


if __name__ == "__main__":
    main()
