"""Where DeepSpeed's JIT-built ops live, and a line when a start has to build them first.

DeepSpeed compiles small C++ ops on first use with ``torch.utils.cpp_extension.load`` into
``$TORCH_EXTENSIONS_DIR/<op>/<op>.so`` (torch's default root is ``~/.cache/torch_extensions/<python>_<cuda>``).
On a CPU that takes 30 s to 4 min and is silent. When the variable is unset it defaults here to
``~/.cache/vqvdm_scale/torch_extensions/torch<v>-py<v>-<arch>-<cpu>-<cuda>``:

* per user: no permission clashes between users of a shared filesystem;
* per torch, python and CUDA version: an image never loads another image's build;
* per CPU feature set (``<cpu>``, a hash of the kernel's CPU flags): DeepSpeed's CPU ops are compiled
  with ``-march=native``, so a build from a newer node would crash an older one sharing the home.

Concurrent jobs with the same key are safe: torch holds a lock file in the op's folder while it builds,
and the others wait and then load the result.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from pathlib import Path

import torch

# The op builders DeepSpeed's start JIT-loads (deepspeed.comm.torch.build_shm_op, for CPU ranks); our
# optimiser is torch's AdamW, so no optimiser op is built.
STARTUP_BUILDERS = ("ShareMemCommBuilder",)


def cpu_tag() -> str:
    """A short hash of this CPU's feature flags (``/proc/cpuinfo``), or of the processor name elsewhere."""
    flags = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), flags)
    except OSError:
        pass
    return hashlib.sha1(" ".join(sorted(flags.split(":")[-1].split())).encode()).hexdigest()[:8]


def default_extensions_dir() -> Path:
    """The per-user build cache for this torch, python, CPU and CUDA."""
    cuda = f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu"
    py = f"py{sys.version_info[0]}{sys.version_info[1]}"
    # the environment's prefix too: a build's command line holds DeepSpeed's source path, so two venvs
    # sharing one folder would each find the other's build stale and rebuild it at every start
    env = hashlib.sha256(sys.prefix.encode()).hexdigest()[:8]
    tag = f"torch{torch.__version__.split('+')[0]}-{py}-{platform.machine()}-{cpu_tag()}-{cuda}-env{env}"
    return Path.home() / ".cache" / "vqvdm_scale" / "torch_extensions" / tag


def is_built(root: Path, name: str) -> bool:
    """True when torch's JIT build of op ``name`` is in ``root`` (the file torch imports)."""
    from torch.utils.cpp_extension import LIB_EXT  # imported late: it warns on import without CUDA

    return (root / name / f"{name}{LIB_EXT}").is_file()


def pending_ops(root: Path) -> list[str]:
    """The ops DeepSpeed's start will compile: usable here, not shipped prebuilt, not yet built in ``root``."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import installed_ops

    names = []
    for builder_name in STARTUP_BUILDERS:
        builder = get_accelerator().create_op_builder(builder_name)
        if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
            continue
        if not installed_ops.get(builder.NAME, False) and not is_built(root, builder.NAME):
            names.append(builder.NAME)
    return names


def prepare_extensions(announce: bool) -> Path:
    """Set TORCH_EXTENSIONS_DIR if unset; say so when ops must be built first (``announce`` on one rank)."""
    if not os.environ.get("TORCH_EXTENSIONS_DIR"):
        os.environ["TORCH_EXTENSIONS_DIR"] = str(default_extensions_dir())
    root = Path(os.environ["TORCH_EXTENSIONS_DIR"])
    root.mkdir(parents=True, exist_ok=True)
    pending = pending_ops(root) if announce else []
    if pending:
        print(
            f"DeepSpeed compiles {', '.join(pending)} into {root} first (once per torch version and node "
            "type; usually 30 s to 4 min on a CPU, while the other ranks wait; later runs load it)",
            flush=True,
        )
    return root
