"""Where DeepSpeed's JIT-built ops live, and a line when the first start has to build them.

DeepSpeed compiles small C++/CUDA ops on first use into ``TORCH_EXTENSIONS_DIR`` (torch's default is
``~/.cache/torch_extensions/<python>_<cuda>``), which takes 30 s to 4 min on a CPU and is silent. When the
variable is unset it defaults here to ``~/.cache/vqvdm_scale/torch_extensions/<torch>-<python>-<arch>``:
per user (no permission clashes on a shared filesystem), and per torch version and architecture (nodes
of different images never load each other's builds). torch serialises concurrent builds with a lock
file inside the op's folder, so jobs sharing the folder do not corrupt it.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import torch


def default_extensions_dir() -> Path:
    """The per-user, per-torch, per-architecture build cache."""
    cuda = f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu"
    tag = f"torch{torch.__version__.split('+')[0]}-py{sys.version_info[0]}{sys.version_info[1]}-{platform.machine()}-{cuda}"
    return Path.home() / ".cache" / "vqvdm_scale" / "torch_extensions" / tag


def prepare_extensions(announce: bool) -> Path:
    """Set TORCH_EXTENSIONS_DIR if unset; say so when nothing is built there yet (``announce`` on one rank)."""
    if not os.environ.get("TORCH_EXTENSIONS_DIR"):
        os.environ["TORCH_EXTENSIONS_DIR"] = str(default_extensions_dir())
    root = Path(os.environ["TORCH_EXTENSIONS_DIR"])
    root.mkdir(parents=True, exist_ok=True)
    if announce and not any(root.rglob("*.so")):
        print(
            f"first start with this torch: DeepSpeed builds its ops into {root} (usually 30 s to 4 min on a "
            "CPU, once; later runs load them)",
            flush=True,
        )
    return root
