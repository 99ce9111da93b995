"""``launchers/sample.py``: class-conditional and long videos from a trained run, as mp4 + gif + png files.

Under torchrun/deepspeed each rank makes the videos whose index ``i % world_size == rank`` and names
files by the global index, so ranks never collide. Video ``i`` is made in a batch seeded from
``(seed, first index of the batch)``: the same command gives the same videos.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from vqvdm_scale.config import ConfigError, UserError, to_dict
from vqvdm_scale.engine.checkpoint import complete_checkpoints, latest_checkpoint
from vqvdm_scale.engine.env import (
    barrier,
    describe_rank,
    get_rank,
    get_world_size,
    init_distributed,
    pick_device,
    print0,
)
from vqvdm_scale.formats.frames import FRAME_FORMATS
from vqvdm_scale.formats.ldm_export import EMA_FILE, SamplingModel, load_ema
from vqvdm_scale.formats.object_store import ObjectStoreConfig, apply_object_store
from vqvdm_scale.formats.remote_files import is_url
from vqvdm_scale.formats.tokenizer_export import load_tokenizer
from vqvdm_scale.models.tokenizer import VQTokenizer
from vqvdm_scale.monitor.progress import JobProgress, duration, is_terminal
from vqvdm_scale.sample.api import (
    SampleConfig,
    compile_for_sampling,
    decode_latents,
    generate_latents,
    write_videos,
)
from vqvdm_scale.sample.condition import (
    conditioned_latents,
    encode_condition,
    known_latent_frames,
    load_condition_clip,
)


@dataclass
class SampleRunConfig:
    """What to sample and where to write it.

    Args:
        run: a training run dir (its latest checkpoint's EMA is used), or
        checkpoint: a checkpoint dir (``.../checkpoints/step_XXXXXXXX``) or an ``ema.safetensors`` file.
        tokenizer: the stage-1 export; its fingerprint must match the one the model was trained with.
        class_id: the class to sample (or all_classes: cycle through every class).
        batch_size: videos per sampler call on a rank (CFG doubles it inside).
        condition: a real video file, or ``SHARDS#KEY`` (a sample of video shards), whose first clip the
            samples are conditioned on (prediction / infilling, :mod:`vqvdm_scale.sample.condition`);
        known: its pixel frame ranges held fixed (``0-3``; several allowed); whole latent frames only.
        formats: files per video: ``mp4`` (with a GIF and PNG grid per batch), and the lossless ``npy``
            (uint8 ``[T, H, W, 3]``) or ``png`` (a folder of frames) that metrics read.
        object_store: options of the s3:// / gs:// store that a ``--checkpoint`` or ``--tokenizer`` URL is on.
    """

    run: Optional[str] = None
    checkpoint: Optional[str] = None
    tokenizer: str = ""
    class_id: Optional[int] = None
    all_classes: bool = False
    num_videos: int = 4
    batch_size: int = 4
    output: str = "samples"
    formats: list[str] = field(default_factory=lambda: ["mp4"])
    condition: Optional[str] = None
    known: list[str] = field(default_factory=list)
    fps: Optional[float] = None
    device: str = "auto"
    progress: bool = True
    sample: SampleConfig = field(default_factory=SampleConfig)
    object_store: ObjectStoreConfig = field(default_factory=ObjectStoreConfig)

    def __post_init__(self) -> None:
        if (self.run is None) == (self.checkpoint is None):
            raise ConfigError("give exactly one of --run DIR or --checkpoint PATH")
        if not self.tokenizer:
            raise ConfigError("--tokenizer is required: the stage-1 export the model's latents came from")
        if self.num_videos < 1 or self.batch_size < 1:
            raise ConfigError("--num-videos and --batch-size must be >= 1")
        if self.all_classes and self.class_id is not None:
            raise ConfigError("give --class-id N or --all-classes, not both")
        if self.class_id is not None and self.class_id < 0:
            raise ConfigError(f"--class-id must be >= 0, got {self.class_id}")
        if bool(self.condition) != bool(self.known):
            raise ConfigError(
                "--condition VIDEO and --known FIRST-LAST go together (the real frames to keep)"
            )
        bad = [f for f in self.formats if f not in FRAME_FORMATS]
        if bad or not self.formats:
            raise ConfigError(f"--format takes a list of {', '.join(FRAME_FORMATS)}, got {self.formats}")
        if self.fps is not None and self.fps <= 0:
            raise ConfigError(f"--fps must be > 0 (or null for the training clips' fps), got {self.fps}")

    def ema_path(self) -> str | Path:
        """The ema.safetensors file to load; a missing run, checkpoint or EMA file is a UserError.

        ``--checkpoint`` may be the URL of an export file (``s3://bucket/ldm.safetensors``, see the LDM's
        ``export`` setting); it is fetched when loaded.
        """
        if self.checkpoint and is_url(self.checkpoint):
            return self.checkpoint
        if self.checkpoint:
            p = Path(self.checkpoint)
            if not p.exists():
                raise UserError(f"--checkpoint {self.checkpoint!r} does not exist")
            if p.is_file():
                return p
            return _checkpoint_ema(p)
        run = Path(str(self.run))
        if not run.is_dir():
            what = "is a file, not a directory" if run.exists() else "does not exist"
            raise UserError(f"--run {self.run!r} {what}: give the run.dir of a launchers/train_ldm.py run")
        ckpt = latest_checkpoint(run / "checkpoints")
        if ckpt is None:
            raise UserError(
                f"run dir {self.run!r} has no complete checkpoint yet: train it further or pass --checkpoint"
            )
        return _checkpoint_ema(ckpt)


def _checkpoint_ema(ckpt: Path) -> Path:
    """``ckpt/ema.safetensors``; if it is missing, a UserError that says how to repair it or what else to use."""
    ema = ckpt / EMA_FILE
    if ema.is_file():
        return ema
    if not ckpt.name.startswith("step_"):
        raise UserError(f"--checkpoint {str(ckpt)!r} has no {EMA_FILE}: give an LDM checkpoint dir")
    # a job killed between the checkpoint and its export; the trainer writes a missing export on rerun
    older = [d for d in complete_checkpoints(ckpt.parent) if d.name < ckpt.name and (d / EMA_FILE).is_file()]
    alternative = f"--checkpoint {older[-1]}" if older else "--checkpoint of an older step"
    raise UserError(
        f"checkpoint {ckpt} has no {EMA_FILE} (the job stopped before exporting it): re-run the training "
        f"command to repair the export, or pass {alternative}"
    )


def load_model_and_tokenizer(
    ema_path: str | Path, tokenizer_path: str, device: torch.device
) -> tuple[SamplingModel, VQTokenizer]:
    """The EMA sampling model and the tokenizer its latents came from; UserError if they do not belong together."""
    sm = load_ema(ema_path, device)
    try:
        tokenizer, _, fingerprint = load_tokenizer(tokenizer_path, device)
    except (FileNotFoundError, ValueError) as e:  # a wrong --tokenizer file, said by load_tokenizer
        raise UserError(f"--tokenizer: {e}") from e
    if fingerprint != sm.tokenizer_fingerprint:
        raise UserError(
            f"tokenizer {tokenizer_path} has fingerprint {fingerprint[:16]}..., but the model was trained on latents "
            f"of {sm.tokenizer_fingerprint[:16]}...: pass the tokenizer the latent cache was encoded with"
        )
    return sm, tokenizer


def main(cfg: SampleRunConfig) -> list[Path]:
    """Sample this rank's share of videos; return the mp4 paths it wrote."""
    apply_object_store(cfg.object_store)
    ema_path = cfg.ema_path()  # a wrong --run / --checkpoint is said before any process group starts
    t0 = time.perf_counter()
    init_distributed()
    rank, world = get_rank(), get_world_size()
    device = pick_device(cfg.device)
    if get_world_size() > 1:
        print(describe_rank(device), flush=True)
    sm, tokenizer = load_model_and_tokenizer(ema_path, cfg.tokenizer, device)
    num_classes = sm.net.config.num_classes
    if cfg.sample.compile:
        sm.net = compile_for_sampling(sm.net, tokenizer)  # type: ignore[assignment]
    if cfg.class_id is not None and not 0 <= cfg.class_id < max(num_classes, 1):
        raise UserError(
            f"--class-id {cfg.class_id} is outside the model's {num_classes} classes {sm.classes}"
        )
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    mine = [i for i in range(cfg.num_videos) if i % world == rank]
    fps = cfg.fps or sm.spec.fps
    paths: list[Path] = []
    bar = JobProgress(len(mine), f"sample rank {rank}", cfg.progress, position=rank)
    steps_bar = cfg.progress and is_terminal()  # the sampler's per-step bar: on a terminal only
    cond = _condition(cfg, sm, tokenizer) if cfg.condition else None
    for start in range(0, len(mine), cfg.batch_size):
        idx = mine[start : start + cfg.batch_size]
        if cfg.all_classes or cfg.class_id is None:
            labels = [i % max(num_classes, 1) for i in idx]
        else:
            labels = [cfg.class_id] * len(idx)
        g = torch.Generator(device=device).manual_seed(cfg.sample.seed * 1_000_003 + idx[0])
        y = torch.tensor(labels, device=device)
        if cond is None:
            fps_in = torch.full(
                (len(idx),), float(fps), device=device
            )  # the fps input: the clips' frame rate
            z = generate_latents(
                sm.net, sm.diffusion, sm.spec, y, cfg.sample, fps=fps_in, generator=g, progress=steps_bar
            )
            video = decode_latents(tokenizer, z, sm.spec, cfg.sample.quantize, cfg.sample.precision)
        else:
            real, known_z, known = cond
            z = conditioned_latents(
                sm.net, sm.diffusion, sm.spec, known_z, known, y, cfg.sample, generator=g, cfg_fps=fps
            )
            video = side_by_side(
                real, decode_latents(tokenizer, z, sm.spec, cfg.sample.quantize, cfg.sample.precision)
            )
        names = [
            f"video_{i:05d}_class{c:03d}_{_slug(sm.classes, c)}" for i, c in zip(idx, labels, strict=True)
        ]
        paths += write_videos(video.cpu(), out, names, fps, cfg.formats)
        bar.update(len(idx))
    bar.close()
    if rank == 0:
        (out / "sampling.json").write_text(
            json.dumps(
                {
                    "ema": str(cfg.ema_path()),
                    "step": sm.step,
                    "tokenizer": cfg.tokenizer,
                    "classes": sm.classes,
                    "world_size": world,
                    "config": to_dict(cfg),
                },
                indent=2,
            )
        )
    barrier()
    wall = time.perf_counter() - t0
    print0(
        f"sample: wrote {cfg.num_videos} videos ({cfg.sample.num_clips} clip(s) each) to {out} on "
        f"{world} rank(s) in {duration(wall)}, {cfg.num_videos / max(wall, 1e-9):.2f} videos/s"
    )
    return paths


def _condition(
    cfg: SampleRunConfig, sm: SamplingModel, tokenizer: VQTokenizer
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The real clip ``[3, T, S, S]``, its normalised latents and the known latent frames."""
    per_latent, per_pixel = int(tokenizer.cfg.downsample[0]), int(tokenizer.cfg.downsample[1])
    frames, size = sm.spec.shape[1] * per_latent, sm.spec.shape[2] * per_pixel
    known = known_latent_frames(cfg.known, frames, per_latent)
    real = load_condition_clip(str(cfg.condition), frames, size)
    return real, encode_condition(tokenizer, sm.spec, real), known


def side_by_side(real: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    """``[B, 3, N, S, 2S]``: the real clip (mid-grey after its end) left of each generated video."""
    b, c, n, h, w = video.shape
    left = torch.zeros(c, n, h, w, dtype=video.dtype, device=video.device)
    k = min(n, real.shape[1])
    left[:, :k] = real[:, :k].to(video)
    return torch.cat([left.expand(b, -1, -1, -1, -1), video], dim=-1)


def _slug(classes: list[str], c: int) -> str:
    name = classes[c] if 0 <= c < len(classes) else "uncond"
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:40]
