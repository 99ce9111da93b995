"""Stage 1: train the 3D VQGAN tokenizer from video shards with two DeepSpeed engines.

One engine owns the autoencoder (encoder, quantizer, decoder), the other the 3D + 2D discriminators.
Each micro-step runs the generator update (reconstruction + LPIPS + VQ + adversarial + feature
matching, discriminators frozen) and then the discriminator update on detached reconstructions.
A finished run exports the tokenizer (safetensors + config + fingerprint) to ``<run>/tokenizer.safetensors``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from vqvdm_scale.config.core import ConfigError, presets
from vqvdm_scale.config.text import redact
from vqvdm_scale.data import ClipLoaderConfig, LoaderState, build_clip_loader
from vqvdm_scale.data.urls import resolve_shards
from vqvdm_scale.engine.config import TrainConfig
from vqvdm_scale.engine.deepspeed_engine import build_engine
from vqvdm_scale.engine.env import barrier, is_main, print0
from vqvdm_scale.engine.protocol import Engine
from vqvdm_scale.engine.switches import channels_last_convs
from vqvdm_scale.formats.object_store import ObjectStoreConfig, apply_object_store
from vqvdm_scale.formats.tokenizer_export import export_tokenizer
from vqvdm_scale.losses.vqgan_loss import VQGANLoss, VQGANLossConfig
from vqvdm_scale.metrics.recon import psnr, ssim
from vqvdm_scale.models.tokenizer import (
    DiscriminatorConfig,
    Discriminators,
    TokenizerConfig,
    VQTokenizer,
    tokenizer_preset,
)
from vqvdm_scale.train.config import RunConfig
from vqvdm_scale.train.loop import Trainer, Update


@dataclass
class VQGANRunConfig:
    """Everything ``launchers/train_vqgan.py`` reads.

    Args:
        export: where the finished tokenizer goes (default ``<run.dir>/tokenizer.safetensors``).
        eval_clips: clips in the fixed held-out batch for reconstruction videos and PSNR/SSIM.
    """

    run: RunConfig = field(default_factory=lambda: RunConfig(dir="runs/vqgan"))
    data: ClipLoaderConfig = field(default_factory=ClipLoaderConfig)
    model: TokenizerConfig = field(default_factory=TokenizerConfig, metadata=presets(tokenizer_preset))
    disc: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    loss: VQGANLossConfig = field(default_factory=VQGANLossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    object_store: ObjectStoreConfig = field(default_factory=ObjectStoreConfig)
    export: Optional[str] = None
    eval_clips: int = 4

    def __post_init__(self) -> None:
        t, h, w = self.model.downsample
        if self.data.frames % t or self.data.resolution % h or self.data.resolution % w:
            raise ConfigError(
                f"data.frames={self.data.frames} and data.resolution={self.data.resolution} must be divisible by "
                f"model.downsample={self.model.downsample}"
            )
        if self.train.zero_stage == 3:
            # Measured: DeepSpeed 0.19's ZeRO-3 backward hooks assert ("active_backward_submodules is empty")
            # once the frozen discriminator engine runs inside the generator's graph (GAN on).
            raise ConfigError(
                "train.zero_stage=3 is not supported for the VQGAN (its discriminator runs inside the generator "
                "loss); use 2, which partitions gradients and optimiser states"
            )
        if self.disc.in_channels != self.model.in_channels:
            raise ConfigError("disc.in_channels must equal model.in_channels")

    @property
    def export_path(self) -> str:
        """The tokenizer export: a path, or an fsspec URL (``s3://...``) it is uploaded to."""
        return self.export if self.export else str(Path(self.run.dir) / "tokenizer.safetensors")


def _in_own_dtype(disc: Engine) -> Callable[..., Any]:
    """The discriminator's forward with its tensor inputs cast to its dtype (bf16 runs; losses stay fp32)."""
    dtype = next(disc.module.parameters()).dtype

    def call(*inputs: Optional[torch.Tensor]) -> Any:
        return disc(*(None if t is None else t.to(dtype) for t in inputs))

    return call


def generator_step(
    autoencoder: Engine,
    disc: Engine,
    loss: VQGANLoss,
    x: torch.Tensor,
    step: int,
    ctx: dict[str, Any],
) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage-1 generator step function: reconstruction + LPIPS + VQ + adversarial + feature matching.

    Leaves the input and the reconstruction in ``ctx`` for :func:`discriminator_step`.
    """
    x_rec, qout = autoencoder(x)
    # Eq. 7's adaptive GAN weight takes gradient norms at the decoder's output (a fresh graph node)
    # rather than at its last weight as in Esser et al.: DeepSpeed hooks parameters and engine outputs
    # to detect its own backward, so an autograd.grad reaching them would run a gradient reduction
    # mid-step. The output is one linear map away from that weight, so the ratio keeps its role.
    xf, recf = x.float(), x_rec.float().clone()
    disc.module.requires_grad_(False)  # the generator step must not leave grads in the disc engine
    try:
        g_loss, logs = loss.generator_loss(xf, recf, qout, _in_own_dtype(disc), step, recf)
    finally:
        disc.module.requires_grad_(True)
    logs["psnr_batch"] = psnr(xf.detach(), recf.detach())
    ctx["x"], ctx["rec"] = xf, recf
    return g_loss, logs


def discriminator_step(
    disc: Engine, loss: VQGANLoss, ctx: dict[str, Any], step: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage-1 discriminator step function on the generator step's detached reconstruction."""
    return loss.discriminator_loss(ctx["x"], ctx["rec"].detach(), _in_own_dtype(disc), step)


class VQGANTrainer(Trainer):
    """The stage-1 step on top of the shared loop."""

    stage = "vqgan"
    cfg: VQGANRunConfig

    def build(self) -> None:
        """Tokenizer + discriminators, their engines, and the (frozen) loss networks."""
        cfg = self.cfg
        self.model = VQTokenizer(cfg.model)
        self.disc = Discriminators(cfg.disc)
        if cfg.train.channels_last:  # every device: oneDNN's CPU convolutions take channels_last too
            channels_last_convs(self.model)
            channels_last_convs(self.disc)
        self.loss = VQGANLoss(cfg.loss).to(self.device)
        disc_optim = cfg.train.disc_optim or cfg.train.optim
        ae = build_engine(self.model, cfg.train, cfg.train.optim, self.world_size)
        disc = build_engine(self.disc, cfg.train, disc_optim, self.world_size)
        if cfg.train.compile:
            ae.compile()
            disc.compile()
        self.engines = {"autoencoder": ae, "discriminator": disc}
        self.dtype = cfg.train.dtype
        self.ema_source = self.model
        self.heldout: torch.Tensor | None = None

    def build_loader(self, state: dict[str, Any] | None) -> Any:
        """The clip loader of this rank, resumed from ``state``."""
        return build_clip_loader(
            self.cfg.data,
            batch_size=self.cfg.train.micro_batch_size,
            rank=self.rank,
            world_size=self.world_size,
            train=True,
            state=LoaderState.from_dict(state) if state else None,
        )

    def batch_size(self, batch: Any) -> int:
        """Clips in a batch."""
        return int(batch["video"].shape[0])

    def updates(self) -> list[Update]:
        """The generator update, then the discriminator update on the detached reconstruction."""
        return [Update("autoencoder", self._generator), Update("discriminator", self._discriminator)]

    def _generator(self, batch: dict[str, Any], ctx: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch["video"].to(self.device, self.dtype, non_blocking=True)
        if self.heldout is None:
            self.heldout = self._heldout(x)
        return generator_step(
            self.engines["autoencoder"], self.engines["discriminator"], self.loss, x, self.step, ctx
        )

    def _discriminator(
        self, batch: dict[str, Any], ctx: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return discriminator_step(self.engines["discriminator"], self.loss, ctx, self.step)

    def _heldout(self, x: torch.Tensor) -> torch.Tensor:
        """The fixed held-out clips: this rank's first training clips of the run, kept in the run dir.

        Recorded once (``heldout/rank_N.pt``) and read back on every resume, so eval PSNR/SSIM are
        always measured on the same clips rather than on each invocation's first batch.
        """
        path = self.run_dir / "heldout" / f"rank_{self.rank:05d}.pt"
        if path.is_file():
            return torch.load(path, map_location=self.device, weights_only=True).to(self.dtype)
        clips = x[: self.cfg.eval_clips].detach().clone()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(clips.cpu(), tmp)
        tmp.replace(path)
        return clips

    @torch.no_grad()
    def media(self, step: int) -> None:
        """Held-out reconstructions side by side with the input, and their PSNR/SSIM (every rank runs the forward)."""
        if self.heldout is None:
            return
        ae = self.engines["autoencoder"]
        was_training = self.model.training
        self.model.eval()
        x_rec, qout = ae(self.heldout)
        self.model.train(was_training)
        x, rec = self.heldout.float(), x_rec.float()
        self.logger.scalars(
            {"eval/psnr": psnr(x, rec), "eval/ssim": ssim(x, rec), "eval/perplexity": float(qout.perplexity)},
            step,
        )
        self.logger.video("eval/input_vs_reconstruction", torch.cat([x, rec], dim=-1), step, fps=8.0)

    def finish(self) -> None:
        """Export the tokenizer (EMA weights when EMA is on) as the file later stages take."""
        state = self.ema_weights()  # every rank takes part in ZeRO-3 gathers
        if is_main():
            model = VQTokenizer(self.cfg.model)
            model.load_state_dict(state)
            path = self.cfg.export_path
            data = self.cfg.data  # its clip geometry travels with it (encode_latents reads it)
            fp = export_tokenizer(
                model,
                self.cfg.model,
                path,
                frames=data.frames,
                resolution=data.resolution,
                frame_stride=data.frame_stride,
            )
            print0(
                f"[vqgan] exported tokenizer {redact(path)} (fingerprint {fp[:16]}..., "
                f"{data.resolution}x{data.resolution} clips of {data.frames} frames)"
            )
        barrier()


def main(cfg: VQGANRunConfig) -> str:
    """Train (or resume) the VQGAN described by ``cfg``; return the tokenizer export path."""
    apply_object_store(cfg.object_store)
    resolve_shards(cfg.data.train_shards)  # unreachable store, missing bucket: one line before any model
    VQGANTrainer(cfg).fit()
    return cfg.export_path
