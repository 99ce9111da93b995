"""Against the public peers: sampling, the tokenizer and the stage-2 training step, timed in one run.

``python -m benchmarks.peers --vdm PATH/video-diffusion-pytorch --tats PATH/TATS [--only sampling,tokenizer,train]
[--steps 100] [--threads N] [--repeats N] [--tiny]``

The peers' code comes from the checkouts given (never vendored, never a dependency); install what they
import first: ``pip install einops-exts rotary-embedding-torch pytorch-lightning scikit-video imageio``.

- **VDM**: lucidrains/video-diffusion-pytorch's ``Unet3D(dim=64, dim_mults=(1, 2, 4, 8))`` (36M parameters),
  the public pixel-space Video Diffusion Models U-Net, on 3x16x64x64 clips (VDM's resolution).
- **TATS**: SongweiGe/TATS's 3D VQGAN (``n_hiddens=240, downsample=(4, 4, 4)``, ``embedding_dim=256``,
  ``n_codes=16384``), built from its ``Encoder``, ``pre_vq_conv``, ``Codebook``, ``post_vq_conv`` and
  ``Decoder`` (its ``VQGAN`` class also builds LPIPS, which downloads VGG weights, and two discriminators,
  none of which encoding or decoding runs).
- **Ours**: ``ldm/B.yaml``'s U-Net (139M) on the ``vqgan/vqvdm.yaml`` tokenizer's latents of 16x128x128 clips.

The three pairs, each side in its own fresh process on the same threads (so the peak resident memory,
above the process's baseline after imports, is each one's own):

- **sampling**, seconds per video of ``--steps`` steps: ours is ``generate_latents`` (DDIM, classifier-free
  guidance w = B.yaml's 4 as one batch-of-2 forward) plus ``decode_latents`` (16x128x128); the peer's step
  is one forward of a batch of 1 at 16x64x64, unguided (its guidance would be a second forward, so this
  favours the peer). Steps are timed for ``--step-budget-s`` and scaled linearly to ``--steps``.
- **tokenizer**: encode + quantise + decode of one 1x3x16x128x128 clip.
- **train**: one optimiser step (forward + backward + AdamW) at an equal number of output pixels: ours is
  the trainer's step (``benchmarks.steps.ldm_train_step``: DeepSpeed engine, B.yaml's train section with
  ``--ours`` overrides, default fp32, no compile and ZeRO 0, like the peer's one process: on one rank
  ZeRO 2/3 only add partitioning work) on the latent of one 16x128x128 clip;
  the peer's is eps-prediction MSE + torch AdamW on 4 clips of 16x64x64.

``--tiny`` shrinks every network (ours: ldm/tiny.yaml and vqgan/tiny.yaml; the peers: ``dim=8``,
``n_hiddens=32``) and the clips, to check the plumbing in seconds; its ratios mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from benchmarks import common

__all__ = ["PAIRS", "main"]

PAIRS = ("sampling", "tokenizer", "train")
PEER_DEPS = "pip install einops-exts rotary-embedding-torch pytorch-lightning scikit-video imageio"
OURS_DEFAULT = ("train.precision=fp32", "train.compile=false", "train.zero_stage=0")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The networks and clips of a run: the papers' (default) or ``--tiny``'s."""

    ldm: str = "ldm/B.yaml"
    vqgan: str = "vqgan/vqvdm.yaml"
    vdm_dim: int = 64
    vdm_mults: tuple[int, ...] = (1, 2, 4, 8)
    tats_hiddens: int = 240
    tats_codes: int = 16384
    frames: int = 16
    side: int = 128  # ours; the VDM peer samples and trains at side // 2


TINY = Sizes("ldm/tiny.yaml", "vqgan/tiny.yaml", 8, (1, 2), 32, 64, 16, 32)


def _fail(message: str) -> NoReturn:
    """One line on stderr and exit code 2, like every entry point."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def _import_peer(checkout: str, package: str) -> types.ModuleType:
    """``package`` from the checkout, without running its ``__init__`` (TATS' imports its data and downloads)."""
    folder = Path(checkout).expanduser() / package
    if not folder.is_dir():
        _fail(f"{folder} does not exist: give the peer's checkout (the folder holding {package}/)")
    if package not in sys.modules:  # once: its submodules stay bound to the first package object
        mod = types.ModuleType(package)
        mod.__path__ = [str(folder)]
        sys.modules[package] = mod
    return sys.modules[package]


def _module(checkout: str, package: str, name: str) -> Any:
    _import_peer(checkout, package)
    try:
        return importlib.import_module(f"{package}.{name}")
    except ImportError as e:
        _fail(f"the peer {package} cannot import {e.name or e}: {PEER_DEPS}")


def _vdm_unet(spec: dict[str, Any], sizes: Sizes) -> torch.nn.Module:
    vdm = _module(spec["vdm"], "video_diffusion_pytorch", "video_diffusion_pytorch")
    return vdm.Unet3D(dim=sizes.vdm_dim, dim_mults=sizes.vdm_mults)  # type: ignore[no-any-return]


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _ours_sampling(spec: dict[str, Any], sizes: Sizes) -> dict[str, Any]:
    from benchmarks.ldm import network
    from benchmarks.sampling import bench_sampler

    net_spec = {
        "config": sizes.ldm,
        "overrides": list(spec["ours"]),
        "vqgan_config": sizes.vqgan,
        "kind": "latent",
    }
    cfg, _, _ = network(net_spec)
    sample = dataclasses.replace(cfg.sample, num_clips=1, steps=spec["steps"], sampler="ddim")
    r = bench_sampler(
        net_spec, sample, spec["repeats"], spec["timed_steps"], spec["step_budget_s"], spec["budget_s"]
    )
    return {
        "what": f"{sizes.ldm} U-Net, DDIM w={sample.guidance} (batch 2) + decode, {sample.precision}"
        + (", compiled" if sample.compile else ""),
        "video": r["video"],
        "params": sum(p.numel() for p in _ours_unet(cfg).parameters()),
        "s_per_step": r["s_per_step"],
        "decode_s": r["decode_s"],
        "seconds": r["s_per_video"],
        "timed_steps": r["timed_steps"],
    }


def _ours_unet(cfg: Any) -> torch.nn.Module:
    from vqvdm_scale.models.unet.model import UNet3D

    with torch.device("meta"):
        return UNet3D(cfg.model)


def _peer_sampling(spec: dict[str, Any], sizes: Sizes) -> dict[str, Any]:
    torch.manual_seed(0)
    net = _vdm_unet(spec, sizes).eval()
    x = torch.randn(1, 3, sizes.frames, sizes.side // 2, sizes.side // 2)
    t = torch.randint(0, 1000, (1,))

    def one() -> None:
        with torch.no_grad():
            net(x, t)

    from benchmarks.sampling import choose_timed_steps

    warm = common.time_call(one, 1, warmup=0).median  # the warm-up call sets how many steps fit the budget
    k = choose_timed_steps(spec["steps"], warm, spec["timed_steps"], spec["step_budget_s"])
    timing = common.time_call(
        lambda: [one() for _ in range(k)], spec["repeats"], warmup=0, budget_s=spec["budget_s"]
    )
    per_step = timing.median / k
    return {
        "what": f"VDM Unet3D(dim={sizes.vdm_dim}), one unguided forward per step",
        "video": [sizes.frames, sizes.side // 2, sizes.side // 2],
        "params": _params(net),
        "s_per_step": per_step,
        "decode_s": 0.0,
        "seconds": spec["steps"] * per_step,
        "timed_steps": k,
    }


def _ours_tokenizer(spec: dict[str, Any], sizes: Sizes) -> dict[str, Any]:
    from benchmarks.steps import load_stage_config
    from vqvdm_scale.formats.latent_shards import LatentStats
    from vqvdm_scale.formats.ldm_export import LatentSpec
    from vqvdm_scale.models.tokenizer import VQTokenizer
    from vqvdm_scale.prep.latent_writer import encode_clips
    from vqvdm_scale.sample.api import decode_latents
    from vqvdm_scale.train.vqgan import VQGANRunConfig

    cfg = load_stage_config(VQGANRunConfig, sizes.vqgan)
    torch.manual_seed(0)
    tok = VQTokenizer(cfg.model).eval()
    clip = torch.rand(1, 3, sizes.frames, sizes.side, sizes.side) * 2 - 1
    latent = tuple(cfg.model.latent_shape(sizes.frames, sizes.side, sizes.side))
    lspec = LatentSpec(latent, LatentStats(torch.zeros(latent[0]), torch.ones(latent[0])), fps=8.0)  # type: ignore[arg-type]

    def run() -> None:
        with torch.no_grad():
            _, z = encode_clips(tok, clip)
            decode_latents(tok, z, lspec, quantize=True)

    timing = common.time_call(run, spec["repeats"], budget_s=spec["budget_s"])
    return {
        "what": f"{sizes.vqgan} tokenizer",
        "params": _params(tok),
        "seconds": timing.median,
        "n": timing.label(),
    }


def _peer_tokenizer(spec: dict[str, Any], sizes: Sizes) -> dict[str, Any]:
    tv = _module(spec["tats"], "tats", "tats_vqgan")
    cb = _module(spec["tats"], "tats", "modules.codebook")
    torch.manual_seed(0)
    down, emb = (4, 4, 4), 256
    enc = tv.Encoder(sizes.tats_hiddens, down, 3, "group", "replicate")
    dec = tv.Decoder(sizes.tats_hiddens, down, 3, "group")
    pre = tv.SamePadConv3d(enc.out_channels, emb, 1, padding_type="replicate")
    post = tv.SamePadConv3d(emb, enc.out_channels, 1)
    book = cb.Codebook(sizes.tats_codes, emb, no_random_restart=True)
    parts = torch.nn.ModuleList([enc, pre, book, post, dec]).eval()
    clip = torch.rand(1, 3, sizes.frames, sizes.side, sizes.side) - 0.5  # TATS' range

    def run() -> None:  # TATS' VQGAN.forward up to the reconstruction
        with torch.no_grad():
            vq = book(pre(enc(clip)))
            dec(post(vq["embeddings"]))

    timing = common.time_call(run, spec["repeats"], budget_s=spec["budget_s"])
    what = f"TATS VQGAN(n_hiddens={sizes.tats_hiddens}, downsample 4,4,4)"
    return {"what": what, "params": _params(parts), "seconds": timing.median, "n": timing.label()}


def _ours_train(spec: dict[str, Any], sizes: Sizes) -> dict[str, Any]:
    from benchmarks.ldm import network
    from benchmarks.steps import ldm_train_step
    from vqvdm_scale.engine.env import init_distributed

    init_distributed("gloo")
    cfg, shape, _ = network(
        {"config": sizes.ldm, "overrides": list(spec["ours"]), "vqgan_config": sizes.vqgan, "kind": "latent"}
    )
    torch.manual_seed(0)
    step = ldm_train_step(cfg, shape, 1)
    timing = common.time_call(step, spec["repeats"], budget_s=spec["budget_s"])
    what = f"{sizes.ldm} U-Net, trainer step ({cfg.train.precision}, ZeRO {cfg.train.zero_stage}), 1 clip"
    return {"what": what, "params": _params(_ours_unet(cfg)), "seconds": timing.median, "n": timing.label()}


def _peer_train(spec: dict[str, Any], sizes: Sizes) -> dict[str, Any]:
    torch.manual_seed(0)
    net = _vdm_unet(spec, sizes).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    b = (sizes.side // (sizes.side // 2)) ** 2  # 4 clips at half the side: the same output pixels as ours
    x = torch.randn(b, 3, sizes.frames, sizes.side // 2, sizes.side // 2)
    noise, t = torch.randn_like(x), torch.randint(0, 1000, (b,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(net(x, t), noise).backward()
        opt.step()

    timing = common.time_call(step, spec["repeats"], budget_s=spec["budget_s"])
    what = f"VDM Unet3D(dim={sizes.vdm_dim}), eps MSE + AdamW, {b} clips of {sizes.side // 2}px"
    return {"what": what, "params": _params(net), "seconds": timing.median, "n": timing.label()}


MEASURE: dict[tuple[str, str], Callable[[dict[str, Any], Sizes], dict[str, Any]]] = {
    ("sampling", "ours"): _ours_sampling,
    ("sampling", "peer"): _peer_sampling,
    ("tokenizer", "ours"): _ours_tokenizer,
    ("tokenizer", "peer"): _peer_tokenizer,
    ("train", "ours"): _ours_train,
    ("train", "peer"): _peer_train,
}


def _worker(spec: dict[str, Any]) -> None:
    import deepspeed  # noqa: F401 - in the baseline of every worker alike

    common.set_threads(spec["threads"])
    baseline = common.rss_gib()
    sizes = TINY if spec["tiny"] else Sizes()
    result = MEASURE[(spec["pair"], spec["side"])](spec, sizes)
    result["peak_rss_gib"] = max(common.peak_rss_gib() - baseline, 0.0)
    common.worker_result(result)


COLUMNS = ["pair", "side", "what", "params (M)", "seconds", "peak RSS (GiB)", "ours faster"]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the chosen pairs, print a table and the ratios, and return the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--vdm", default=None, help="checkout of lucidrains/video-diffusion-pytorch")
    parser.add_argument("--tats", default=None, help="checkout of SongweiGe/TATS")
    parser.add_argument("--only", default=",".join(PAIRS), help=f"comma list of {', '.join(PAIRS)}")
    parser.add_argument("--steps", type=int, default=100, help="sampling steps per video")
    parser.add_argument("--timed-steps", type=int, default=None, help="sampling steps timed (default: fit)")
    parser.add_argument("--step-budget-s", type=float, default=30.0, help="seconds of sampling steps to time")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per measurement (median)")
    parser.add_argument("--budget-s", type=float, default=240.0, help="stop repeating past this many seconds")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--tiny", action="store_true", help="tiny networks: checks the plumbing only")
    parser.add_argument(
        "--ours", nargs="*", default=list(OURS_DEFAULT), help="a.b=c overrides of our LDM config"
    )
    args = parser.parse_args(argv)
    if args.worker is not None:
        _worker(json.loads(args.worker))
        return {}
    pairs = [p.strip() for p in args.only.split(",") if p.strip()]
    if bad := [p for p in pairs if p not in PAIRS]:
        _fail(f"--only takes {', '.join(PAIRS)}, got {', '.join(bad)}")
    need = {"vdm": {"sampling", "train"}, "tats": {"tokenizer"}}
    for peer, uses in need.items():
        if uses & set(pairs) and not getattr(args, peer):
            _fail(f"--{peer} CHECKOUT is needed for {', '.join(sorted(uses & set(pairs)))}")
    if args.vdm and {"sampling", "train"} & set(pairs):  # a wrong checkout or a missing import: said here
        _module(args.vdm, "video_diffusion_pytorch", "video_diffusion_pytorch")
    if args.tats and "tokenizer" in pairs:
        _module(args.tats, "tats", "tats_vqgan")
    info = common.machine_info()
    info["threads"] = common.set_threads(args.threads)
    print(common.machine_line(info), flush=True)
    spec = {k: v for k, v in vars(args).items() if k not in ("worker", "only")}
    results: dict[str, dict[str, Any]] = {}
    rows = []
    for pair in pairs:
        got = {
            side: common.run_worker("benchmarks.peers", {**spec, "pair": pair, "side": side})
            for side in ("ours", "peer")
        }
        got["ratio"] = {"x": got["peer"]["seconds"] / got["ours"]["seconds"]}
        results[pair] = got
        for side in ("ours", "peer"):
            r = got[side]
            rows.append({
                "pair": pair, "side": side, "what": r["what"], "params (M)": common.fmt(r["params"] / 1e6),
                "seconds": common.fmt(r["seconds"]), "peak RSS (GiB)": common.fmt(r["peak_rss_gib"]),
                "ours faster": f"{got['ratio']['x']:.1f}x" if side == "peer" else "",
            })  # fmt: skip
        detail = {
            s: {k: v for k, v in got[s].items() if k not in ("what", "params")} for s in ("ours", "peer")
        }
        print(f"{pair}: {json.dumps(detail)}", flush=True)  # the timing behind each figure
    end = common.machine_info()["load_avg_1min"]
    print(common.format_table(COLUMNS, rows))
    print(
        f"load avg at the end {end:.1f}; sampling is seconds per video of {args.steps} steps, scaled from the timed ones"
    )
    return {"machine": info, "load_end": end, "results": results}


if __name__ == "__main__":
    main()
