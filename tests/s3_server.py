"""A real HTTP S3 endpoint on 127.0.0.1 for tests: moto's server in its own process (as s3fs's tests do).

Its own process, not moto's ``ThreadedMotoServer``, so a test can freeze it (SIGSTOP), kill it and
start it again on the same port. The store lives in the server's memory: a restart starts empty.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.helpers import free_port

# dummy credentials: moto accepts any; real ones from the environment must never reach it
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class MotoServer:
    """moto's S3 server as a child process on a fixed free port; start, freeze, kill, restart."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / "moto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until it answers."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **S3_ENV},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited at start: {self.log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=1).close()
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        raise RuntimeError(f"moto server did not answer on {self.url} in {timeout}s")

    def kill(self) -> None:
        """Kill the server at once (a dead store); its data is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def freeze(self) -> None:
        """SIGSTOP: the port stays open, nothing answers (a stalled store)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def env(self) -> dict[str, str]:
        """The variables that point boto at this server with dummy credentials."""
        return {**S3_ENV, "AWS_ENDPOINT_URL": self.url}
