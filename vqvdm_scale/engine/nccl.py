"""NCCL's failure settings, from the ``run:`` config, exported before the process group starts.

* ``TORCH_NCCL_ASYNC_ERROR_HANDLING``: what a rank does when a collective fails or times out (torch's
  codes: 0 nothing, 1 tear the process down, 2 clean up only, 3 tear down without cleanup).
* ``TORCH_FR_BUFFER_SIZE``: the flight recorder (the last N collectives of each rank).
* ``TORCH_NCCL_DUMP_ON_TIMEOUT`` + ``TORCH_FR_DUMP_TEMP_FILE``: on a timeout, each rank writes its
  recorder to ``<dump_dir>/rank_<r>``, which shows which collective which rank was stuck in.

torch 2.14 still reads the older names ``TORCH_NCCL_TRACE_BUFFER_SIZE`` and
``TORCH_NCCL_DEBUG_INFO_TEMP_FILE`` but warns that they are deprecated, so only the new names are
exported, and a user's setting under either name wins. The timeout itself is ``run.start_timeout_s`` /
``run.step_timeout_s`` (see engine/env.py). On CPU (gloo) the settings are exported but unused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

# The variable each setting is exported as, and the older names torch also reads for it.
ALIASES: dict[str, tuple[str, ...]] = {
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": (),
    "TORCH_FR_BUFFER_SIZE": ("TORCH_NCCL_TRACE_BUFFER_SIZE",),
    "TORCH_NCCL_DUMP_ON_TIMEOUT": (),
    "TORCH_FR_DUMP_TEMP_FILE": ("TORCH_NCCL_DEBUG_INFO_TEMP_FILE",),
}


def nccl_env(
    async_error_handling: Optional[int], trace_buffer: int, dump_dir: Optional[Path]
) -> dict[str, str]:
    """The variables for these settings (empty values are left out)."""
    env: dict[str, str] = {}
    if async_error_handling is not None:
        env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = str(async_error_handling)
    if trace_buffer > 0:
        env["TORCH_FR_BUFFER_SIZE"] = str(trace_buffer)
        if dump_dir is not None:
            env.update(TORCH_NCCL_DUMP_ON_TIMEOUT="1", TORCH_FR_DUMP_TEMP_FILE=str(dump_dir / "rank_"))
    return env


def user_set(name: str) -> bool:
    """True when the user set ``name`` or one of its older names."""
    return any(n in os.environ for n in (name, *ALIASES.get(name, ())))


def export_nccl_env(
    async_error_handling: Optional[int], trace_buffer: int, dump_dir: Optional[Path]
) -> dict[str, str]:
    """Set the variables the user has not set; create the dump dir; return what was set."""
    env = {k: v for k, v in nccl_env(async_error_handling, trace_buffer, dump_dir).items() if not user_set(k)}
    if dump_dir is not None and "TORCH_FR_DUMP_TEMP_FILE" in env and torch.cuda.is_available():
        dump_dir.mkdir(parents=True, exist_ok=True)  # only NCCL (GPU) runs dump there
    os.environ.update(env)
    return env
