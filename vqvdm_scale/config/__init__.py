"""Typed config trees loaded from YAML with ``a.b=c`` overrides (see :mod:`vqvdm_scale.config.core`)."""

from vqvdm_scale.config.cli import Flag, check_path, parse_cli, run_cli
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
    "Flag",
    "UserError",
    "check_path",
    "dump_config",
    "from_dict",
    "load_config",
    "parse_cli",
    "parse_overrides",
    "read_yaml",
    "run_cli",
    "to_dict",
]
