"""Evaluation cost: detector time per clip, the statistics, and what the StyleGAN-V protocol costs in all.

``python -m benchmarks.evaluate [--resolution 128] [--batch 8] [--features 2048] [--repeats N] [--threads N]``

Times the calls ``launchers/evaluate.py`` makes: the I3D (``rescale``/``resize`` to 224, 400 logits) and the
C3D (112 x 112, 101 probabilities) of :mod:`vqvdm_scale.models.detectors` on uint8 16-frame clips, through
:class:`vqvdm_scale.metrics.detectors.Detector`, and FVD and KVD (:mod:`vqvdm_scale.metrics.stats`) on
``--features`` x 400 feature matrices. The networks have random weights (the same compute as the published
ones). From those it estimates the detector time of one ``fvd2048_16f`` + ``isv2048_ucf`` evaluation
(2,048 real + 2,048 generated clips through the I3D, 2,048 through the C3D; sampling not included).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from benchmarks import common
from vqvdm_scale.metrics.detectors import Detector
from vqvdm_scale.metrics.stats import frechet_distance, gaussian_stats, polynomial_mmd
from vqvdm_scale.models.detectors import C3D, I3D


def run(resolution: int, batch: int, features: int, repeats: int, budget_s: float) -> dict[str, Any]:
    """Median seconds per call of each piece, and the protocol estimate."""
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    clips = torch.randint(0, 256, (batch, 3, 16, resolution, resolution), dtype=torch.uint8)
    i3d = Detector("i3d", I3D().eval(), "", "random", "random-init", cpu)
    c3d = Detector("c3d", C3D().eval(), "", "random", "random-init", cpu)
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(features, 400)), rng.normal(0.1, 1.0, size=(features, 400))
    t_i3d = common.time_call(lambda: i3d(clips), repeats, budget_s=budget_s)
    t_c3d = common.time_call(lambda: c3d(clips), repeats, budget_s=budget_s)
    t_fvd = common.time_call(lambda: frechet_distance(*gaussian_stats(real), *gaussian_stats(fake)), repeats)
    t_kvd = common.time_call(lambda: polynomial_mmd(real, fake), repeats)
    per_i3d, per_c3d = t_i3d.median / batch, t_c3d.median / batch
    return {
        "resolution": resolution,
        "batch": batch,
        "features": features,
        "i3d_s_per_clip": per_i3d,
        "c3d_s_per_clip": per_c3d,
        "fvd_s": t_fvd.median,
        "kvd_s": t_kvd.median,
        "protocol_detector_s": 4096 * per_i3d + 2048 * per_c3d,
        "labels": {"i3d": t_i3d.label(), "c3d": t_c3d.label(), "fvd": t_fvd.label(), "kvd": t_kvd.label()},
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolution", type=int, default=128, help="clip size before the detectors' resize")
    parser.add_argument("--batch", type=int, default=8, help="clips per detector call")
    parser.add_argument("--features", type=int, default=2048, help="rows of the feature matrices for FVD/KVD")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=120.0, help="stop repeating a detector after this")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    common.set_threads(args.threads)
    print(common.machine_line(), flush=True)
    r = run(args.resolution, args.batch, args.features, args.repeats, args.budget_s)
    lab = r["labels"]
    rows = [
        {
            "piece": f"I3D, 16x{args.resolution}² clip -> 224",
            "seconds": common.fmt(r["i3d_s_per_clip"]),
            "per": f"clip ({lab['i3d']})",
        },
        {
            "piece": f"C3D, 16x{args.resolution}² clip -> 112",
            "seconds": common.fmt(r["c3d_s_per_clip"]),
            "per": f"clip ({lab['c3d']})",
        },
        {
            "piece": f"FVD, {args.features} x 400 each",
            "seconds": common.fmt(r["fvd_s"]),
            "per": f"call ({lab['fvd']})",
        },
        {
            "piece": f"KVD, {args.features} x 400 each",
            "seconds": common.fmt(r["kvd_s"]),
            "per": f"call ({lab['kvd']})",
        },
        {
            "piece": "fvd2048_16f + isv2048 detectors",
            "seconds": common.fmt(r["protocol_detector_s"]),
            "per": "evaluation (estimate)",
        },
    ]
    print(common.format_table(["piece", "seconds", "per"], rows))
    return r


if __name__ == "__main__":
    main()
