"""The training steps the model benchmarks time: the trainers' own step functions, run by the trainers' loop.

One timed step is :func:`vqvdm_scale.train.loop.run_updates` over the stage's :class:`Update`\\ s, which is
the whole of what the trainer runs per micro-batch (each update's loss, ``engine.backward``,
``engine.step``). The engines come from :func:`vqvdm_scale.engine.deepspeed_engine.build_engine` with the
``train`` / ``train.optim`` sections of the named stage config, so the optimiser (torch AdamW), its
betas and learning rate, gradient clipping, precision and ZeRO stage are the ones training uses. Only
the micro-batch is the benchmark's (``--batch``) and gradient accumulation is 1, so every timed
micro-step ends in an optimiser step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from vqvdm_scale.config import load_config
from vqvdm_scale.config.shipped import shipped_config
from vqvdm_scale.diffusion import DiffusionLoss, GaussianDiffusion
from vqvdm_scale.engine.config import OptimConfig, TrainConfig
from vqvdm_scale.engine.deepspeed_engine import DeepSpeedEngine, build_engine
from vqvdm_scale.engine.env import init_distributed
from vqvdm_scale.engine.switches import channels_last_convs
from vqvdm_scale.losses.vqgan_loss import VQGANLoss
from vqvdm_scale.models.tokenizer import Discriminators, VQTokenizer
from vqvdm_scale.models.unet.model import UNet3D
from vqvdm_scale.train.ldm import LDMRunConfig, diffusion_step
from vqvdm_scale.train.loop import Update, run_updates
from vqvdm_scale.train.vqgan import VQGANRunConfig, discriminator_step, generator_step

__all__ = [
    "TrainStep",
    "bench_train",
    "build_engines",
    "ldm_train_step",
    "load_stage_config",
    "torch_optimizer",
    "vqgan_train_step",
]

T = TypeVar("T")
UCF_FPS = 25.0


def load_stage_config(cls: type[T], name: str, overrides: Sequence[str] = ()) -> T:
    """A stage config from a path, or from a shipped name such as ``ldm/B.yaml``, with ``a.b=c`` overrides."""
    path = Path(name)
    return load_config(cls, path if path.is_file() else shipped_config(name), overrides)


def bench_train(train: TrainConfig, batch: int | None) -> TrainConfig:
    """The config's ``train`` section at the benchmark's micro-batch, one micro-step per optimiser step."""
    return dataclasses.replace(
        train, micro_batch_size=train.micro_batch_size if batch is None else batch, grad_accum=1
    )


def build_engines(
    modules: Mapping[str, tuple[nn.Module, OptimConfig]], train: TrainConfig
) -> dict[str, DeepSpeedEngine]:
    """One engine per module, built as the trainers build them (a one-rank gloo group when none exists)."""
    _, world = init_distributed("gloo")
    return {name: build_engine(module, train, optim, world) for name, (module, optim) in modules.items()}


def torch_optimizer(engine: DeepSpeedEngine) -> torch.optim.Optimizer:
    """The torch optimiser inside an engine (DeepSpeed's ZeRO / bf16 wrappers keep it as ``.optimizer``)."""
    opt: Any = engine._engine.optimizer  # noqa: SLF001 - the engine exposes no accessor for it
    while not isinstance(opt, torch.optim.Optimizer) and hasattr(opt, "optimizer"):
        opt = opt.optimizer
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"no torch optimizer inside {type(engine._engine.optimizer).__name__}")  # noqa: SLF001
    return opt


def _param_snapshot(engine: DeepSpeedEngine) -> dict[str, torch.Tensor]:
    names = {n for n, _ in engine.module.named_parameters()}
    return {k: v for k, v in engine.full_state_dict().items() if k in names}


@dataclass
class TrainStep:
    """The updates of a stage, its engines and one batch: calling it runs one micro-step as the trainer does."""

    updates: list[Update]
    engines: dict[str, DeepSpeedEngine]
    batch: Any

    def __call__(self) -> dict[str, float] | None:
        return run_updates(self.updates, self.engines, self.batch)

    def optimizers(self) -> dict[str, str]:
        """The class name of each engine's torch optimiser."""
        return {name: type(torch_optimizer(e)).__name__ for name, e in self.engines.items()}

    def snapshot(self) -> dict[str, dict[str, torch.Tensor]]:
        """Every engine's full parameters (fp32 copies, gathered under ZeRO-3)."""
        return {name: _param_snapshot(e) for name, e in self.engines.items()}

    def changed_since(self, before: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, bool]:
        """Per engine: did any parameter move since ``before`` (a :meth:`snapshot`)?"""
        now = self.snapshot()
        return {
            name: any(not torch.equal(before[name][k], v) for k, v in params.items())
            for name, params in now.items()
        }


def vqgan_train_step(cfg: VQGANRunConfig, batch: int | None) -> TrainStep:
    """Stage 1: the generator update, then the discriminator update, with the GAN term on.

    The step index handed to the step functions is ``loss.disc_start_step``, so the adversarial and
    feature-matching terms and the discriminator update run, as in all steps after the GAN starts.
    """
    train = bench_train(cfg.train, batch)
    model, disc = VQTokenizer(cfg.model), Discriminators(cfg.disc)
    if train.channels_last:  # as VQGANTrainer.build
        channels_last_convs(model)
        channels_last_convs(disc)
    loss = VQGANLoss(cfg.loss)
    engines = build_engines(
        {"autoencoder": (model, train.optim), "discriminator": (disc, train.disc_optim or train.optim)}, train
    )
    ae, dn = engines["autoencoder"], engines["discriminator"]
    if train.compile:
        ae.compile()
        dn.compile()
    step = cfg.loss.disc_start_step
    shape = (cfg.model.in_channels, cfg.data.frames, cfg.data.resolution, cfg.data.resolution)
    # Clips in [-1, 1] as the loader delivers them, cast to the engine's dtype as the trainer casts them.
    x = (torch.rand(train.micro_batch_size, *shape) * 2 - 1).to(train.dtype)
    updates = [
        Update("autoencoder", lambda b, ctx: generator_step(ae, dn, loss, b, step, ctx)),
        Update("discriminator", lambda b, ctx: discriminator_step(dn, loss, ctx, step)),
    ]
    return TrainStep(updates, engines, x)


def ldm_updates(engine: DeepSpeedEngine, cfg: LDMRunConfig, dtype: torch.dtype) -> list[Update]:
    """Stage 2's one update on trainer-format batches (``latent``, ``label``, ``fps``), as LDMTrainer wires it."""
    loss_fn = DiffusionLoss(GaussianDiffusion(cfg.diffusion), cfg.model.num_classes)

    def net_call(z_t: torch.Tensor, t: torch.Tensor, **kw: Any) -> torch.Tensor:
        kw = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kw.items()}
        return engine(z_t.to(dtype), t, **kw)

    def loss(batch: dict[str, Any], ctx: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        cond = {"fps": batch["fps"], **({"y": batch["label"]} if cfg.model.num_classes > 0 else {})}
        return diffusion_step(net_call, loss_fn, batch["latent"], cond)

    return [Update("unet", loss)]


def ldm_train_step(cfg: LDMRunConfig, shape: Sequence[int], batch: int | None) -> TrainStep:
    """Stage 2: the diffusion loss of ``cfg.model`` on random inputs of ``shape`` (C, T, H, W).

    As in LDMTrainer.build: ``train.channels_last`` feeds every convolution a channels-last input and
    ``train.compile`` compiles the network in place, on every device.
    """
    train = bench_train(cfg.train, batch)
    net = UNet3D(cfg.model)
    if train.channels_last:
        channels_last_convs(net)
    engine = build_engines({"unet": (net, train.optim)}, train)["unet"]
    if train.compile:
        engine.compile()
    b = train.micro_batch_size
    data = {
        "latent": torch.randn(b, *shape),
        "label": torch.randint(0, max(cfg.model.num_classes, 1), (b,)),
        "fps": torch.full((b,), UCF_FPS),
    }
    return TrainStep(ldm_updates(engine, cfg, train.dtype), {"unet": engine}, data)
