"""Stage-1 tokenizer benchmark: parameters, forward FLOPs, training-step time and inference clips/s.

``python -m benchmarks.vqgan [--config vqgan/vqvdm.yaml[,vqgan/tiny.yaml]] [--batch N] [--repeats N]
[--threads N] [a.b=c ...]``

Per stage-1 config (default the paper-scale ``vqgan/vqvdm.yaml``; a path or a shipped name), at the
config's clip size (``data.frames`` x ``data.resolution``^2) and model, discriminators and loss:

- parameters of the tokenizer and, separately, of its discriminators (3D clip + 2D frame PatchGANs);
- GFLOPs per clip of encoder + quantizer + decoder forward (torch's FlopCounterMode, meta device);
- a training step: ``run_updates`` over the trainer's two updates (``generator_step`` then
  ``discriminator_step`` from vqvdm_scale.train.vqgan), each followed by ``engine.backward`` and
  ``engine.step`` on DeepSpeed engines from ``build_engine`` with the config's ``train`` section (AdamW
  with ``train.optim`` / ``train.disc_optim``, grad clipping, precision, ZeRO stage). The step index is
  ``loss.disc_start_step``, so the GAN and feature-matching terms are on, as in every step after the
  discriminator starts. LPIPS runs as configured; where its VGG16 weights are not on disk the trunk is
  randomly initialised (``loss.lpips_random_init=true``; the same cost);
- inference clips/s: ``encode_clips`` (what encode_latents.py runs) then ``decode_latents`` (what
  sampling runs: nearest-code quantisation + decoder), on a fresh fp32 tokenizer in eval mode.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch

from benchmarks import common
from benchmarks.steps import load_stage_config, vqgan_train_step
from vqvdm_scale.formats.latent_shards import LatentStats
from vqvdm_scale.formats.ldm_export import LatentSpec
from vqvdm_scale.models.tokenizer import TokenizerConfig, VQTokenizer
from vqvdm_scale.monitor.meters import count_flops
from vqvdm_scale.prep.latent_writer import encode_clips
from vqvdm_scale.sample.api import decode_latents
from vqvdm_scale.train.vqgan import VQGANRunConfig

__all__ = ["COLUMNS", "bench_tokenizer", "main"]

COLUMNS = [
    "config",
    "clip TxHxW",
    "params (M)",
    "disc params (M)",
    "GFLOPs/clip fwd",
    "batch",
    "precision",
    "train step (s)",
    "train clips/s",
    "infer clips/s",
    "infer GFLOP/s",
    "timings",
]

# Speed does not depend on the VGG16 weights; without them on disk the perceptual term would refuse to run.
LPIPS_RANDOM = "loss.lpips_random_init=true"


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def forward_flops_per_clip(model: VQTokenizer, clip: tuple[int, int, int]) -> int:
    """FLOPs of encoder + quantizer + decoder forward for one clip.

    Encoder and decoder are counted on the meta device (see :func:`count_flops_meta`); the quantizer uses
    ``bincount``, which has no meta kernel, so a fp32 copy of it runs for real on a random latent of the
    right shape (it is a small nearest-code search).
    """
    cfg: TokenizerConfig = model.cfg
    latent = cfg.latent_shape(*clip)

    def build_encoder() -> Callable[[], Any]:
        enc = VQTokenizer(cfg).encoder
        x = torch.randn(1, cfg.in_channels, *clip)
        return lambda: enc(x)

    def build_decoder() -> Callable[[], Any]:
        dec = VQTokenizer(cfg).decoder
        z = torch.randn(1, *latent)
        return lambda: dec(z)

    quantizer = copy.deepcopy(model.quantizer).float().eval()  # eval: no EMA codebook update
    z = torch.randn(1, *latent)
    with torch.no_grad():
        q_flops = count_flops(lambda: quantizer(z))
    return common.count_flops_meta(build_encoder) + q_flops + common.count_flops_meta(build_decoder)


def bench_tokenizer(
    name: str, cfg: VQGANRunConfig, batch: int | None, repeats: int, budget_s: float, warmup: int = 1
) -> dict[str, Any]:
    """Measure one stage-1 config; returns parameters, FLOPs, timings and what the step used."""
    torch.manual_seed(0)
    clip = (cfg.data.frames, cfg.data.resolution, cfg.data.resolution)
    step = vqgan_train_step(cfg, batch)
    x = step.batch
    b = int(x.shape[0])
    flops = forward_flops_per_clip(step.engines["autoencoder"].module, clip)  # type: ignore[arg-type]

    before = step.snapshot()
    train = common.time_call(step, repeats, warmup=warmup, budget_s=budget_s)
    changed = step.changed_since(before)

    tok = VQTokenizer(cfg.model).eval()  # what load_tokenizer gives encode_latents.py and the sampler
    latent = tuple(cfg.model.latent_shape(*clip))
    stats = LatentStats(torch.zeros(latent[0]), torch.ones(latent[0]))  # raw latents: identity normalisation
    spec = LatentSpec(latent, stats, fps=8.0)  # type: ignore[arg-type]
    clips = x.float()

    def infer() -> None:
        with torch.no_grad():
            _, z = encode_clips(tok, clips)
            decode_latents(tok, z, spec, quantize=True)

    inference = common.time_call(infer, repeats, warmup=warmup, budget_s=budget_s)
    infer_clips_s = b / inference.median
    return {
        "config": name,
        "clip": list(clip),
        "latent": list(latent),
        "batch": b,
        "precision": cfg.train.precision,
        "zero_stage": cfg.train.zero_stage,
        "optimizers": step.optimizers(),
        "weights_changed": changed,
        "params": _params(tok),
        "disc_params": _params(step.engines["discriminator"].module),
        "flops_fwd_per_clip": flops,
        "train_step": train.to_dict(),
        "train_clips_per_s": b / train.median,
        "infer": inference.to_dict(),
        "infer_clips_per_s": infer_clips_s,
        "infer_gflop_per_s": flops * infer_clips_s / 1e9,
        "timings_label": f"train {train.label()}, infer {inference.label()}",
    }


def _row(r: dict[str, Any]) -> dict[str, str]:
    return {
        "config": r["config"],
        "clip TxHxW": "x".join(str(s) for s in r["clip"]),
        "params (M)": common.fmt(r["params"] / 1e6),
        "disc params (M)": common.fmt(r["disc_params"] / 1e6),
        "GFLOPs/clip fwd": common.fmt(r["flops_fwd_per_clip"] / 1e9),
        "batch": str(r["batch"]),
        "precision": f"{r['precision']}, ZeRO {r['zero_stage']}",
        "train step (s)": common.fmt(r["train_step"]["median_s"]),
        "train clips/s": common.fmt(r["train_clips_per_s"]),
        "infer clips/s": common.fmt(r["infer_clips_per_s"]),
        "infer GFLOP/s": common.fmt(r["infer_gflop_per_s"]),
        "timings": r["timings_label"],
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the tokenizer benchmark, print a table and return the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser, "vqgan/vqvdm.yaml")
    parser.add_argument(
        "--batch", type=int, default=None, help="clips per step (default train.micro_batch_size)"
    )
    args = parser.parse_args(argv)
    common.set_threads(args.threads)
    if args.batch is not None and args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    # Load every config before spending minutes on the first (a typo fails at once).
    cfgs = {
        n: load_stage_config(VQGANRunConfig, n, [LPIPS_RANDOM, *args.overrides])
        for n in common.config_names(args.config)
    }

    info = common.machine_info()
    print("VQGAN tokenizer benchmark (stage 1)")
    print(common.machine_line(info))
    print(
        "train step = run_updates(generator_step, discriminator_step) on build_engine engines with the config's "
        "train section (GAN on); infer = encode_clips + decode_latents, fp32"
    )
    results: dict[str, Any] = {}
    for name, cfg in cfgs.items():
        r = bench_tokenizer(name, cfg, args.batch, args.repeats, args.budget_s, args.warmup)
        results[name] = r
        optim = cfg.train.disc_optim or cfg.train.optim
        print(
            f"[{name}] optimisers: autoencoder {r['optimizers']['autoencoder']} (lr {cfg.train.optim.lr:g}, betas "
            f"{tuple(cfg.train.optim.betas)}), discriminator {r['optimizers']['discriminator']} (lr {optim.lr:g}); "
            f"LPIPS weight {cfg.loss.perceptual_weight:g}, GAN weight {cfg.loss.gan_weight:g}, activation "
            f"checkpointing {'on' if cfg.model.checkpoint_activations else 'off'}"
        )
    print(common.format_table(COLUMNS, [_row(r) for r in results.values()]))
    print(
        f"median of the timed calls after {args.warmup} warm-up call(s); '*' = the warm-up call took > 30 s "
        "and is kept as the first sample (its one-time costs are < 1% of it)"
    )
    return {"machine": info, "results": results}


if __name__ == "__main__":
    main()
