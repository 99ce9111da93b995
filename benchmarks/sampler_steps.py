"""Fewer steps at equal quality: at how many steps do DPM-Solver++(2M) samples match 100-step DDIM?

    python benchmarks/sampler_steps.py --quickstart runs/quickstart [--steps 5,10,15,20,25] [--per-class 16]
        [--bf16]

From a finished quickstart (its LDM run, tokenizer and video shards) it samples ``--per-class`` videos of
every class at guidance ``--guidance`` (the quickstart's 2) with
1. 100-step DDIM (``--reference-steps``) at ``--noise-sets`` seed sets: set 0 is the reference, the others
   measure the run-to-run noise (the same sampler, other seeds);
2. DPM-Solver++(2M) and DDIM at each of ``--steps``, at the reference's seeds (the same initial noise);
3. with ``--bf16``, the reference's sampler, steps and seeds again with ``sample.precision=bf16`` (U-Net
   and decoder under bf16 autocast), judged like the rest.

Every sample set is scored by the quickstart's quality check (colour-test class accuracy,
:mod:`vqvdm_scale.metrics.synthetic_check`) and by FVD with the random-weight I3D the tests use
(``evaluate.py --random-detectors``: it measures distances between sets, nothing about real-world quality)
against the reference samples and against real clips of the quickstart's shards; the latent RMS to the
reference says how close the solver comes to the reference's own trajectories.

A set *matches* the reference when each of its differences from the reference is within the noise: its
class accuracy and its FVD to real clips differ from the reference's by at most the largest difference
between DDIM-100 seed sets, and its FVD to the reference is at most the largest FVD between a DDIM-100
seed set and the reference. The smallest matching step count of each sampler is printed last.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import format_table, machine_info, machine_line, set_threads  # noqa: E402
from vqvdm_scale.engine.checkpoint import latest_checkpoint  # noqa: E402
from vqvdm_scale.evaluate.config import EvalConfig  # noqa: E402
from vqvdm_scale.evaluate.main import build_detector  # noqa: E402
from vqvdm_scale.formats.ldm_export import EMA_FILE  # noqa: E402
from vqvdm_scale.metrics.detectors import Detector  # noqa: E402
from vqvdm_scale.metrics.real_clips import open_real, real_clips  # noqa: E402
from vqvdm_scale.metrics.stats import frechet_distance, gaussian_stats  # noqa: E402
from vqvdm_scale.metrics.synthetic_check import class_accuracy  # noqa: E402
from vqvdm_scale.monitor.media import to_uint8  # noqa: E402
from vqvdm_scale.sample.api import SampleConfig, decode_latents, generate_latents  # noqa: E402
from vqvdm_scale.sample.main import load_model_and_tokenizer  # noqa: E402


def _fvd(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


def _steps_list(text: str) -> list[int]:
    try:
        steps = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        steps = []
    if not steps or steps[0] < 1:
        print(f"sampler_steps: --steps takes step counts >= 1 such as 5,10,20, got {text!r}")
        raise SystemExit(2)
    return steps


def sample_set(
    sm: Any, tokenizer: Any, detector: Detector, labels: torch.Tensor, cfg: SampleConfig, batch: int
) -> dict[str, Any]:
    """Latents, I3D features, class accuracy and seconds of one sampler on one seed set."""
    zs, feats, videos = [], [], []
    t0 = time.perf_counter()
    for k, start in enumerate(range(0, labels.shape[0], batch)):
        y = labels[start : start + batch]
        # every batch of a set has its own generator, so two samplers at one seed start from the same noise
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + k)
        with torch.no_grad():
            z = generate_latents(sm.net, sm.diffusion, sm.spec, y, cfg, generator=g)
            videos.append(decode_latents(tokenizer, z, sm.spec, cfg.quantize, cfg.precision))
        zs.append(z)
    sample_s = time.perf_counter() - t0
    video = torch.cat(videos)
    for start in range(0, video.shape[0], 8):
        u8 = torch.from_numpy(to_uint8(video[start : start + 8])).permute(0, 4, 1, 2, 3).contiguous()
        feats.append(detector(u8))
    num_classes = int(sm.net.config.num_classes)
    return {
        "z": torch.cat(zs),
        "features": np.concatenate(feats),
        "class_accuracy": class_accuracy(video, labels.tolist(), num_classes),
        "sample_s": sample_s,
    }


def noise_of(reference_rows: list[dict[str, Any]]) -> dict[str, float]:
    """The run-to-run noise: the largest difference of another reference seed set from the first one."""
    first, others = reference_rows[0], reference_rows[1:]
    return {
        "class_accuracy": max(abs(r["class_accuracy"] - first["class_accuracy"]) for r in others),
        "fvd_to_real": max(abs(r["fvd_to_real"] - first["fvd_to_real"]) for r in others),
        "fvd_to_reference": max(r["fvd_to_reference"] for r in others),
    }


def matches(r: dict[str, Any], reference: dict[str, Any], noise: dict[str, float]) -> bool:
    """Whether every difference of row ``r`` from the reference row is within ``noise``."""
    return (
        abs(r["class_accuracy"] - reference["class_accuracy"]) <= noise["class_accuracy"]
        and abs(r["fvd_to_real"] - reference["fvd_to_real"]) <= noise["fvd_to_real"]
        and r["fvd_to_reference"] <= noise["fvd_to_reference"]
    )


def smallest_match(rows: list[dict[str, Any]], sampler: str) -> Optional[int]:
    """The fewest steps of ``sampler`` whose row matches the reference (None when no count does)."""
    ok = [
        r["steps"]
        for r in rows
        if r["sampler"] == sampler and r.get("precision", "fp32") == "fp32" and r["matches"]
    ]
    return min(ok) if ok else None


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quickstart", required=True, help="output dir of a finished launchers/quickstart.py run")
    p.add_argument("--steps", default="5,10,15,20,25", help="step counts to try, comma-separated")
    p.add_argument("--reference-steps", type=int, default=100, help="DDIM steps of the reference")
    p.add_argument("--noise-sets", type=int, default=3, help="DDIM reference seed sets (>= 2)")
    p.add_argument("--per-class", type=int, default=16, help="videos per class in each set")
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance (quickstart: 2)")
    p.add_argument("--batch", type=int, default=32, help="videos per sampler call")
    p.add_argument("--bf16", action="store_true", help="also the reference in sample.precision=bf16")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="runs/sampler_steps.json", help="where the results JSON goes")
    args = p.parse_args(argv)
    steps = _steps_list(args.steps)
    if args.noise_sets < 2 or args.per_class < 1 or args.batch < 1 or args.reference_steps < 1:
        print("sampler_steps: --noise-sets must be >= 2 and --per-class, --batch, --reference-steps >= 1")
        raise SystemExit(2)
    set_threads(args.threads)
    qs = Path(args.quickstart)
    tokenizer_path = qs / "vqgan" / "tokenizer.safetensors"
    ckpt = latest_checkpoint(qs / "ldm" / "checkpoints") if (qs / "ldm" / "checkpoints").is_dir() else None
    if not tokenizer_path.is_file() or ckpt is None or not (qs / "shards" / "manifest.json").is_file():
        print(f"sampler_steps: {qs} is not a finished quickstart: run launchers/quickstart.py out={qs} first")
        raise SystemExit(2)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    info_start = machine_info()
    print(f"date: {started}", flush=True)
    print(machine_line(info_start), flush=True)
    device = torch.device("cpu")
    sm, tokenizer = load_model_and_tokenizer(ckpt / EMA_FILE, str(tokenizer_path), device)
    detector = build_detector(
        EvalConfig(real=str(qs / "shards"), fake=str(qs), metrics=["fvd"], random_detectors=True),
        "i3d",
        device,
    )
    assert detector is not None
    num_classes = int(sm.net.config.num_classes)
    labels = torch.arange(num_classes).repeat(args.per_class)
    t = sm.spec.shape[1] * int(tokenizer.cfg.downsample[0])
    size = sm.spec.shape[2] * int(tokenizer.cfg.downsample[1])
    real = [
        c.clip
        for c in real_clips(
            open_real(str(qs / "shards")).urls,
            num_videos=10**6,
            frames=t,
            stride=1,
            resolution=size,
            seed=0,
        )
    ]
    real_feats = np.concatenate([detector(torch.stack(real[i : i + 8])) for i in range(0, len(real), 8)])
    print(f"real: {len(real)} clips of {t}x{size}x{size} from {qs / 'shards'}", flush=True)

    def run(sampler: str, n: int, seed: int, precision: str = "fp32") -> dict[str, Any]:
        cfg = SampleConfig(sampler=sampler, steps=n, guidance=args.guidance, seed=seed, precision=precision)  # type: ignore[arg-type]
        out = sample_set(sm, tokenizer, detector, labels, cfg, args.batch)
        print(
            f"  {sampler} {n} steps {precision}, seed set {seed}: {out['sample_s']:.1f} s sampling",
            flush=True,
        )
        return {**out, "precision": precision}

    refs = [run("ddim", args.reference_steps, s) for s in range(args.noise_sets)]
    ref = refs[0]

    def row(sampler: str, n: int, seed: int, s: dict[str, Any]) -> dict[str, Any]:
        return {
            "sampler": sampler,
            "steps": n,
            "seed_set": seed,
            "precision": s.get("precision", "fp32"),
            "class_accuracy": s["class_accuracy"],
            "fvd_to_reference": max(0.0, _fvd(s["features"], ref["features"])),
            "fvd_to_real": _fvd(s["features"], real_feats),
            "latent_rms_to_reference": float(((s["z"] - ref["z"]) ** 2).mean().sqrt()),
            "sample_s": s["sample_s"],
        }

    rows = [row("ddim", args.reference_steps, k, s) for k, s in enumerate(refs)]
    noise = noise_of(rows)
    for sampler in ("dpmpp2m", "ddim"):
        for n in steps:
            rows.append(row(sampler, n, 0, run(sampler, n, 0)))
    if args.bf16:
        rows.append(row("ddim", args.reference_steps, 0, run("ddim", args.reference_steps, 0, "bf16")))
    for r in rows:
        r["matches"] = matches(r, rows[0], noise)
    table = [
        {
            "sampler": r["sampler"],
            "steps": str(r["steps"]),
            "seeds": str(r["seed_set"]),
            "precision": r["precision"],
            "class acc.": f"{r['class_accuracy']:.3f}",
            "FVD to DDIM-100": f"{r['fvd_to_reference']:.3f}",
            "FVD to real": f"{r['fvd_to_real']:.2f}",
            "latent RMS to DDIM-100": f"{r['latent_rms_to_reference']:.3f}",
            "sample s": f"{r['sample_s']:.1f}",
            "matches": "ref" if r is rows[0] else ("yes" if r["matches"] else "no"),
        }
        for r in rows
    ]
    print(format_table(list(table[0]), table))
    print(
        f"noise (DDIM-{args.reference_steps}, {args.noise_sets} seed sets of {labels.shape[0]} videos): class "
        f"accuracy +-{noise['class_accuracy']:.3f}, FVD to real +-{noise['fvd_to_real']:.2f}, FVD between "
        f"seed sets up to {noise['fvd_to_reference']:.3f}"
    )
    best = {s: smallest_match(rows, s) for s in ("dpmpp2m", "ddim")}
    print(
        "smallest step count matching DDIM-"
        + f"{args.reference_steps}: "
        + ", ".join(f"{s} {best[s] if best[s] else f'none of {steps}'}" for s in best)
    )
    info_end = machine_info()
    print(f"load avg at the end {info_end['load_avg_1min']:.1f} (1 min)")
    result = {
        "date": started,
        "machine": info_start,
        "load_avg_end": info_end["load_avg_1min"],
        "args": vars(args),
        "noise": noise,
        "smallest_matching_steps": best,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"sampler_steps: wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
