"""Stage 2: train the class-conditional latent video U-Net (DDPM eps-loss, CFG dropout) from latent shards.

Stage 2 reads only cached latents (``data_prep/encode_latents.py``); the tokenizer is loaded solely to
check the cache's fingerprint, to look codes up, and to decode sample videos for TensorBoard.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from vqvdm_scale.config.core import ConfigError, presets
from vqvdm_scale.config.text import redact
from vqvdm_scale.data.latents import LatentLoaderConfig, build_latent_loader, read_latent_manifest
from vqvdm_scale.data.loader import LoaderState
from vqvdm_scale.diffusion import DiffusionConfig, DiffusionLoss, GaussianDiffusion
from vqvdm_scale.engine.config import TrainConfig
from vqvdm_scale.engine.deepspeed_engine import build_engine
from vqvdm_scale.engine.env import barrier, is_main, print0
from vqvdm_scale.engine.switches import channels_last_convs
from vqvdm_scale.evaluate.config import PeriodicEvalConfig
from vqvdm_scale.formats.labels import check_label_counts
from vqvdm_scale.formats.latent_shards import LatentStats, check_fingerprint
from vqvdm_scale.formats.ldm_export import EMA_FILE, LatentSpec, copy_export, save_ema
from vqvdm_scale.formats.object_store import ObjectStoreConfig, apply_object_store
from vqvdm_scale.formats.tokenizer_export import load_tokenizer, read_fingerprint
from vqvdm_scale.models.unet.config import UNetConfig
from vqvdm_scale.models.unet.model import UNet3D
from vqvdm_scale.models.unet.presets import unet_preset
from vqvdm_scale.monitor.meters import count_flops
from vqvdm_scale.sample.api import SampleConfig, decode_latents, generate_latents
from vqvdm_scale.train.config import RunConfig
from vqvdm_scale.train.loop import Trainer, Update

T_BUCKETS = 4  # loss is also logged per quarter of the timestep range


@dataclass
class LDMRunConfig:
    """Everything ``launchers/train_ldm.py`` reads.

    Args:
        tokenizer: the stage-1 export (``tokenizer.safetensors``) the latents were made with.
        class_conditional: condition on the cache's classes (model.num_classes is set from them).
        media_videos: class-conditional sample videos decoded into TensorBoard every run.media_every steps.
        eval: FVD/KVD (and IS) of the EMA weights every ``eval.every`` steps, logged as ``eval/<metric>``.
        export: where a finished run also copies its last ``ema.safetensors`` (a path or an fsspec URL such
            as ``s3://bucket/ldm.safetensors``); ``sample.py --checkpoint`` takes either.
    """

    run: RunConfig = field(default_factory=lambda: RunConfig(dir="runs/ldm"))
    data: LatentLoaderConfig = field(default_factory=LatentLoaderConfig)
    model: UNetConfig = field(default_factory=UNetConfig, metadata=presets(unet_preset))
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(ema_decay=0.999))
    sample: SampleConfig = field(default_factory=lambda: SampleConfig(steps=50))
    tokenizer: str = ""
    class_conditional: bool = True
    media_videos: int = 4
    eval: PeriodicEvalConfig = field(default_factory=PeriodicEvalConfig)
    export: Optional[str] = None
    object_store: ObjectStoreConfig = field(default_factory=ObjectStoreConfig)

    def __post_init__(self) -> None:
        if self.diffusion.context_mode != "none" and not self.model.context_frames:
            raise ConfigError(
                f"diffusion.context_mode={self.diffusion.context_mode!r} needs model.context_frames=true"
            )


def diffusion_step(
    net: Callable[..., torch.Tensor], loss_fn: DiffusionLoss, z0: torch.Tensor, cond: dict[str, Any]
) -> tuple[torch.Tensor, dict[str, float]]:
    """The stage-2 step function: DDPM loss of one batch of latents, and the loss per timestep quarter."""
    loss, per_sample, t = loss_fn(net, z0, cond)
    logs = {"loss": float(loss.detach())}
    bucket = (t * T_BUCKETS // loss_fn.diffusion.num_timesteps).tolist()
    ps = per_sample.detach().tolist()
    for b in range(T_BUCKETS):
        vals = [v for v, k in zip(ps, bucket, strict=True) if k == b]
        if vals:
            logs[f"loss_t{b}"] = sum(vals) / len(vals)
    return loss, logs


def resolve_from_cache(cfg: LDMRunConfig) -> tuple[LDMRunConfig, dict[str, Any]]:
    """Check the cache against the tokenizer and its labels against its classes; fill model channels/classes."""
    if not cfg.tokenizer:
        raise ConfigError(
            "tokenizer is not set: pass tokenizer=PATH/tokenizer.safetensors (the stage-1 export)"
        )
    if not cfg.data.train_latents:
        raise ConfigError("data.train_latents is not set: pass the encode_latents.py output dir")
    manifest = read_latent_manifest(cfg.data.train_latents)
    check_fingerprint(manifest, read_fingerprint(cfg.tokenizer), where=cfg.data.train_latents)
    if cfg.diffusion.context_mode == "previous_clip" and manifest.get("context") != "previous":
        raise ConfigError(
            f"diffusion.context_mode=previous_clip trains on (previous, current) window pairs, but the latent "
            f"cache {redact(cfg.data.train_latents)} holds single windows: re-encode it with "
            "data_prep/encode_latents.py --context previous"
        )
    channels = int(manifest["latent_shape"][0])
    classes = list(manifest.get("classes") or [])
    if cfg.class_conditional and isinstance(manifest.get("label_counts"), dict):
        check_label_counts(
            manifest["label_counts"], classes, f"latent cache {redact(cfg.data.train_latents)}"
        )
    num_classes = len(classes) if cfg.class_conditional else 0
    if cfg.model.num_classes not in (0, num_classes):
        raise ConfigError(
            f"model.num_classes={cfg.model.num_classes}, but the latent cache {redact(cfg.data.train_latents)} "
            f"gives {num_classes} ({len(classes)} classes, class_conditional={cfg.class_conditional}): "
            "encode the dataset the config is for, or drop model.num_classes (it is taken from the cache)"
        )
    model = dataclasses.replace(cfg.model, in_channels=channels, out_channels=None, num_classes=num_classes)
    return dataclasses.replace(cfg, model=model), manifest


class LDMTrainer(Trainer):
    """The stage-2 step on top of the shared loop."""

    stage = "ldm"
    cfg: LDMRunConfig

    def __init__(self, cfg: LDMRunConfig, manifest: dict[str, Any]) -> None:
        super().__init__(cfg)
        self.manifest = manifest

    def build(self) -> None:
        """U-Net engine, diffusion loss, EMA, and the tokenizer for code lookup and sample decoding."""
        cfg = self.cfg
        self.net = UNet3D(cfg.model)
        if cfg.train.channels_last:  # every device: oneDNN's CPU convolutions take channels_last_3d too
            channels_last_convs(self.net)
        engine = build_engine(self.net, cfg.train, cfg.train.optim, self.world_size)
        if cfg.train.compile:
            engine.compile()
        self.engines = {"unet": engine}
        self.ema_source = self.net
        self.diffusion = GaussianDiffusion(cfg.diffusion)
        self.loss_fn = DiffusionLoss(self.diffusion, cfg.model.num_classes)
        self.dtype = cfg.train.dtype
        self.tokenizer, _, self.fingerprint = load_tokenizer(cfg.tokenizer)
        shape = tuple(int(s) for s in self.manifest["latent_shape"])
        # fps for samples: the clip fps of the data, read off the first batch (8 until then).
        self.spec = LatentSpec(shape=shape, stats=LatentStats.from_manifest(self.manifest), fps=8.0)  # type: ignore[arg-type]
        self._fps_seen = False
        self._evaluator: Any = None

    def build_loader(self, state: dict[str, Any] | None) -> Any:
        """The latent loader of this rank (refuses a cache made by another tokenizer)."""
        return build_latent_loader(
            self.cfg.data,
            batch_size=self.cfg.train.micro_batch_size,
            rank=self.rank,
            world_size=self.world_size,
            tokenizer_fingerprint=self.fingerprint,
            codebook=self.tokenizer.quantizer.codes() if self.manifest.get("store") == "indices" else None,
            state=LoaderState.from_dict(state) if state else None,
        )

    def batch_size(self, batch: Any) -> int:
        """Latent clips in a batch."""
        return int(batch["latent"].shape[0])

    def _cond(self, batch: dict[str, Any]) -> dict[str, Any]:
        cond: dict[str, Any] = {"fps": batch["fps"].to(self.device)}
        if self.cfg.model.num_classes > 0:
            cond["y"] = batch["label"].to(self.device)
        if self.cfg.diffusion.context_mode == "previous_clip":
            context = batch["context"].to(self.device, non_blocking=True)
            valid = batch["context_valid"].to(self.device).to(context.dtype)  # 0: a video's first window
            b, _, t, h, w = context.shape
            cond["context"] = context
            cond["context_mask"] = valid.view(b, 1, 1, 1, 1).expand(b, 1, t, h, w).contiguous()
        return cond

    def _net_call(self, z_t: torch.Tensor, t: torch.Tensor, **kw: Any) -> torch.Tensor:
        kw = {
            k: (v.to(self.dtype) if torch.is_tensor(v) and v.is_floating_point() else v)
            for k, v in kw.items()
        }
        return self.engines["unet"](z_t.to(self.dtype), t, **kw)

    def updates(self) -> list[Update]:
        """One update: the diffusion loss of the U-Net."""
        return [Update("unet", self._loss)]

    def _loss(self, batch: dict[str, Any], ctx: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        z0 = batch["latent"].to(self.device, non_blocking=True)
        if not self._fps_seen:
            self.spec.fps, self._fps_seen = float(batch["fps"].median()), True
        return diffusion_step(self._net_call, self.loss_fn, z0, self._cond(batch))

    def flops_per_step(self, batch: Any) -> float:
        """FLOPs of forward+backward of one optimiser step, counted once on a meta-device copy."""
        z = batch["latent"]
        with torch.device("meta"):
            net = UNet3D(self.cfg.model)
            x = torch.empty(z.shape)
            t = torch.zeros(z.shape[0], dtype=torch.long)
            y = torch.zeros(z.shape[0], dtype=torch.long) if self.cfg.model.num_classes > 0 else None
            fps = torch.empty(z.shape[0])
            ctx = torch.empty(z.shape) if self.cfg.model.context_frames else None
            mask = torch.empty(z.shape[0], 1, *z.shape[2:]) if self.cfg.model.context_frames else None

        def step() -> None:
            net(x, t, y=y, fps=fps, context=ctx, context_mask=mask).sum().backward()

        try:
            return float(count_flops(step)) * self.train_cfg.grad_accum
        except Exception as e:  # noqa: BLE001 - MFU is a diagnostic; never stop training for it
            print0(f"note: FLOP counting failed ({type(e).__name__}: {e}); MFU is not logged")
            return 0.0

    def on_checkpoint(self, directory: Path | None) -> None:
        """Beside each checkpoint, a pickle-free ``ema.safetensors`` that sampling loads."""
        weights = self.ema_weights()
        if is_main() and directory is not None:
            save_ema(
                directory / EMA_FILE,
                weights,
                self.cfg.model,
                self.cfg.diffusion,
                self.spec,
                self.fingerprint,
                self.step,
                list(self.manifest.get("classes") or []),
            )
        barrier()

    def finish(self) -> None:
        """Copy the last checkpoint's EMA export to ``export`` when one is set."""
        if self.cfg.export and is_main():
            copy_export(self.ckpt_dir / f"step_{self.step:08d}" / EMA_FILE, self.cfg.export)
            print0(f"[ldm] exported {redact(self.cfg.export)} (the EMA weights of step {self.step})")
        barrier()

    def exports_missing(self, directory: Path) -> bool:
        """The checkpoint has no ``ema.safetensors`` (written by a version that exported after COMPLETE)."""
        return not (directory / EMA_FILE).is_file()

    @torch.no_grad()
    def media(self, step: int) -> None:
        """A few class-conditional samples from the EMA weights, decoded by the tokenizer (rank 0)."""
        weights = self.ema_weights()
        if not is_main() or self.cfg.media_videos < 1:
            return
        net = UNet3D(self.cfg.model)
        net.load_state_dict(weights)
        net.eval()
        n = self.cfg.media_videos
        k = max(1, self.cfg.model.num_classes)
        labels = torch.arange(n) % k
        g = torch.Generator().manual_seed(self.cfg.sample.seed)
        z = generate_latents(
            net,
            self.diffusion,
            self.spec,
            labels,
            dataclasses.replace(self.cfg.sample, num_clips=1),
            generator=g,
        )
        video = decode_latents(
            self.tokenizer, z, self.spec, self.cfg.sample.quantize, self.cfg.sample.precision
        )
        self.logger.video("samples/class_conditional", video, step, fps=self.spec.fps)

    def eval_every(self) -> int:
        return self.cfg.eval.every

    def evaluate(self, step: int) -> None:
        """FVD/KVD (and IS) of the EMA weights on every rank (:mod:`vqvdm_scale.train.ldm_eval`)."""
        from vqvdm_scale.train.ldm_eval import PeriodicEval, scalars

        weights = self.ema_weights()
        if self._evaluator is None:
            self._evaluator = PeriodicEval(self.cfg.eval, str(self.run_dir), self.cfg.tokenizer, self.device)
        metrics = self._evaluator(
            step,
            weights,
            self.cfg.model,
            self.diffusion,
            self.spec,
            list(self.manifest.get("classes") or []),
            dataclasses.replace(self.cfg.sample, num_clips=1),
        )
        self.logger.scalars(scalars(metrics), step)


def main(cfg: LDMRunConfig) -> Path:
    """Train (or resume) the latent U-Net described by ``cfg``; return the run dir."""
    if cfg.sample.compile:  # the config itself may carry it (benchmarks time sampling from it)
        raise ConfigError(
            "sample.compile freezes the weights into the compiled graph, which training's sample videos "
            "cannot use (the weights move): set it for sample.py or evaluate.py, not for training"
        )
    apply_object_store(cfg.object_store)  # the cache check below reads the store: one line if unreachable
    cfg, manifest = resolve_from_cache(cfg)
    return LDMTrainer(cfg, manifest).fit()
