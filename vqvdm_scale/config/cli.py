"""Command-line front end shared by every entry script: ``--config FILE`` plus ``a.b=c`` overrides."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TypeVar

import yaml

from vqvdm_scale.config.core import ConfigError, load_config, override_types_hint, to_dict

T = TypeVar("T")


def parse_cli(cls: type[T], argv: Sequence[str] | None = None, description: str = "") -> T:
    """Parse ``--config FILE [--dry-run] key=value ...`` into a validated ``cls``.

    ``--dry-run`` prints the resolved config and exits; ``--list-keys`` prints every key and type.
    A bad key or value exits with status 2 and a message that names the key.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", "-c", default=None, help="YAML config file (may use _base_: other.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        "--list-keys", action="store_true", help="print every config key with its type and exit"
    )
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    # The deepspeed launcher appends --local_rank=N; accept and ignore it (LOCAL_RANK is in the env too).
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.list_keys:
        for k, v in override_types_hint(cls).items():
            print(f"{k}: {v}")
        sys.exit(0)
    try:
        cfg = load_config(cls, args.config, args.overrides)
    except ConfigError as e:
        parser.exit(2, f"config error: {e}\n")
    if args.dry_run:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        sys.exit(0)
    return cfg
