"""Options of encode_latents (CLI: data_prep/encode_latents.py), checked when built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from vqvdm_scale.config.core import ConfigError
from vqvdm_scale.formats.object_store import ObjectStoreConfig

__all__ = ["EncodeConfig"]


@dataclass
class EncodeConfig:
    """Options of encode_latents (CLI: data_prep/encode_latents.py)."""

    tokenizer: str = ""  # exported tokenizer: <run.dir>/tokenizer.safetensors of launchers/train_vqgan.py
    input: str = ""  # video shards: directory with manifest.json, brace pattern or list
    output: str = ""  # latent shard folder: local path or fsspec URL
    windows: str = "all"  # "all" non-overlapping windows per video, or N evenly spaced windows
    batch_size: int = 8  # clips per encoder call (part of the plan: it can change the last bits)
    workers: int = 0  # decode processes per rank; 0 or 1 = inline
    store: Literal["indices", "latents"] = "indices"
    frames: Optional[int] = None  # T of a clip; null = the frames the tokenizer was trained on
    stride: int = 1  # take every k-th source frame; the sample's fps is source fps / k
    strides: list[int] = field(default_factory=list)  # several strides (e.g. [1, 2, 4]); empty = [stride]
    resolution: Optional[int] = None  # square crop after resizing the short side; null = the tokenizer's
    device: str = "auto"  # auto = this rank's GPU if there is one, else CPU
    threads: int = 1  # torch CPU threads; 0 = leave torch's default
    progress: bool = True
    shards: str = ""  # "start:stop": encode only these input shard indices (one task of a job array)
    context: Literal["none", "previous"] = "none"  # "previous": each window also holds its predecessor (PVDM)
    object_store: ObjectStoreConfig = field(default_factory=ObjectStoreConfig)  # s3:// / gs:// options

    def __post_init__(self) -> None:
        for name in ("batch_size", "frames", "stride", "resolution"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.workers < 0 or self.threads < 0:
            raise ConfigError(f"workers and threads must be >= 0, got {self.workers} and {self.threads}")
        if self.store not in ("indices", "latents"):
            raise ConfigError(f"store: 'indices' or 'latents', got {self.store!r}")
        self.windows = str(self.windows).strip()
        if self.windows != "all" and not (self.windows.isdigit() and int(self.windows) >= 1):
            raise ConfigError(f"windows: 'all' or a number >= 1 of windows per video, got {self.windows!r}")
        _ = self.shard_range  # validates it
        if any(s < 1 for s in self.strides) or len(set(self.strides)) != len(self.strides):
            raise ConfigError(f"strides: distinct frame strides >= 1, got {self.strides}")
        if self.context not in ("none", "previous"):
            raise ConfigError(f"context: 'none' or 'previous', got {self.context!r}")
        if self.context == "previous" and self.windows != "all":
            raise ConfigError(
                "context=previous pairs each window with the one before it, which needs windows=all "
                f"(back-to-back windows), got windows={self.windows}"
            )

    @property
    def all_strides(self) -> list[int]:
        """The frame strides windows are cut at: ``strides``, or ``[stride]``; each sample's fps follows."""
        return list(self.strides) or [self.stride]

    @property
    def shard_range(self) -> Optional[tuple[int, int]]:
        """(start, stop) of the input shards this process encodes, or None for all of them."""
        if not self.shards:
            return None
        start, sep, stop = str(self.shards).partition(":")
        if not (sep and start.isdigit() and stop.isdigit() and int(start) < int(stop)):
            raise ConfigError(f"shards: 'start:stop' input shard indices (e.g. 0:4), got {self.shards!r}")
        return int(start), int(stop)

    @property
    def num_windows(self) -> Optional[int]:
        """Windows per video, or None for all non-overlapping windows."""
        return None if self.windows == "all" else int(self.windows)
