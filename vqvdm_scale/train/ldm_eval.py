"""Evaluation during LDM training: every ``eval.every`` steps, FVD/KVD (and IS) of the EMA weights.

Every rank builds the sampling model from the EMA weights and samples its share of the clips, as
``launchers/evaluate.py --run`` would from the exported checkpoint; rank 0 logs ``eval/<metric>`` to
TensorBoard and writes ``<run.dir>/eval/step_XXXXXXXX.json`` with the whole protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from vqvdm_scale.config import to_dict
from vqvdm_scale.config.text import redact
from vqvdm_scale.diffusion import GaussianDiffusion
from vqvdm_scale.engine.env import broadcast_tensors, is_main, print0
from vqvdm_scale.evaluate.config import PeriodicEvalConfig
from vqvdm_scale.evaluate.fakes import ModelFakes
from vqvdm_scale.evaluate.main import build_detector, evaluate
from vqvdm_scale.evaluate.report import write_json
from vqvdm_scale.formats.ldm_export import LatentSpec, SamplingModel
from vqvdm_scale.formats.tokenizer_export import load_tokenizer
from vqvdm_scale.metrics.detectors import Detector
from vqvdm_scale.metrics.real_clips import RealSource, open_real
from vqvdm_scale.models.tokenizer import VQTokenizer
from vqvdm_scale.models.unet.model import UNet3D
from vqvdm_scale.sample.api import SampleConfig

__all__ = ["PeriodicEval"]


class PeriodicEval:
    """Detectors and real shards opened once, then one evaluation per call."""

    def __init__(
        self, cfg: PeriodicEvalConfig, run_dir: str, tokenizer_path: str, device: torch.device
    ) -> None:
        self.cfg, self.run_dir, self.tokenizer_path, self.device = cfg, run_dir, tokenizer_path, device
        self._i3d: Optional[Detector] = None
        self._c3d: Optional[Detector] = None
        self._real: Optional[RealSource] = None
        self._tokenizer: Optional[VQTokenizer] = None
        self._opened = False

    def _open(self, step: int, sample: SampleConfig) -> None:
        ec = self.cfg.eval_config(self.run_dir, self.tokenizer_path, sample, step)
        self._i3d = build_detector(ec, "i3d", self.device)
        self._c3d = build_detector(ec, "c3d", self.device)
        self._real = open_real(ec.real) if ec.real else None
        self._tokenizer = load_tokenizer(self.tokenizer_path, self.device)[
            0
        ]  # the trainer's stays on its device
        self._opened = True

    @torch.no_grad()
    def __call__(
        self,
        step: int,
        weights: dict[str, torch.Tensor],
        net_config: Any,
        diffusion: GaussianDiffusion,
        spec: LatentSpec,
        classes: list[str],
        sample: SampleConfig,
    ) -> dict[str, Any]:
        """Evaluate the EMA ``weights`` (given on rank 0) at ``step`` on every rank; returns the metrics."""
        if not self._opened:
            self._open(step, sample)
        net = UNet3D(net_config)
        if weights:  # the EMA lives on rank 0 only: the others receive it
            net.load_state_dict(weights)
        net.to(self.device).eval()
        broadcast_tensors(list(net.state_dict().values()))
        model = SamplingModel(net, diffusion, spec, "", step, classes)
        fakes = ModelFakes(model, self._tokenizer, sample, self.device, f"{self.run_dir} step {step} (EMA)")
        ec = self.cfg.eval_config(self.run_dir, self.tokenizer_path, sample, step)
        res = evaluate(ec, fakes, self._i3d, self._c3d, self._real, fakes.resolution, self.device)
        if is_main():
            write_json(Path(ec.output), {**res, "config": redact(to_dict(ec)), "step": step})
        print0(f"[eval] step {step}: " + ", ".join(f"{k} {_num(v):.4g}" for k, v in res["metrics"].items()))
        return res["metrics"]


def _num(v: Any) -> float:
    return float(v["mean"]) if isinstance(v, dict) else float(v)


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """TensorBoard scalars ``eval/<metric>`` (IS: its mean)."""
    return {f"eval/{k}": _num(v) for k, v in metrics.items()}
