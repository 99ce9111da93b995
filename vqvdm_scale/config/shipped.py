"""The config YAMLs shipped inside the package (``vqvdm_scale/configs/``), found through importlib.resources.

A checkout sees them as ``configs/`` too (a symlink), but an installed package has only its own copy;
code that needs a shipped config (the quickstart) asks here instead of walking up from ``__file__``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from vqvdm_scale.config.core import ConfigError

__all__ = ["shipped_config", "shipped_configs", "shipped_configs_dir"]


def shipped_configs_dir() -> Path:
    """The directory holding the shipped ``<stage>/<name>.yaml`` files.

    ``_base_`` references are resolved against the file's directory, so the configs must be real files:
    a package installed unzipped (as pip does) has them; a zipped one is refused with a clear error.
    """
    root = resources.files("vqvdm_scale").joinpath("configs")
    path = Path(str(root))
    if not path.is_dir():
        raise ConfigError(
            f"the shipped configs are not on disk at {path}: install vqvdm-scale as files "
            "(pip install), not as a zip"
        )
    return path


def shipped_configs() -> list[str]:
    """Every shipped config as ``"<stage>/<name>.yaml"``, sorted (e.g. ``"ldm/tiny.yaml"``)."""
    root = shipped_configs_dir()
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.yaml"))


def shipped_config(name: str) -> Path:
    """The path of the shipped config ``name`` (``"ldm/tiny.yaml"``), for ``load_config`` or ``--config``."""
    path = shipped_configs_dir().joinpath(*name.split("/"))
    if not path.is_file():
        raise ConfigError(f"no shipped config {name!r}; shipped: {', '.join(shipped_configs())}")
    return path
