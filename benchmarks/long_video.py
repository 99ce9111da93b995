"""Long videos three ways, on the quickstart's data: which extension keeps the seams and the class?

    python benchmarks/long_video.py --quickstart runs/quickstart [--work runs/long_video] [--steps 1000]

From a finished quickstart (its tokenizer and video shards) it
1. encodes the shards twice, with and without ``--context previous``, and reports the bytes and seconds of
   each (the cost of storing every window's predecessor, PVDM's training pairs);
2. trains three tiny LDMs on the pair cache for the same steps: ``none`` (no context input),
   ``random_mask`` (RaMViD-style known frames) and ``previous_clip`` (PVDM, lambda = 1 - context_drop_prob);
3. samples ``--clips`` clips per video for every class with each extension method at the same seeds:
   independent clips (the ``none`` model with no extension, the baseline), reconstruction guidance
   (``none`` model, overlap 1, weight ``--rg-weight``), frame overlap (``random_mask``, overlap 1) and
   previous clip (``previous_clip``, overlap 0);
4. prints, per method, the seam ratio (:mod:`vqvdm_scale.metrics.continuity`) in latent space at the
   sampler's clip boundaries and in pixels at the decoded pieces' boundaries, and the colour-test class
   accuracy of each clip decoded alone (:mod:`vqvdm_scale.metrics.synthetic_check`).

Re-running resumes: finished caches and trained runs are reused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import format_table, machine_line, set_threads  # noqa: E402
from vqvdm_scale.config import load_config  # noqa: E402
from vqvdm_scale.config.shipped import shipped_config  # noqa: E402
from vqvdm_scale.diffusion import make_clip_sampler, sample_long_video  # noqa: E402
from vqvdm_scale.engine.checkpoint import latest_checkpoint  # noqa: E402
from vqvdm_scale.formats.ldm_export import EMA_FILE, SamplingModel  # noqa: E402
from vqvdm_scale.metrics.continuity import seam_ratio  # noqa: E402
from vqvdm_scale.metrics.synthetic_check import class_accuracy  # noqa: E402
from vqvdm_scale.prep.encode_latents import EncodeConfig  # noqa: E402
from vqvdm_scale.prep.encode_latents import main as encode_main  # noqa: E402
from vqvdm_scale.sample.api import decode_latents  # noqa: E402
from vqvdm_scale.sample.main import load_model_and_tokenizer  # noqa: E402
from vqvdm_scale.train import ldm  # noqa: E402

MODES = {  # run name -> overrides of configs/ldm/tiny.yaml
    "none": ["diffusion.context_mode=none", "model.context_frames=false"],
    "random_mask": ["diffusion.context_mode=random_mask", "diffusion.context_drop_prob=0.5"],
    "previous_clip": ["diffusion.context_mode=previous_clip", "diffusion.context_drop_prob=0.7"],
}


def cache_bytes(path: Path) -> int:
    """Bytes of the shard files (tar + index json) of a latent cache."""
    return sum(p.stat().st_size for p in path.glob("latents-*"))


def encode(qs: Path, out: Path, context: str) -> float:
    """Encode the quickstart's shards into ``out`` (skipped when complete); seconds taken."""
    t0 = time.perf_counter()
    encode_main(
        EncodeConfig(
            tokenizer=str(qs / "vqgan" / "tokenizer.safetensors"),
            input=str(qs / "shards"),
            output=str(out),
            frames=16,
            resolution=32,
            windows="all",
            context=context,  # type: ignore[arg-type]
            batch_size=8,
            progress=False,
        )
    )
    return time.perf_counter() - t0


def train(mode: str, pairs: Path, tokenizer: Path, run: Path, steps: int) -> float:
    """Train (or resume) the tiny LDM of ``mode`` on the pair cache; seconds taken."""
    t0 = time.perf_counter()
    overrides = [
        f"data.train_latents={pairs}",
        f"tokenizer={tokenizer}",
        f"run.dir={run}",
        f"train.max_steps={steps}",
        f"run.ckpt_every={steps}",
        "run.media_every=0",
        "run.progress=false",
        *MODES[mode],
    ]
    ldm.main(load_config(ldm.LDMRunConfig, shipped_config("ldm/tiny.yaml"), overrides))
    return time.perf_counter() - t0


def long_latents(
    sm: SamplingModel, labels: torch.Tensor, method: str, args: argparse.Namespace
) -> tuple[torch.Tensor, int]:
    """(normalised latents of ``args.clips`` clips per label, overlap used) for one extension method."""
    spec = sm.spec
    g = torch.Generator().manual_seed(args.seed)
    fps = torch.full((labels.shape[0],), spec.fps)
    rg = args.rg_weight if method == "reconstruction guidance" else 0.0
    sampler = make_clip_sampler(
        sm.net,
        sm.diffusion,
        (labels.shape[0], *spec.shape),
        y=labels,
        fps=fps,
        guidance_scale=args.guidance,
        null_class=sm.net.config.num_classes,  # type: ignore[union-attr]
        steps=args.sample_steps,
        reconstruction_weight=rg,
        generator=g,
    )
    if method == "independent clips":

        def independent(c: Optional[torch.Tensor], m: Optional[torch.Tensor]) -> torch.Tensor:
            return sampler(None, None)  # every clip from the class alone: no extension

        return sample_long_video(independent, args.clips, overlap=0), 0
    overlap = 0 if method == "previous clip" else 1
    return sample_long_video(sampler, args.clips, overlap=overlap), overlap


def measure(
    sm: SamplingModel, tokenizer: Any, method: str, num_classes: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Seam ratios and per-clip class accuracy of one method's long videos."""
    labels = torch.arange(num_classes).repeat_interleave(args.per_class)
    t0 = time.perf_counter()
    with torch.no_grad():
        z, overlap = long_latents(sm, labels, method, args)
    seconds = time.perf_counter() - t0
    t = sm.spec.shape[1]
    step = t - overlap
    # clip k covers latent frames [k*step, k*step + t) of the output; its first new frame is k*step + overlap
    seams = [k * step + overlap for k in range(1, args.clips)]
    latent_seam = float(seam_ratio(z, seams).mean())
    with torch.no_grad():
        video = decode_latents(tokenizer, z, sm.spec)
        per_clip = [
            decode_latents(tokenizer, z[:, :, k * step : k * step + t], sm.spec) for k in range(args.clips)
        ]
    frames_per_piece = per_clip[0].shape[2]  # decode_latents decodes pieces of t latent frames
    pixel_seams = list(range(frames_per_piece, video.shape[2], frames_per_piece))
    pixel_seam = float(seam_ratio(video, pixel_seams).mean())
    acc = [class_accuracy(v, labels.tolist(), num_classes) for v in per_clip]
    return {
        "method": method,
        "latent_frames": int(z.shape[2]),
        "latent_seam_ratio": latent_seam,
        "pixel_seam_ratio": pixel_seam,
        "class_accuracy_per_clip": acc,
        "sample_s": seconds,
    }


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quickstart", required=True, help="output dir of a finished launchers/quickstart.py run")
    p.add_argument("--work", default="runs/long_video", help="where the caches and the three runs go")
    p.add_argument("--steps", type=int, default=1000, help="training steps of each LDM (quickstart: 1000)")
    p.add_argument("--clips", type=int, default=4, help="clips per long video")
    p.add_argument("--per-class", type=int, default=4, help="long videos per class")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance (quickstart: 2)")
    p.add_argument("--rg-weight", type=float, default=4.0, help="w_r of reconstruction guidance")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    set_threads(args.threads)
    qs, work = Path(args.quickstart), Path(args.work)
    tokenizer_path = qs / "vqgan" / "tokenizer.safetensors"
    if not tokenizer_path.is_file() or not (qs / "shards" / "manifest.json").is_file():
        print(f"long_video: {qs} is not a finished quickstart: run launchers/quickstart.py out={qs} first")
        raise SystemExit(2)
    print(machine_line(), flush=True)

    storage = {}
    for context in ("none", "previous"):
        out = work / f"latents_{context}"
        secs = encode(qs, out, context)
        storage[context] = {"bytes": cache_bytes(out), "encode_s": secs}
    print(
        f"latent cache: {storage['none']['bytes']:,} B without context, {storage['previous']['bytes']:,} B "
        f"with each window's predecessor ({storage['previous']['bytes'] / storage['none']['bytes']:.2f}x)"
    )

    train_s = {m: train(m, work / "latents_previous", tokenizer_path, work / m, args.steps) for m in MODES}
    num_classes = len(json.loads((qs / "shards" / "manifest.json").read_text())["classes"])
    rows = []
    for method, mode in (
        ("independent clips", "none"),
        ("reconstruction guidance", "none"),
        ("frame overlap", "random_mask"),
        ("previous clip", "previous_clip"),
    ):
        ckpt = latest_checkpoint(work / mode / "checkpoints")
        assert ckpt is not None, f"run {work / mode} has no checkpoint"
        sm, tokenizer = load_model_and_tokenizer(ckpt / EMA_FILE, str(tokenizer_path), torch.device("cpu"))
        rows.append({"mode": mode, **measure(sm, tokenizer, method, num_classes, args)})

    table = [
        {
            "method": r["method"],
            "model": r["mode"],
            "latent seam": f"{r['latent_seam_ratio']:.2f}",
            "pixel seam": f"{r['pixel_seam_ratio']:.2f}",
            "class acc. per clip": " / ".join(f"{a:.2f}" for a in r["class_accuracy_per_clip"]),
            "sample s": f"{r['sample_s']:.1f}",
        }
        for r in rows
    ]
    print(format_table(list(table[0]), table))
    result = {"storage": storage, "train_s": train_s, "methods": rows, "args": vars(args)}
    (work / "long_video.json").write_text(json.dumps(result, indent=2))
    print(f"long_video: wrote {work / 'long_video.json'}")
    return result


if __name__ == "__main__":
    main()
