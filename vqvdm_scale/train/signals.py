"""Stop cleanly on a signal: finish the current optimiser step, checkpoint, and leave (resume = re-run).

SIGTERM (Slurm's preemption and time limit), SIGUSR1 and SIGUSR2 (``sbatch --signal``; submitit's
preemption and time-limit signal is USR2) and the first Ctrl-C only set a flag: the handler does no I/O
and no collective (saving inside a handler hangs or saves mid-backward). The loop checks the flag once per
step on every rank, agreed across ranks with one small all-reduce since a signal may reach only some of
them, and then every rank saves (a DeepSpeed save needs all of them). A second Ctrl-C interrupts at once.

:func:`last_stop` tells the caller of a finished ``fit()`` which signal stopped it, so a submitit task
can hand a preemption on to submitit's requeue.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any, Optional

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
_last: dict[str, Optional[str]] = {"signal": None}


def last_stop() -> Optional[str]:
    """The signal (e.g. ``"SIGUSR2"``) that stopped the last training loop early, or None."""
    return _last["signal"]


class StopOnSignal:
    """Context manager: while inside, the signals above ask the loop to stop at the next step boundary."""

    def __init__(self, interrupt: bool = True) -> None:
        """``interrupt=False`` leaves Ctrl-C alone (run.save_on_interrupt=false: it stops at once, unsaved)."""
        self.received: Optional[str] = None
        self.signum = 0  # the signal's number, to agree on across ranks (0 = none)
        self._previous: dict[int, Any] = {}
        self._signals = SIGNALS if interrupt else tuple(s for s in SIGNALS if s != signal.SIGINT)

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait for the step
        self.received = signal.Signals(signum).name
        self.signum = signum

    def agree(self, signum: int) -> None:
        """Record the signal the ranks agreed on (it may have reached another rank only)."""
        if signum and not self.signum:
            self.signum, self.received = signum, signal.Signals(signum).name

    def __enter__(self) -> StopOnSignal:
        _last["signal"] = None
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in self._signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        _last["signal"] = self.received
