"""Metric logging behind a small interface; TensorBoard on rank 0, nothing elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch


class Logger(Protocol):
    """What trainers log to."""

    def scalars(self, values: dict[str, float], step: int) -> None: ...
    def video(self, tag: str, video: torch.Tensor, step: int, fps: float = 8.0) -> None: ...
    def image(self, tag: str, image: torch.Tensor, step: int) -> None: ...
    def text(self, tag: str, text: str, step: int) -> None: ...
    def close(self) -> None: ...


class NullLogger:
    """Logger for ranks other than 0."""

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Drop scalars."""

    def video(self, tag: str, video: torch.Tensor, step: int, fps: float = 8.0) -> None:
        """Drop a video."""

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """Drop an image."""

    def text(self, tag: str, text: str, step: int) -> None:
        """Drop text."""

    def close(self) -> None:
        """Nothing to close."""


class TensorBoardLogger:
    """TensorBoard event files under ``log_dir``.

    ``purge_step``: a resumed run starts its new event file there, and TensorBoard drops what earlier files
    logged from that step on (the steps a killed run logged after its last checkpoint, now redone).
    """

    def __init__(self, log_dir: str | Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        """One scalar per key."""
        for k, v in values.items():
            self.writer.add_scalar(k, float(v), step)

    def video(self, tag: str, video: torch.Tensor, step: int, fps: float = 8.0) -> None:
        """Videos ``[N, C, T, H, W]`` in [-1, 1], tiled side by side into one animated GIF."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        from vqvdm_scale.monitor.media import gif_bytes, tile_videos

        frames = tile_videos(video)  # T,H,W,3 uint8
        summary = Summary(
            value=[
                Summary.Value(
                    tag=tag,
                    image=Summary.Image(
                        height=frames.shape[1],
                        width=frames.shape[2],
                        colorspace=3,
                        encoded_image_string=gif_bytes(frames, fps),
                    ),
                )
            ]
        )
        self.writer._get_file_writer().add_summary(summary, step)

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """An image ``[C, H, W]`` in [-1, 1]."""
        self.writer.add_image(tag, ((image.detach().float().clamp(-1, 1) + 1) / 2).cpu(), step)

    def text(self, tag: str, text: str, step: int) -> None:
        """A text note (the resolved config, for instance)."""
        self.writer.add_text(tag, text, step)

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.flush()
        self.writer.close()


def make_logger(log_dir: str | Path, enabled: bool, purge_step: int | None = None) -> Logger:
    """TensorBoard on rank 0 (``enabled``), a no-op logger elsewhere."""
    return TensorBoardLogger(log_dir, purge_step) if enabled else NullLogger()
