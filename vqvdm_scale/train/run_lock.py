"""One run directory, one job: a lock file that names its holder (host, pid, Slurm job id).

Rank 0 creates ``<run.dir>/LOCK`` atomically (``O_EXCL``) and a daemon thread touches it every
``heartbeat_s`` seconds. A second job on the same directory refuses with a message naming the holder.
A lock is taken over, with a warning, when its holder is gone: its pid is dead on this host, or its
heartbeat is older than ``stale_s`` (a holder on another host), or it belongs to this very Slurm job
(a requeued job finds the lock its previous run could not remove).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from vqvdm_scale.config import UserError
from vqvdm_scale.engine.cluster import slurm_job_id

LOCK_NAME = "LOCK"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class RunLock:
    """The run directory's lock; :meth:`acquire` it on one process per job, :meth:`release` at the end."""

    def __init__(self, run_dir: str | Path, heartbeat_s: float = 30.0, stale_s: float = 120.0) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.heartbeat_s = heartbeat_s
        self.stale_s = stale_s
        self.me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slurm_job_id": slurm_job_id(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        self._stop = threading.Event()

    def holder(self) -> Optional[dict[str, Any]]:
        """What the lock file says, or None when there is none (an unreadable file counts as stale)."""
        try:
            return dict(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _stale_reason(self, held: dict[str, Any]) -> Optional[str]:
        """Why the holder is gone, or None while it may still be running."""
        if not held:
            return "the lock file is unreadable"
        if held.get("slurm_job_id") and held.get("slurm_job_id") == self.me["slurm_job_id"]:
            return f"it is this Slurm job's own lock (job {held['slurm_job_id']} was requeued)"
        if held.get("host") == self.me["host"] and held.get("pid") == self.me["pid"]:
            return "this process took it before (a trainer built twice in one process)"
        if held.get("host") == self.me["host"] and not _alive(int(held.get("pid", 0))):
            return f"pid {held.get('pid')} no longer runs on {held.get('host')}"
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return "it was just released"
        if age > self.stale_s:
            return f"its heartbeat stopped {age:.0f}s ago"
        return None

    def acquire(self) -> None:
        """Take the lock, taking over a stale one with a warning; UserError when a live job holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = self.holder()
                if held is None:
                    continue
                reason = self._stale_reason(held)
                if reason is None:
                    job = f", slurm job {held['slurm_job_id']}" if held.get("slurm_job_id") else ""
                    raise UserError(
                        f"run dir {self.path.parent} is in use by pid {held.get('pid')} on {held.get('host')}"
                        f"{job} since {held.get('since')}; wait for that job to end or use another run.dir "
                        f"(if it is surely gone, delete {self.path})"
                    ) from None
                sys.stderr.write(f"warning: taking over the lock {self.path}: {reason}\n")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.me, f)
            threading.Thread(target=self._beat, name="run-lock", daemon=True).start()
            return
        raise UserError(f"could not take the lock {self.path}: another process keeps replacing it")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        self._stop.set()
        held = self.holder()
        if held and held.get("pid") == self.me["pid"] and held.get("host") == self.me["host"]:
            self.path.unlink(missing_ok=True)
