"""Shared pieces of the model benchmarks: warm-up + median timing, FLOPs on the meta device, tables, machine line.

Timing rule (:func:`time_call`): one warm-up call, then the median of ``repeats`` timed calls. A call that
takes longer than ``long_call_s`` (paper-scale models on a 2-core CPU run for minutes) has one-time costs
(kernel selection, first allocations) well under 1 % of its time, so a warm-up that slow is kept as the
first sample instead of being thrown away; such timings are flagged with ``*`` in the tables. An optional
``budget_s`` stops repeating once another call would not fit, always after at least one sample.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from vqvdm_scale.monitor.meters import count_flops

__all__ = [
    "Timing",
    "add_common_args",
    "config_names",
    "count_flops_meta",
    "fmt",
    "format_table",
    "machine_info",
    "machine_line",
    "peak_rss_gib",
    "rss_gib",
    "run_worker",
    "set_threads",
    "time_call",
    "worker_result",
]

# Marker line a worker subprocess prints before its JSON result (everything else it prints is passed on).
_RESULT_TAG = "@@BENCH_RESULT@@ "
_DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")


@dataclass
class Timing:
    """Wall-clock samples of one measured call (seconds) and whether the warm-up was kept as a sample."""

    samples: list[float] = field(default_factory=list)
    warmup_counted: bool = False

    @property
    def median(self) -> float:
        """Median seconds per call."""
        return statistics.median(self.samples)

    @property
    def n(self) -> int:
        """Number of timed samples."""
        return len(self.samples)

    def label(self) -> str:
        """``n=3`` or ``n=1*`` (``*``: the warm-up call was kept as a sample because it was slow)."""
        return f"n={self.n}{'*' if self.warmup_counted else ''}"

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for the returned results."""
        return {
            "median_s": self.median,
            "samples_s": list(self.samples),
            "warmup_counted": self.warmup_counted,
        }


def time_call(
    fn: Callable[[], Any],
    repeats: int,
    warmup: int = 1,
    long_call_s: float = 30.0,
    budget_s: float | None = None,
) -> Timing:
    """Time ``fn``: ``warmup`` untimed calls, then up to ``repeats`` timed ones (see the module docstring)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    timing = Timing()
    spent = 0.0
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        spent += dt
        if dt >= long_call_s:
            timing.samples.append(dt)
            timing.warmup_counted = True
            break
    while timing.n < repeats:
        if budget_s is not None and timing.n > 0 and spent + timing.median > budget_s:
            break
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        spent += dt
        timing.samples.append(dt)
    return timing


def add_common_args(parser: argparse.ArgumentParser, config: str, what: str = "measurement") -> None:
    """The options every model benchmark takes: stage configs, overrides, repeats, warm-up, budget, threads."""
    parser.add_argument(
        "--config",
        default=config,
        help=f"comma list of stage configs, paths or shipped names (default {config}: paper scale)",
    )
    parser.add_argument("overrides", nargs="*", help="a.b=c overrides applied to every config")
    parser.add_argument("--repeats", type=int, default=3, help=f"timed calls per {what} (median)")
    parser.add_argument("--warmup", type=int, default=1, help=f"untimed warm-up calls per {what}")
    parser.add_argument(
        "--budget-s", type=float, default=240.0, help=f"stop repeating a {what} past this many seconds"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")


def config_names(arg: str) -> list[str]:
    """The config names of a ``--config`` comma list."""
    return [c.strip() for c in arg.split(",") if c.strip()]


def count_flops_meta(build: Callable[[], Callable[[], Any]]) -> int:
    """FLOPs of the call that ``build()`` returns, with modules and tensors created on the meta device.

    ``build`` runs under ``torch.device("meta")`` and returns the call to count. On the meta device no
    arithmetic runs (paper-scale counts are instant) and ``F.scaled_dot_product_attention`` takes its math
    path, whose matmuls FlopCounterMode counts; on CPU tensors it would take the fused CPU flash kernel,
    which torch's flop registry does not know (attention FLOPs would silently count as 0).
    """
    with torch.device("meta"):
        call = build()
    return count_flops(call)


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads when ``threads`` is given; return the count in use."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU model, logical CPUs, torch version, intra-op threads and 1-minute load average."""
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = float("nan")
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count() or 0,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_avg_1min": load1,
        "device": "cpu",
    }


def machine_line(info: dict[str, Any] | None = None) -> str:
    """One printable line describing the machine the numbers come from."""
    m = machine_info() if info is None else info
    return (
        f"machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch {m['torch']}, "
        f"{m['threads']} intra-op threads, load avg {m['load_avg_1min']:.1f} (1 min), CPU"
    )


def fmt(value: float, digits: int = 3) -> str:
    """A number with ``digits`` significant digits, without switching to exponent form below 1e6."""
    if value != value:  # NaN
        return "nan"
    if value == 0:
        return "0"
    mag = abs(value)
    if mag >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    decimals = digits - 1 - math.floor(math.log10(mag))
    return f"{value:.{max(decimals, 0)}f}"


def format_table(columns: Sequence[str], rows: Sequence[dict[str, str]]) -> str:
    """A plain-text table: header row, first column left-aligned (names), the rest right-aligned (numbers)."""
    widths = [max(len(c), *(len(r.get(c, "")) for r in rows)) if rows else len(c) for c in columns]

    def line(cells: Sequence[str]) -> str:
        return " | ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "-+-".join("-" * w for w in widths)
    body = [line([r.get(c, "") for c in columns]) for r in rows]
    return "\n".join([line(columns), rule, *body])


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_gib() -> float:
    """Current resident memory of this process (Linux VmRSS; elsewhere the max RSS so far)."""
    kib = _proc_status_kib("VmRSS")
    if kib is None:
        return peak_rss_gib()
    return kib / 2**20


def peak_rss_gib() -> float:
    """Peak resident memory of this process: Linux VmHWM (reset by exec), else getrusage's max RSS."""
    kib = _proc_status_kib("VmHWM")
    if kib is not None:
        return kib / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


def worker_result(result: dict[str, Any]) -> None:
    """Print a worker subprocess's result where :func:`run_worker` finds it."""
    print(_RESULT_TAG + json.dumps(result), flush=True)


def run_worker(module: str, spec: dict[str, Any], extra_args: Sequence[str] = ()) -> dict[str, Any]:
    """Run ``python -m module --worker JSON *extra_args`` in a fresh process; return the dict it reports.

    A fresh process per configuration keeps peak-memory readings (VmHWM) from mixing between configs.
    """
    cmd = [sys.executable, "-m", module, "--worker", json.dumps(spec), *extra_args]
    # The worker starts its own one-rank process group: it must not reuse this process's rendezvous port.
    env = {k: v for k, v in os.environ.items() if k not in _DIST_ENV}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(
            f"benchmark worker {' '.join(cmd[:3])} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    for line in proc.stdout.splitlines():
        if line.startswith(_RESULT_TAG):
            return dict(json.loads(line[len(_RESULT_TAG) :]))
    raise RuntimeError(f"benchmark worker printed no result; its output:\n{proc.stdout[-4000:]}")
