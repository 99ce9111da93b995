"""Typed config trees loaded from YAML with ``a.b=c`` overrides (see :mod:`vqvdm_scale.config.core`)."""

from vqvdm_scale.config.cli import parse_cli
from vqvdm_scale.config.core import (
    ConfigError,
    UserError,
    dump_config,
    from_dict,
    load_config,
    parse_overrides,
    read_yaml,
    to_dict,
)

__all__ = [
    "ConfigError",
    "UserError",
    "dump_config",
    "from_dict",
    "load_config",
    "parse_cli",
    "parse_overrides",
    "read_yaml",
    "to_dict",
]
