"""Progress of a long loop: a tqdm bar on a terminal, plain log lines everywhere else (every Slurm job).

A bar rewrites one line with ``\\r``, which a log file keeps as one ever-growing line; so when stdout or
stderr (where tqdm draws) is not a terminal, or the bar is turned off, progress is plain lines instead.
The training loop prints one per logging step (:class:`Progress`)::

    [ldm] step 120/400 (30%) | loss 0.8123 | 412.3 samples/s | data 3% | 0.212 s/step | ETA 59s

and the offline jobs (make_shards, encode_latents, sample) one every minute (:class:`JobProgress`)::

    [make_shards] 120/400 videos (30%) | 3.2 videos/s | ETA 1m 27s
"""

from __future__ import annotations

import sys
import time
from typing import Optional

from tqdm import tqdm


def is_terminal() -> bool:
    """True when stdout and stderr (a bar's stream) are both interactive terminals."""
    try:
        return sys.stdout.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def duration(seconds: float) -> str:
    """``59s``, ``12m 05s`` or ``3h 02m``."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


class Progress:
    """A bar (terminal and ``bar=True``) or plain lines, on the reporting process only (``enabled``)."""

    def __init__(self, name: str, total: int, initial: int, enabled: bool, bar: bool) -> None:
        self.name, self.total, self.enabled = name, total, enabled
        self.use_bar = enabled and bar and is_terminal()
        self._bar: Optional[tqdm] = None
        if self.use_bar:
            self._bar = tqdm(total=total, initial=initial, desc=name, dynamic_ncols=True)

    def step(self) -> None:
        """One more step done."""
        if self._bar is not None:
            self._bar.update(1)

    def report(
        self, step: int, loss: float, samples_per_s: float, data_pct: float, s_per_step: float
    ) -> None:
        """The figures of a logging step: the bar's postfix, or one plain line with an ETA."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(
                f"loss {loss:.4f} | {samples_per_s:.1f} samples/s | data {data_pct:.0f}%"
            )
            return
        eta = duration((self.total - step) * s_per_step)
        print(
            f"[{self.name}] step {step}/{self.total} ({100 * step / max(self.total, 1):.0f}%) | loss {loss:.4f} | "
            f"{samples_per_s:.1f} samples/s | data {data_pct:.0f}% | {s_per_step:.3f} s/step | ETA {eta}",
            flush=True,
        )

    def close(self) -> None:
        """End the bar (lines need no ending)."""
        if self._bar is not None:
            self._bar.close()


class Throughput:
    """Steps and samples of one invocation, for the stage's closing summary."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.steps = 0
        self.samples = 0

    def add(self, steps: int, samples: int) -> None:
        """Count steps and samples (all ranks)."""
        self.steps += steps
        self.samples += samples

    def summary(self) -> str:
        """``40 steps in 12s, 13.3 samples/s``."""
        wall = time.perf_counter() - self.t0
        return f"{self.steps} steps in {duration(wall)}, {self.samples / max(wall, 1e-9):.1f} samples/s"


class JobProgress:
    """Items done by an offline job: a tqdm bar on a terminal, else a plain line every ``every_s`` seconds.

    A drop-in for the ``update``/``close`` part of tqdm; ``enabled=False`` is silent.
    """

    def __init__(
        self,
        total: Optional[int],
        desc: str,
        enabled: bool = True,
        unit: str = "video",
        position: int = 0,
        every_s: float = 60.0,
    ) -> None:
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.enabled = enabled
        self.n = 0
        self._bar: Optional[tqdm] = None
        if enabled and is_terminal():
            self._bar = tqdm(total=total, unit=unit, desc=desc, position=position, leave=True)
        self._t0 = self._last = time.perf_counter()
        self._n0 = 0  # items already done when counting started (a resumed job's finished shards)

    def update(self, n: int = 1) -> None:
        """``n`` more items done."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.perf_counter() - self._last >= self.every_s:
            self._last = time.perf_counter()
            print(self.line(), flush=True)

    def skip(self, n: int) -> None:
        """``n`` items found done already (counted, but not in the rate; no line of their own)."""
        self.n += n
        self._n0 += n
        if self._bar is not None:
            self._bar.update(n)

    def line(self) -> str:
        """``[desc] 120/400 videos (30%) | 3.2 videos/s | ETA 1m 27s`` (no total: count and rate only)."""
        rate = (self.n - self._n0) / max(time.perf_counter() - self._t0, 1e-9)
        if self.total is None:
            return f"[{self.desc}] {self.n} {self.unit}s | {rate:.1f} {self.unit}s/s"
        eta = duration((self.total - self.n) / rate) if rate > 0 else "?"
        return (
            f"[{self.desc}] {self.n}/{self.total} {self.unit}s ({100 * self.n / max(self.total, 1):.0f}%) | "
            f"{rate:.1f} {self.unit}s/s | ETA {eta}"
        )

    def close(self) -> None:
        """End the bar (the job's own summary line follows)."""
        if self._bar is not None:
            self._bar.close()
