"""Writing one latent shard: encode clip windows in fixed batches, store codes or latents, sum statistics."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from itertools import islice
from typing import Any, Optional

import numpy as np
import torch
import webdataset as wds

from vqvdm_scale.data.pipeline import ErrorCounter
from vqvdm_scale.formats.latent_shards import index_dtype
from vqvdm_scale.models.tokenizer.vqgan import VQTokenizer

__all__ = ["ErrorLog", "ShardEncoder", "chunks", "encode_clips"]


@torch.no_grad()
def encode_clips(model: VQTokenizer, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Code indices ``[B, t, h, w]`` int64 and dequantised latents ``codes[indices]`` ``[B, D, t, h, w]`` fp32."""
    device = next(model.parameters()).device
    out = model.quantize(model.encode(clips.to(device)))
    indices = out.indices
    return indices.cpu(), model.quantizer.lookup(indices).float().cpu()


class ErrorLog(ErrorCounter):
    """ErrorCounter that also keeps each message, for the sidecar's skip report."""

    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.messages: list[str] = []

    def __call__(self, exn: BaseException) -> bool:
        """Record ``exn`` and continue."""
        self.messages.append(f"{type(exn).__name__}: {exn}")
        return super().__call__(exn)


def chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while chunk := list(islice(items, size)):
        yield chunk


class ShardEncoder:
    """Writes one latent shard: windows are buffered and encoded in fixed batches in stream order."""

    def __init__(
        self, model: VQTokenizer, writer: wds.TarWriter, batch_size: int, store: str, previous: bool = False
    ) -> None:
        self.model, self.writer, self.batch_size, self.store = model, writer, batch_size, store
        # PVDM pairs: window w of a video also stores window w-1 as ``prev.npy`` (windows arrive in order)
        self.previous = previous
        self._last: Optional[tuple[str, int, bytes]] = None  # (source key, window, npy bytes)
        self.pairs = 0
        self.index_dtype = np.dtype(index_dtype(model.cfg.codebook_size))
        dim = model.cfg.latent_dim
        self.pending: list[tuple[str, torch.Tensor, dict[str, Any]]] = []
        self.count = 0
        self.positions = 0
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.sumsq = torch.zeros(dim, dtype=torch.float64)

    def add(self, key: str, clip: torch.Tensor, meta: dict[str, Any]) -> None:
        """Queue one window; encodes and writes when a batch is full."""
        self.pending.append((key, clip, meta))
        if len(self.pending) == self.batch_size:
            self.flush()

    def flush(self) -> None:
        """Encode and write the queued windows (one encoder call)."""
        if not self.pending:
            return
        indices, z = encode_clips(self.model, torch.stack([c for _, c, _ in self.pending]))
        if self.store == "latents":
            z = z.half()
        for i, (key, _, meta) in enumerate(self.pending):
            arr = indices[i].numpy().astype(self.index_dtype) if self.store == "indices" else z[i].numpy()
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            sample = {
                "__key__": key,
                "npy": buf.getvalue(),
                "json": json.dumps(meta, sort_keys=True).encode(),
            }
            if self.previous:
                src = f"{meta.get('source_key')}@{meta.get('stride', 1)}"  # pairs within one stride
                window = int(meta.get("window", -1))
                if self._last is not None and self._last[:2] == (src, window - 1):
                    sample["prev.npy"] = self._last[2]
                    self.pairs += 1
                self._last = (src, window, sample["npy"])
            self.writer.write(sample)
        zd = z.double()  # statistics of exactly what the loader will read back
        self.sum += zd.sum(dim=(0, 2, 3, 4))
        self.sumsq += zd.square().sum(dim=(0, 2, 3, 4))
        self.positions += z.shape[0] * z.shape[2] * z.shape[3] * z.shape[4]
        self.count += len(self.pending)
        self.pending = []
