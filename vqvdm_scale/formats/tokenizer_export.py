"""Tokenizer export: one safetensors file holding weights + config + a sha256 fingerprint of both.

Everything downstream (latent shards, stage-2 checkpoints, samplers) records the fingerprint it was
made with and refuses a tokenizer whose fingerprint differs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from vqvdm_scale.config.core import UserError, from_dict, to_dict
from vqvdm_scale.formats.safetensors_file import (
    content_sha256,
    read_safetensors,
    verify_sha256,
    write_safetensors,
    write_text,
)
from vqvdm_scale.models.tokenizer.config import TokenizerConfig
from vqvdm_scale.models.tokenizer.vqgan import VQTokenizer

EXPORT_FORMAT = "vqvdm-tokenizer/1"


def config_json(cfg: TokenizerConfig) -> str:
    """Canonical JSON of a tokenizer config (sorted keys, no whitespace variance)."""
    return json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))


def fingerprint(config_text: str, tensors: dict[str, Tensor]) -> str:
    """sha256 over the config JSON and every tensor's name, dtype, shape and bytes in sorted name order."""
    return content_sha256(config_text, tensors)


def _export_state(model: VQTokenizer) -> dict[str, Tensor]:
    """fp32 CPU copies of the state dict (clones: safetensors refuses tensors that share storage)."""
    out = {}
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu")
        out[name] = (t.float() if t.is_floating_point() else t).clone().contiguous()
    return out


def export_tokenizer(model: VQTokenizer, cfg: TokenizerConfig, path: str | Path) -> str:
    """Write ``path`` (safetensors) and ``<path>.json`` (config + fingerprint) atomically; return the fingerprint.

    The fingerprint is the export's own sha256 (of its config text and tensors), checked on every load.
    """
    if to_dict(model.cfg) != to_dict(cfg):
        raise UserError("the config passed to export_tokenizer differs from the one the model was built with")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = _export_state(model)
    text = config_json(cfg)
    fp = fingerprint(text, tensors)
    write_safetensors(path, tensors, {"config": text, "fingerprint": fp, "format": EXPORT_FORMAT})
    sidecar = {"format": EXPORT_FORMAT, "weights": path.name, "fingerprint": fp, "config": to_dict(cfg)}
    write_text(path.with_name(path.name + ".json"), json.dumps(sidecar, indent=2) + "\n")
    return fp


def _read_metadata(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise FileNotFoundError(
            f"tokenizer file {str(path)!r} does not exist; it is written by training the VQGAN "
            "(python launchers/train_vqgan.py ...) at <run.dir>/tokenizer.safetensors"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        reason = " ".join(str(e).split())
        raise UserError(f"{path} is not a readable safetensors tokenizer file (truncated?): {reason}") from e
    if meta.get("format") != EXPORT_FORMAT or "config" not in meta or "fingerprint" not in meta:
        raise UserError(
            f"{path} is not a vqvdm tokenizer export (format {meta.get('format')!r}, expected {EXPORT_FORMAT!r})"
        )
    return meta


def read_fingerprint(path: str | Path) -> str:
    """The fingerprint recorded in an exported tokenizer (reads only the header)."""
    return _read_metadata(Path(path))["fingerprint"]


def load_tokenizer(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[VQTokenizer, TokenizerConfig, str]:
    """Load an exported tokenizer, verify its fingerprint, and return ``(model in eval mode, config, fingerprint)``."""
    path = Path(path)
    _read_metadata(path)  # a missing file or another kind of file is said before the tensors are read
    meta, tensors = read_safetensors(path, "tokenizer export")
    # Hash the stored JSON text itself, so any edit of the config metadata is caught too.
    actual = verify_sha256(path, "tokenizer export", meta["fingerprint"], meta["config"], tensors)
    cfg = from_dict(TokenizerConfig, json.loads(meta["config"]))
    model = VQTokenizer(cfg)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not fit the recorded config: {e}") from e
    return model.to(device).eval(), cfg, actual


__all__ = [
    "EXPORT_FORMAT",
    "config_json",
    "export_tokenizer",
    "fingerprint",
    "load_tokenizer",
    "read_fingerprint",
]
