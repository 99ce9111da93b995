"""``launchers/evaluate.py``: FVD, KVD, IS, FVD_128, the drift curve and tokenizer reconstruction, with the
whole protocol recorded in ``results.json``. Runs in one process or under torchrun/deepspeed/srun, each
rank doing its share of the clips (see :mod:`vqvdm_scale.evaluate.fakes` and :mod:`~.passes`).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from vqvdm_scale.config import UserError, to_dict
from vqvdm_scale.config.text import redact
from vqvdm_scale.engine.env import (
    describe_rank,
    get_rank,
    get_world_size,
    init_distributed,
    pick_device,
    print0,
)
from vqvdm_scale.evaluate.config import METRICS, EvalConfig, parse_sweep
from vqvdm_scale.evaluate.fakes import DirFakes, ModelFakes
from vqvdm_scale.evaluate.passes import Sink, fake_pass, real_features, tgan_crop
from vqvdm_scale.evaluate.recon import recon_pass
from vqvdm_scale.evaluate.report import code_version, protocol_record, sweep_plot, sweep_table, write_json
from vqvdm_scale.formats.object_store import apply_object_store
from vqvdm_scale.metrics.detectors import Detector, Kind, load_detector
from vqvdm_scale.metrics.real_clips import RealSource, open_real
from vqvdm_scale.metrics.stats import frechet_distance, gaussian_stats, inception_score, polynomial_mmd
from vqvdm_scale.models.detectors import C3D, I3D

__all__ = ["build_detector", "evaluate", "main"]

Fakes = Union[DirFakes, ModelFakes]


def _random_detector(kind: Kind, device: torch.device) -> Detector:
    """A randomly initialised network of the exact architecture (seeded: the same on every rank and run).

    For tests and smoke runs: the numbers say the plumbing works, nothing about video quality."""
    torch.manual_seed(0)
    module = I3D() if kind == "i3d" else C3D()
    for m in module.modules():  # He init keeps activations alive through the depth, so features differ
        if isinstance(m, (torch.nn.Conv3d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode() + v.float().numpy().tobytes())
    return Detector(
        kind, module.to(device).eval(), h.hexdigest(), "random-init (seed 0)", "random-init", device
    )


def build_detector(cfg: EvalConfig, kind: Kind, device: torch.device) -> Optional[Detector]:
    """The ``kind`` detector if a metric of ``cfg`` needs it: from its file, or random for smoke runs."""
    letter = "i" if kind == "i3d" else "c"
    if not any(letter in METRICS[m] for m in cfg.metrics):
        return None
    if cfg.random_detectors:
        return _random_detector(kind, device)
    return load_detector(str(getattr(cfg, kind)), kind, device)


def _fid(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


def _is(probs: np.ndarray, cfg: EvalConfig) -> dict[str, Any]:
    spec = cfg.protocol.is_spec
    n = spec.num_samples if probs.shape[0] >= spec.num_samples * spec.draws else probs.shape[0] // spec.draws
    if spec.draws == 1:
        mean, std = inception_score(probs[:n], spec.splits, spec.eps, spec.shuffle_seed)
    else:
        scores = [
            inception_score(probs[d * n : (d + 1) * n], spec.splits, spec.eps, spec.shuffle_seed)[0]
            for d in range(spec.draws)
        ]
        mean, std = float(np.mean(scores)), float(np.std(scores))
    return {"mean": mean, "std": std, "samples": n * spec.draws, "preset": cfg.protocol.is_preset}


def evaluate(
    cfg: EvalConfig,
    fakes: Optional[Fakes],
    i3d: Optional[Detector],
    c3d: Optional[Detector],
    real: Optional[RealSource],
    resolution: int,
    device: torch.device,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Every requested metric, on this process's share; every rank returns the same numbers."""
    p, rank, world, ms = cfg.protocol, get_rank(), get_world_size(), set(cfg.metrics)
    cache = Path(cfg.cache_dir).expanduser()
    common = dict(cache_dir=cache, batch_size=cfg.batch_size, rank=rank, world=world, progress=cfg.progress)
    metrics: dict[str, Any] = {}
    real_rec: dict[str, Any] = {}

    def reals(frames: int) -> np.ndarray:
        assert i3d is not None and real is not None
        r = real_features(i3d, real, p, frames=frames, stride=p.stride, resolution=resolution, **common)
        real_rec[f"{frames}f"] = {
            "videos": int(r.features.shape[0]),
            "skipped": r.skipped,
            "cache": r.cache,
            "from_cache": r.cached,
        }
        return r.features

    counts: dict[str, int] = {}
    if ms & {"fvd", "kvd", "is"} and fakes is not None:
        is_n = p.is_spec.num_samples * p.is_spec.draws if "is" in ms else 0
        n_fvd = p.num_fake if ms & {"fvd", "kvd"} else 0
        sinks: dict[str, Sink] = {}
        if n_fvd and i3d is not None:
            sinks["i3d"] = Sink(i3d, lambda b: b.videos[:, :, :: p.stride][:, :, : p.frames], n_fvd)
        if is_n and c3d is not None:
            crop = p.is_spec.crop
            sinks["c3d"] = Sink(
                c3d, lambda b: tgan_crop(b.videos[:, :, :16]) if crop else b.videos[:, :, :16], is_n
            )
        frames = max((p.frames - 1) * p.stride + 1, 16 if is_n else 1)
        out = fake_pass(
            fakes,
            sinks,
            count=max(n_fvd, is_n),
            frames=frames,
            batch_size=cfg.batch_size,
            rank=rank,
            world=world,
            progress=cfg.progress,
        )
        counts["fake"] = max(n_fvd, is_n)
        if n_fvd:
            real16 = reals(p.frames)
            if "fvd" in ms:
                metrics["fvd"] = _fid(real16, out.rows["i3d"])
            if "kvd" in ms:
                metrics["kvd"] = polynomial_mmd(real16, out.rows["i3d"])
        if is_n:
            metrics["is"] = _is(out.rows["c3d"], cfg)
    if ms & {"fvd128", "drift"} and fakes is not None and i3d is not None:
        step = fakes.clip_frames if isinstance(fakes, ModelFakes) else p.frames
        long = (p.long_frames - 1) * p.stride + 1
        steps = max(1, -(-long // step))
        drift_frames = min(step, p.frames)
        sinks = {}
        if "fvd128" in ms:
            sinks["long"] = Sink(
                i3d, lambda b: b.videos[:, :, :: p.stride][:, :, : p.long_frames], p.num_fake
            )
        if "drift" in ms:
            for k in range(steps):
                sinks[f"step{k}"] = Sink(
                    i3d,
                    lambda b, k=k: b.videos[:, :, k * step : (k + 1) * step][:, :, :drift_frames],
                    p.num_fake,
                )
        out = fake_pass(
            fakes,
            sinks,
            count=p.num_fake,
            frames=steps * step,
            batch_size=cfg.batch_size,
            rank=rank,
            world=world,
            progress=cfg.progress,
            latent_steps=steps if "drift" in ms else 0,
        )
        if "fvd128" in ms:
            metrics["fvd128"] = _fid(reals(p.long_frames), out.rows["long"])
        if "drift" in ms:
            ref = reals(drift_frames)
            lat = {s["step"]: s for s in out.latent_stats}
            metrics["drift"] = [
                {
                    "step": k,
                    "frames": [k * step, (k + 1) * step],
                    "fvd": _fid(ref, out.rows[f"step{k}"]),
                    "latent_mean": lat.get(k, {}).get("latent_mean"),
                    "latent_std": lat.get(k, {}).get("latent_std"),
                }
                for k in range(steps)
            ]
    if "recon" in ms and real is not None and i3d is not None:
        metrics["recon"] = recon_pass(
            tokenizer,
            i3d,
            _lpips(cfg, device),
            real,
            p,
            resolution=resolution,
            batch_size=cfg.batch_size,
            device=device,
            rank=rank,
            world=world,
            progress=cfg.progress,
        )
    return {
        "metrics": metrics,
        "protocol": protocol_record(p),
        "detectors": {d.kind: d.record() for d in (i3d, c3d) if d is not None},
        "real": {**(real.record() if real else {}), "resolution": resolution, "clips": real_rec},
        "fake": {**(fakes.record() if fakes else {}), "count": counts.get("fake")},
        "world_size": world,
        "code": code_version(),
    }


def _lpips(cfg: EvalConfig, device: torch.device) -> Any:
    from vqvdm_scale.losses.perceptual import LPIPSWeightsNotFound, PerceptualLoss

    try:
        return PerceptualLoss(cfg.protocol.frames, cfg.lpips_weights, cfg.random_detectors).to(device)
    except LPIPSWeightsNotFound as e:
        raise UserError(f"recon LPIPS: {e}") from e


def _open_sources(cfg: EvalConfig, device: torch.device) -> tuple[Any, Optional[Fakes]]:
    """The tokenizer (if one is given) and the generated videos: files, or a model to sample from."""
    from vqvdm_scale.formats.tokenizer_export import load_tokenizer
    from vqvdm_scale.sample.api import compile_for_sampling
    from vqvdm_scale.sample.main import load_model_and_tokenizer

    if cfg.run:
        ema = _ema_path(cfg)
        sm, tokenizer = load_model_and_tokenizer(ema, str(cfg.tokenizer), device)
        if cfg.sample.compile:
            sm.net = compile_for_sampling(sm.net, tokenizer)  # type: ignore[assignment]
        return tokenizer, ModelFakes(sm, tokenizer, cfg.sample, device, str(ema), cfg.progress)
    tokenizer = None
    if cfg.tokenizer:
        try:
            tokenizer = load_tokenizer(cfg.tokenizer, device)[0]
        except (FileNotFoundError, ValueError) as e:
            raise UserError(f"--tokenizer: {e}") from e
    return tokenizer, DirFakes(cfg.fake) if cfg.fake else None


def _check_inputs(cfg: EvalConfig) -> None:
    from vqvdm_scale.formats.frames import find_videos

    if cfg.fake:
        find_videos(cfg.fake)
    if cfg.run:
        _ema_path(cfg)
    if cfg.real:
        open_real(cfg.real, cfg.split)


def _ema_path(cfg: EvalConfig) -> str | Path:
    from vqvdm_scale.formats.remote_files import is_url
    from vqvdm_scale.sample.main import SampleRunConfig

    p, tok = Path(str(cfg.run)), str(cfg.tokenizer)
    by_file = is_url(str(cfg.run)) or p.is_file() or p.name.startswith("step_")
    where = (
        SampleRunConfig(checkpoint=cfg.run, tokenizer=tok)
        if by_file
        else SampleRunConfig(run=cfg.run, tokenizer=tok)
    )
    return where.ema_path()


def main(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate, write ``cfg.output`` (and a sweep's files) on rank 0, and return the results."""
    t0 = time.perf_counter()
    apply_object_store(cfg.object_store)
    _check_inputs(cfg)  # a wrong path or an unreachable store is said before any process group starts
    init_distributed()
    device = pick_device(cfg.device)
    if get_world_size() > 1:
        print(describe_rank(device), flush=True)
    i3d, c3d = build_detector(cfg, "i3d", device), build_detector(cfg, "c3d", device)
    real = open_real(cfg.real, cfg.split) if cfg.real else None
    tokenizer, fakes = _open_sources(cfg, device)
    resolution = cfg.protocol.resolution or (fakes.resolution if fakes else None)
    assert resolution is not None  # EvalConfig asks for protocol.resolution when nothing is generated
    out = Path(cfg.output)
    key, values = parse_sweep(cfg.sweep)
    if not values:
        res = evaluate(cfg, fakes, i3d, c3d, real, resolution, device, tokenizer)
        res["config"] = redact(to_dict(cfg))
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        if get_rank() == 0:
            write_json(out, res)
        print0(
            f"evaluate: {_summary(res['metrics'])} -> {out} ({res['wall_s']} s on {get_world_size()} rank(s))"
        )
        return res
    assert isinstance(fakes, ModelFakes)
    rows = []
    for w in values:
        res = evaluate(cfg, fakes.with_guidance(w), i3d, c3d, real, resolution, device, tokenizer)
        res["config"] = redact(to_dict(cfg))
        path = out.with_name(f"{out.stem}_guidance{w:g}.json")
        if get_rank() == 0:
            write_json(path, res)
        print0(f"evaluate: guidance {w:g}: {_summary(res['metrics'])} -> {path}")
        rows.append((w, res["metrics"]))
    names = [m for m in cfg.metrics if m in ("fvd", "kvd", "is", "fvd128")]
    table = sweep_table(rows, names)
    if get_rank() == 0:
        out.with_name(f"{out.stem}_sweep.md").write_text(table)
        if names:
            sweep_plot(rows, names[0], out.with_name(f"{out.stem}_sweep.png"))
    print0(table)
    return {"sweep": [{"guidance": w, "metrics": m} for w, m in rows]}


def _summary(metrics: dict[str, Any]) -> str:
    parts = []
    for k, v in metrics.items():
        if isinstance(v, float):
            parts.append(f"{k} {v:.4g}")
        elif isinstance(v, dict) and "mean" in v:
            parts.append(f"{k} {v['mean']:.4g} +- {v['std']:.3g}")
        elif isinstance(v, dict) and "psnr" in v:
            parts.append(f"psnr {v['psnr']:.2f} ssim {v['ssim']:.3f} rfvd {v['rfvd']:.4g}")
        elif isinstance(v, list):
            curve = " ".join(f"{s['fvd']:.3g}" for s in v)
            parts.append(f"drift fvd {curve}")
    return ", ".join(parts)
