"""What ``launchers/evaluate.py`` computes, on what, and where the result goes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from vqvdm_scale.config.core import ConfigError
from vqvdm_scale.formats.object_store import ObjectStoreConfig
from vqvdm_scale.metrics.protocol import ProtocolConfig
from vqvdm_scale.sample.api import SampleConfig

__all__ = ["METRICS", "EvalConfig", "parse_sweep"]

# metric -> what it needs: the I3D (i), the C3D (c), real shards (r), a tokenizer (t)
METRICS: dict[str, str] = {
    "fvd": "ir",  # FVD_16 (StyleGAN-V fvd2048_16f)
    "kvd": "ir",  # KVD over the same features
    "is": "c",  # C3D Inception Score (UCF-101 classes)
    "fvd128": "ir",  # FVD over 128-frame clips (PVDM's FVD_128)
    "drift": "ir",  # per extension step: FVD of that step's clips and the mean latent statistics
    "recon": "irt",  # tokenizer PSNR / SSIM / LPIPS / rFVD on real clips
}


def parse_sweep(spec: Optional[str]) -> tuple[str, list[float]]:
    """``"guidance=1,2,3"`` -> ("guidance", [1.0, 2.0, 3.0]); ("", []) for none."""
    if not spec:
        return "", []
    key, _, values = spec.partition("=")
    if key.strip() != "guidance" or not values.strip():
        raise ConfigError(
            f"--sweep takes guidance=W1,W2,... (the classifier-free guidance weights), got {spec!r}"
        )
    try:
        return "guidance", [float(v) for v in values.split(",") if v.strip()]
    except ValueError as e:
        raise ConfigError(f"--sweep {spec!r}: the values must be numbers ({e})") from e


@dataclass
class EvalConfig:
    """An evaluation.

    Args:
        real: real video shards (a make_shards directory, brace pattern or list; any fsspec URL).
        split: the split the real shards hold (``test``); checked against the split file they were made from.
        fake: a folder of generated videos as lossless frames (``sample.py --format npy`` or ``png``), or
        run: an LDM run dir (or checkpoint dir) to sample from on the fly, distributed and class-balanced.
        tokenizer: the stage-1 export (needed with ``run`` and for ``recon``).
        ema: sample the EMA weights (the only weights a run exports for sampling).
        metrics: any of fvd, kvd, is, fvd128, drift, recon.
        i3d: the FVD detector file (``i3d_torchscript.pt`` or ``i3d_pretrained_400.pt``), path or URL.
        c3d: the IS classifier file (``c3d_ucf101.pt`` or ``convert_c3d.py`` output), path or URL.
        lpips_weights: torchvision's ``vgg16-397923af.pth`` for the recon LPIPS (or the torch hub cache).
        random_detectors: use randomly initialised I3D / C3D / LPIPS networks of the exact architectures
            (tests and smoke runs only: the numbers are then not comparable with anything).
        protocol: how clips are chosen and counted (:class:`~vqvdm_scale.metrics.protocol.ProtocolConfig`).
        sample: the sampler, steps, guidance and seed used with ``run``.
        sweep: ``guidance=1,2,3,4,6``: one result per value, plus a table and a plot of FVD against guidance.
        batch_size: clips per detector / sampler call on a rank.
        cache_dir: where real features are cached (keyed by manifest hash, split, protocol and detector).
        output: the results JSON (a sweep writes ``<stem>_guidance<W>.json`` beside it).
        object_store: options of the s3:// / gs:// store the real shards are read from.
    """

    real: Optional[str] = None
    split: Optional[str] = None
    fake: Optional[str] = None
    run: Optional[str] = None
    tokenizer: Optional[str] = None
    ema: bool = True
    metrics: list[str] = field(default_factory=lambda: ["fvd", "kvd"])
    i3d: Optional[str] = None
    c3d: Optional[str] = None
    lpips_weights: Optional[str] = None
    random_detectors: bool = False
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    sweep: Optional[str] = None
    batch_size: int = 8
    cache_dir: str = "~/.cache/vqvdm_scale/eval"
    output: str = "results.json"
    device: str = "auto"
    progress: bool = True
    object_store: ObjectStoreConfig = field(default_factory=ObjectStoreConfig)

    def __post_init__(self) -> None:
        bad = [m for m in self.metrics if m not in METRICS]
        if bad or not self.metrics:
            raise ConfigError(f"--metrics takes a list of {', '.join(METRICS)}, got {self.metrics}")
        if not self.ema:
            raise ConfigError("ema=false: a run exports only its EMA weights for sampling; evaluate those")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        needs = "".join(METRICS[m] for m in self.metrics)
        generated = [m for m in self.metrics if m != "recon"]
        if generated and (self.fake is None) == (self.run is None):
            raise ConfigError(
                f"{', '.join(generated)} score generated videos: give exactly one of --fake DIR or --run DIR"
            )
        if "r" in needs and not self.real:
            raise ConfigError(
                f"--metrics {','.join(self.metrics)} compare with real videos: give --real SHARDS"
            )
        if not self.random_detectors:
            if "i" in needs and not self.i3d:
                raise ConfigError(
                    "--i3d is required for fvd/kvd/fvd128/drift/recon: the path of i3d_torchscript.pt"
                )
            if "c" in needs and not self.c3d:
                raise ConfigError(
                    "--c3d is required for is: the path of c3d_ucf101.pt (or convert_c3d.py output)"
                )
        if ("t" in needs or self.run) and not self.tokenizer:
            raise ConfigError("--tokenizer is required with --run and for recon: the stage-1 export")
        if self.fake is None and self.run is None and self.protocol.resolution is None:
            raise ConfigError(
                "recon alone needs protocol.resolution=N: the clip size the tokenizer was trained on"
            )
        key, values = parse_sweep(self.sweep)
        if values and self.run is None:
            raise ConfigError("--sweep samples at each guidance weight: it needs --run, not --fake")


@dataclass
class PeriodicEvalConfig:
    """Evaluation while training (the ``eval`` section of an LDM config): FVD/KVD (and IS) of the EMA weights.

    Args:
        every: evaluate every this many steps (0 = never); each rank samples its share.
        num_samples: generated clips, and real videos (one clip each), per evaluation.
        metrics: any of fvd, kvd, is; logged to TensorBoard as ``eval/<metric>``.
        real: real video shards; i3d / c3d: the detector files (see ``launchers/evaluate.py``).
        random_detectors: randomly initialised detectors (tests and smoke runs only).
        cache_dir: real-feature cache; empty = ``<run.dir>/eval/cache``. Each result is also written to
            ``<run.dir>/eval/step_XXXXXXXX.json``.
    """

    every: int = 0
    num_samples: int = 256
    metrics: list[str] = field(default_factory=lambda: ["fvd", "kvd"])
    real: Optional[str] = None
    i3d: Optional[str] = None
    c3d: Optional[str] = None
    random_detectors: bool = False
    batch_size: int = 8
    cache_dir: str = ""

    def __post_init__(self) -> None:
        if self.every < 0 or self.num_samples < 2:
            raise ConfigError("eval.every must be >= 0 and eval.num_samples >= 2")
        bad = [m for m in self.metrics if m not in ("fvd", "kvd", "is")]
        if bad:
            raise ConfigError(f"eval.metrics takes fvd, kvd and is during training, got {self.metrics}")
        if self.every and not self.real and {"fvd", "kvd"} & set(self.metrics):
            raise ConfigError("eval.every > 0 needs eval.real: the real video shards to compare with")
        if self.every and not self.random_detectors:
            if {"fvd", "kvd"} & set(self.metrics) and not self.i3d:
                raise ConfigError("eval.every > 0 needs eval.i3d: the path of i3d_torchscript.pt")
            if "is" in self.metrics and not self.c3d:
                raise ConfigError("eval.metrics has is: give eval.c3d, the path of c3d_ucf101.pt")

    def eval_config(self, run_dir: str, tokenizer: str, sample: SampleConfig, step: int) -> EvalConfig:
        """The :class:`EvalConfig` of one evaluation at ``step`` (IS on the same samples as FVD)."""
        return EvalConfig(
            real=self.real,
            run=run_dir,
            tokenizer=tokenizer,
            metrics=list(self.metrics),
            i3d=self.i3d,
            c3d=self.c3d,
            random_detectors=self.random_detectors,
            protocol=ProtocolConfig(
                num_real=self.num_samples,
                num_fake=self.num_samples,
                is_samples=self.num_samples if "is" in self.metrics else None,
            ),
            sample=sample,
            batch_size=self.batch_size,
            cache_dir=self.cache_dir or f"{run_dir}/eval/cache",
            output=f"{run_dir}/eval/step_{step:08d}.json",
            progress=False,
        )
