"""The whole pipeline at tiny scale on CPU, on the built-in synthetic dataset, in one command.

    python launchers/quickstart.py [key=value ...]        # from a checkout
    python -m vqvdm_scale.quickstart [key=value ...]      # from an installed package

{defaults}

1. synthetic videos -> make_shards     2. train the VQGAN (+ export)     3. encode latents
4. train the latent U-Net              5. sample class-conditional and long videos
6. check the classes are recognisable in inputs, reconstructions and samples (colour test)

Every stage runs the same ``main`` its own command runs, with the tiny configs shipped in the package
(``configs/vqgan/tiny.yaml``, ``configs/ldm/tiny.yaml``; see :mod:`vqvdm_scale.config.shipped`).
Re-running the command resumes: finished shards, checkpoints and caches are kept.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vqvdm_scale.config import ConfigError, load_config
from vqvdm_scale.config.cli import run_cli
from vqvdm_scale.config.shipped import shipped_config
from vqvdm_scale.data import ClipLoaderConfig, build_clip_loader
from vqvdm_scale.data.synthetic import write_synthetic_dataset
from vqvdm_scale.engine.env import init_distributed, is_main, print0
from vqvdm_scale.formats.tokenizer_export import load_tokenizer
from vqvdm_scale.metrics.recon import psnr
from vqvdm_scale.metrics.synthetic_check import class_accuracy
from vqvdm_scale.prep.encode_latents import EncodeConfig
from vqvdm_scale.prep.encode_latents import main as encode_main
from vqvdm_scale.prep.make_shards import ShardsConfig
from vqvdm_scale.prep.make_shards import main as shards_main
from vqvdm_scale.sample.api import SampleConfig
from vqvdm_scale.sample.main import SampleRunConfig
from vqvdm_scale.sample.main import main as sample_main
from vqvdm_scale.train import ldm, vqgan


@dataclass
class QuickstartConfig:
    """Sizes of the tiny end-to-end run (defaults finish in about 10-15 minutes on 2 CPU cores)."""

    out: str = "runs/quickstart"
    classes: int = 4
    videos_per_class: int = 24
    frames: int = 32  # frames per synthetic video (clips are 16)
    size: int = 40  # synthetic frame size before make_shards resizes the short side to 32
    vqgan_steps: int = 300
    ldm_steps: int = 1000
    sample_steps: int = 50
    guidance: float = 2.0
    videos_per_class_sampled: int = 2
    long_clips: int = 3
    long_overlap: int = 1
    vqgan_config: str = str(shipped_config("vqgan/tiny.yaml"))
    ldm_config: str = str(shipped_config("ldm/tiny.yaml"))
    progress: bool = True
    # torch CPU threads (0 = torch's default). The figures are repeatable for one thread count and CPU:
    # oneDNN's convolutions sum in an order that depends on the thread count and the instruction set.
    threads: int = 0

    def __post_init__(self) -> None:
        if self.classes < 1 or self.classes > 8:
            raise ConfigError(
                "classes must be in 1..8 (the synthetic set has 8 distinct shape/motion/colour classes)"
            )


def _defaults_text() -> str:
    """QuickstartConfig's defaults as ``key=value`` words, so the docstring cannot drift from the dataclass."""
    words = []
    for f in dataclasses.fields(QuickstartConfig):
        if f.name.endswith("_config"):  # the shipped tiny configs, absolute paths of this install
            continue
        value = getattr(QuickstartConfig, f.name)
        words.append(f"{f.name}={str(value).lower() if isinstance(value, bool) else value}")
    return textwrap.fill("Defaults: " + " ".join(words), width=100, subsequent_indent="    ")


__doc__ = (__doc__ or "").replace("{defaults}", _defaults_text())


def _stage(name: str) -> float:
    print0(f"\n=== {name} ===")
    return time.perf_counter()


def _read_mp4s(paths: list[Path]) -> torch.Tensor:
    from vqvdm_scale.data.video_io import decode_video

    clips = [torch.from_numpy(decode_video(p).frames).permute(3, 0, 1, 2).float() / 127.5 - 1 for p in paths]
    return torch.stack(clips)


def main(cfg: QuickstartConfig) -> dict[str, Any]:
    """Run every stage; return (and write to ``<out>/summary.json``) what was measured."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    init_distributed()
    out = Path(cfg.out)
    timings: dict[str, float] = {}
    summary: dict[str, Any] = {
        "out": str(out),
        # what the figures depend on besides the code (see QuickstartConfig.threads)
        "machine": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
    }

    t0 = _stage("1/5 synthetic videos -> WebDataset shards")
    raw = out / "raw"
    if not (raw / ".complete").exists():
        write_synthetic_dataset(raw, cfg.classes, cfg.videos_per_class, cfg.frames, cfg.size, seed=0)
        (raw / ".complete").write_text("ok\n")
    shards = out / "shards"
    manifest = shards_main(
        ShardsConfig(
            input=str(raw),
            output=str(shards),
            layout="folder",
            resolution=32,
            shard_size=8,
            workers=1,
            progress=cfg.progress,
        )
    )
    timings["make_shards_s"] = time.perf_counter() - t0

    t0 = _stage("2/5 train the 3D VQGAN (and export the tokenizer)")
    vq_cfg = load_config(
        vqgan.VQGANRunConfig,
        cfg.vqgan_config,
        [
            f"data.train_shards={shards}",
            f"run.dir={out / 'vqgan'}",
            f"train.max_steps={cfg.vqgan_steps}",
            f"run.media_every={max(1, cfg.vqgan_steps // 3)}",
            f"run.progress={str(cfg.progress).lower()}",
            f"loss.disc_start_step={cfg.vqgan_steps * 2 // 3}",
        ],
    )
    tokenizer_path = vqgan.main(vq_cfg)
    timings["vqgan_s"] = time.perf_counter() - t0

    t0 = _stage("3/5 encode the video shards into a latent cache")
    latents = out / "latents"
    encode_main(
        EncodeConfig(
            tokenizer=str(tokenizer_path),
            input=str(shards),
            output=str(latents),
            frames=16,
            resolution=32,
            windows="all",
            batch_size=8,
            progress=cfg.progress,
        )
    )
    timings["encode_latents_s"] = time.perf_counter() - t0

    t0 = _stage("4/5 train the latent video U-Net")
    ldm_cfg = load_config(
        ldm.LDMRunConfig,
        cfg.ldm_config,
        [
            f"data.train_latents={latents}",
            f"tokenizer={tokenizer_path}",
            f"run.dir={out / 'ldm'}",
            f"train.max_steps={cfg.ldm_steps}",
            f"run.media_every={max(1, cfg.ldm_steps // 2)}",
            f"run.progress={str(cfg.progress).lower()}",
            f"sample.steps={min(cfg.sample_steps, 25)}",
            f"sample.guidance={cfg.guidance}",
        ],
    )
    ldm.main(ldm_cfg)
    timings["ldm_s"] = time.perf_counter() - t0

    t0 = _stage("5/5 sample class-conditional and long videos")
    n = cfg.classes * cfg.videos_per_class_sampled
    sample = SampleConfig(steps=cfg.sample_steps, guidance=cfg.guidance)
    cond_paths = sample_main(
        SampleRunConfig(
            run=str(out / "ldm"),
            tokenizer=str(tokenizer_path),
            all_classes=True,
            num_videos=n,
            batch_size=n,
            output=str(out / "samples" / "class_conditional"),
            progress=cfg.progress,
            sample=sample,
        )
    )
    long_paths = sample_main(
        SampleRunConfig(
            run=str(out / "ldm"),
            tokenizer=str(tokenizer_path),
            all_classes=True,
            num_videos=cfg.classes,
            batch_size=cfg.classes,
            output=str(out / "samples" / "long"),
            progress=cfg.progress,
            sample=dataclasses.replace(sample, num_clips=cfg.long_clips, overlap=cfg.long_overlap, seed=1),
        )
    )
    timings["sample_s"] = time.perf_counter() - t0

    if is_main():
        summary.update(
            _quality(cfg, shards, tokenizer_path, cond_paths, long_paths, len(manifest["classes"]))
        )
        summary["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
        summary["total_s"] = round(sum(timings.values()), 1)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        _report(out, summary)
    return summary


@torch.no_grad()
def _quality(
    cfg: QuickstartConfig,
    shards: Path,
    tokenizer_path: Path,
    cond: list[Path],
    long: list[Path],
    num_classes: int,
) -> dict[str, Any]:
    """Colour-test accuracy of inputs, reconstructions and samples, and reconstruction PSNR."""
    loader = build_clip_loader(
        ClipLoaderConfig(
            train_shards=str(shards),
            eval_shards=str(shards),
            frames=16,
            resolution=32,
            num_workers=0,
        ),
        batch_size=64,
        train=False,
    )
    batches = list(loader)  # one centred clip of every video, all classes
    x = torch.cat([b["video"] for b in batches])
    y = torch.cat([b["label"] for b in batches]).tolist()
    tokenizer, _, _ = load_tokenizer(tokenizer_path)
    rec = torch.cat([tokenizer(x[i : i + 32])[0] for i in range(0, len(x), 32)])
    cond_videos = _read_mp4s(cond)
    cond_labels = [int(p.name.split("_class")[1][:3]) for p in cond]
    long_videos = _read_mp4s(long)
    long_labels = [int(p.name.split("_class")[1][:3]) for p in long]
    return {
        "classes": num_classes,
        "input_class_accuracy": class_accuracy(x, y, num_classes),
        "reconstruction_class_accuracy": class_accuracy(rec, y, num_classes),
        "reconstruction_psnr_db": round(psnr(x, rec), 2),
        "sample_class_accuracy": class_accuracy(cond_videos, cond_labels, num_classes),
        "long_video_class_accuracy": class_accuracy(long_videos, long_labels, num_classes),
        "long_video_frames": int(long_videos.shape[2]),
        "sample_files": [str(p) for p in cond],
        "long_files": [str(p) for p in long],
    }


def _report(out: Path, s: dict[str, Any]) -> None:
    print0("\n=== quickstart summary ===")
    print0(
        f"classes recognised by colour: inputs {s['input_class_accuracy']:.0%}, reconstructions "
        f"{s['reconstruction_class_accuracy']:.0%} (PSNR {s['reconstruction_psnr_db']} dB), class-conditional "
        f"samples {s['sample_class_accuracy']:.0%}, long videos {s['long_video_class_accuracy']:.0%} "
        f"({s['long_video_frames']} frames)"
    )
    print0(
        "time per stage (s): "
        + ", ".join(f"{k[:-2]} {v}" for k, v in s["timings_s"].items())
        + f"; total {s['total_s']}"
    )
    m = s["machine"]
    print0(
        f"measured with torch {m['torch']}, {m['threads']} thread(s), CPU capability {m['cpu_capability']}"
    )
    print0(f"videos: {out / 'samples'} (mp4 per video, gif + png grid per batch)")
    print0(f"watch the runs: tensorboard --logdir {out}")


if __name__ == "__main__":
    run_cli(QuickstartConfig, main, description=__doc__)
