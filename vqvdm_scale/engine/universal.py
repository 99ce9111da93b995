"""Resume on another world size: DeepSpeed's universal checkpoint, made on demand from a ZeRO checkpoint.

A ZeRO-1/2/3 checkpoint holds one optimizer partition per data-parallel rank, so it only loads on the
world size that wrote it. When the world size differs, rank 0 converts the engine's folder once with
DeepSpeed's own ``ds_to_universal`` (``--inject_missing_state``, which ZeRO-1/2 checkpoints need) into a
``<tag>_universal`` folder beside it, and every rank loads that with ``load_universal``. Nothing here
writes a format of its own.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from vqvdm_scale.config import UserError
from vqvdm_scale.engine.safe_load import allowed_types, safe_env

UNIVERSAL_SUFFIX = "_universal"


def saved_world_size(folder: Path) -> int | None:
    """Data-parallel ranks that wrote a ZeRO checkpoint folder (its optimizer partitions), or None (no ZeRO)."""
    parts = {p.name.split("_mp_rank")[0] for p in folder.glob("*zero_pp_rank_*_optim_states.pt")}
    return len(parts) or None


def saved_zero3(folder: Path) -> bool:
    """True when a ZeRO checkpoint folder was written under ZeRO-3 (one model-states file per rank)."""
    return any(folder.glob("*zero_pp_rank_*_model_states.pt"))


def convert_command(folder: Path) -> list[str]:
    """The conversion a user can also run by hand."""
    return [
        sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
        "--input_folder", str(folder), "--output_folder", str(folder) + UNIVERSAL_SUFFIX, "--inject_missing_state",
    ]  # fmt: skip


def to_universal(folder: Path) -> Path:
    """``<folder>_universal``, converting ``folder`` first if that was not done before (call on one rank)."""
    out = Path(str(folder) + UNIVERSAL_SUFFIX)
    if (out / "zero").is_dir():
        return out
    tmp = Path(str(out) + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # DeepSpeed's converter, run by this module's __main__ so that its loads are weights_only too
    cmd = [sys.executable, "-m", "vqvdm_scale.engine.universal", *convert_command(folder)[3:]]
    cmd[cmd.index("--output_folder") + 1] = str(tmp)
    print(f"converting {folder} to a universal checkpoint for a new world size ...", flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, env=safe_env())
    if done.returncode != 0 or not (tmp / "zero").is_dir():
        tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-1:])
        raise UserError(
            f"{folder} was written by another number of ranks and DeepSpeed could not convert it ({tail}); "
            f"resume on the original number of ranks, or convert it by hand: {' '.join(convert_command(folder))}"
        )
    # DeepSpeed also points a 'latest_universal' file beside the folder at it (at our temporary name);
    # nothing reads it, since every load names its tag
    (folder.parent / "latest_universal").unlink(missing_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


if __name__ == "__main__":  # ds_to_universal with every torch.load weights_only and the allowlist
    import torch
    from deepspeed.checkpoint import ds_to_universal

    torch.serialization.add_safe_globals(allowed_types())
    ds_to_universal.main(ds_to_universal.parse_arguments())
