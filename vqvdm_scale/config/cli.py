"""The one command-line front end of every entry script (launchers/, data_prep/).

Every entry takes ``--config FILE``, ``section.key=value`` overrides, ``--dry-run`` and ``--list-keys``;
an entry may add ``--flag value`` aliases of config keys (:class:`Flag`), so ``--steps 50`` is the same
as ``sample.steps=50``. Precedence: defaults < ``--config`` file < ``--flag`` options < ``key=value``.

:func:`run_cli` parses and then calls the entry's ``main(cfg)``. A user mistake, found while parsing or
raised as :class:`~vqvdm_scale.config.core.UserError` inside ``main``, is one line on stderr and exit
status 2; Ctrl-C is one line and status 130; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn, Optional, TypeVar, Union, get_args, get_origin

import yaml

from vqvdm_scale.config.core import (
    MISSING,
    ConfigError,
    UserError,
    flat_fields,
    load_config,
    to_dict,
    type_name,
)
from vqvdm_scale.config.text import redact

T = TypeVar("T")
PathKind = Literal["file", "dir", "any"]
_SWITCH_OFF: Any = type("NotASwitch", (), {"__repr__": lambda self: "NOT_A_SWITCH"})()
_MAX_LISTED_KEYS = 30  # --help lists the remaining key=value keys up to this many, else points to --list-keys


@dataclass(frozen=True)
class Flag:
    """A ``--name`` option that sets one config key.

    Args:
        key: the dotted config key it sets (``sample.steps``).
        help: what the value is, for ``--help`` and for error messages.
        value: for a switch (``--no-quantize``), the value it sets; a bool key is a switch setting true.
        required: the entry cannot run without it (an empty or null value is an error, naming the flag).
        metavar: the name of the value in ``--help`` (default: PATH for paths, N, X, {choices} or VALUE).
        path: the value is a local path that must exist as a file, a directory or either (checked after
            ``--dry-run``, before ``main``; URLs, brace patterns and lists are not checked).
    """

    key: str
    help: str = ""
    value: Any = _SWITCH_OFF
    required: bool = False
    path: Optional[PathKind] = None
    metavar: Optional[str] = None


FlagSpec = Union[str, Flag]


def fail(error: BaseException, status: int = 2) -> NoReturn:
    """Print ``error`` as one line on stderr and exit with ``status`` (2: a user mistake)."""
    prefix = "config error" if isinstance(error, ConfigError) else "error"
    text = redact(" ".join(str(error).split())) or type(error).__name__
    sys.stderr.write(f"{prefix}: {text}\n")
    sys.stderr.flush()
    sys.exit(status)


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes (unknown option, missing value) are one line instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        fail(UserError(f"{message} (see {self.prog} --help)"))


def _is_local(value: str) -> bool:
    """A plain local path (not an fsspec URL, a brace/glob pattern or a comma-separated list)."""
    return "://" not in value and not any(c in value for c in "{}*?[],")


def check_path(value: str, what: str, kind: PathKind, hint: str = "") -> None:
    """Raise :class:`UserError` unless local path ``value`` exists, is of ``kind`` and can be read."""
    if not value or not _is_local(value):
        return
    p = Path(value).expanduser()
    tail = f"; {what} is the {hint}" if hint else ""
    if not p.exists():
        raise UserError(f"{what} {value!r} does not exist{tail}")
    if kind == "dir" and not p.is_dir():
        raise UserError(f"{what} {value!r} is a file, but a directory is expected{tail}")
    if kind == "file" and p.is_dir():
        raise UserError(f"{what} {value!r} is a directory, but a file is expected{tail}")
    if not os.access(p, os.R_OK | (os.X_OK if p.is_dir() else 0)):
        raise UserError(f"{what} {value!r} cannot be read (permission denied){tail}")


def _show(value: Any) -> str:
    if value is MISSING:
        return "(required)"
    if isinstance(value, str):
        return value if value else '""'
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def _metavar(tp: Any) -> str:
    """``N`` for integers, ``X`` for numbers, ``{a,b}`` for choices, ``VALUE`` otherwise."""
    args = [a for a in get_args(tp) if a is not type(None)] if get_origin(tp) is not Literal else []
    if len(args) == 1:
        tp = args[0]
    if get_origin(tp) is Literal:
        return "{" + ",".join(str(a) for a in get_args(tp)) + "}"
    return {int: "N", float: "X"}.get(tp, "VALUE")


def _split_doc(description: str) -> tuple[str, list[str]]:
    """The first paragraph of an entry's docstring, and its remaining non-empty lines (the examples)."""
    paragraphs = (description or "").strip().split("\n\n", 1)
    summary = " ".join(paragraphs[0].split())
    rest = paragraphs[1] if len(paragraphs) > 1 else ""
    return summary, [line.strip() for line in rest.splitlines() if line.strip()]


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _normalise(flags: Mapping[str, FlagSpec] | None, fields: Mapping[str, Any]) -> dict[str, Flag]:
    out = {name: f if isinstance(f, Flag) else Flag(f) for name, f in (flags or {}).items()}
    for name, flag in out.items():
        if flag.key not in fields:  # a programming error in the entry script, not a user mistake
            raise KeyError(f"--{name} maps to {flag.key!r}, which is not a key of the config")
    return out


def _epilog(examples: Sequence[str], fields: Mapping[str, tuple[Any, Any]], flags: Mapping[str, Flag]) -> str:
    lines = []
    if examples:
        lines += ["examples:", *(f"  {e}" for e in examples), ""]
    rest = {k: v for k, v in fields.items() if k not in {f.key for f in flags.values()}}
    what = "other config keys" if flags else "config keys"
    lines.append(
        f"{what}: set with key=value (YAML values, e.g. a.b=[1,2]) or in --config FILE; "
        f"--list-keys prints all {len(fields)} keys with type and default"
    )
    if rest and len(rest) <= _MAX_LISTED_KEYS:
        lines += [f"  {k}={_show(d)}  ({type_name(tp)})" for k, (tp, d) in rest.items()]
    elif rest:
        sections = dict.fromkeys(k.split(".")[0] for k in rest)
        lines.append(f"  sections: {', '.join(sections)}")
    return "\n".join(lines)


def _parser(
    cls: type, description: str, flags: Mapping[str, Flag], examples: Sequence[str] | None
) -> _Parser:
    fields = flat_fields(cls)
    summary, doc_examples = _split_doc(description)
    parser = _Parser(
        description=summary,
        epilog=_epilog(doc_examples if examples is None else examples, fields, flags),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", "-c", metavar="FILE", help="YAML config file (may use _base_: other.yaml)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--list-keys", action="store_true", help="print every key with type and default")
    for name, flag in flags.items():
        tp, default = fields[flag.key]
        dest = "flag_" + name.replace("-", "_")
        if flag.value is not _SWITCH_OFF or tp is bool:
            const = True if flag.value is _SWITCH_OFF else flag.value
            text = f"{flag.help} [sets {flag.key}={_show(const)}; default {_show(default)}]".replace(
                "%", "%%"
            )
            parser.add_argument(f"--{name}", dest=dest, action="store_const", const=const, help=text)
        else:
            shown = "required" if flag.required else f"default: {_show(default)}"
            text = f"{flag.help} [{flag.key}; {shown}]".replace("%", "%%")
            parser.add_argument(
                f"--{name}",
                dest=dest,
                metavar=flag.metavar or ("PATH" if flag.path else _metavar(tp)),
                help=text,
            )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. a.b=1")
    # The deepspeed launcher appends --local_rank=N; accept and ignore it (LOCAL_RANK is in the env too).
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def parse_cli(
    cls: type[T],
    argv: Sequence[str] | None = None,
    description: str | None = "",
    flags: Mapping[str, FlagSpec] | None = None,
    examples: Sequence[str] | None = None,
) -> T:
    """Parse ``[--config FILE] [--flag value ...] [key=value ...]`` into a validated ``cls``.

    ``description`` is the entry's docstring: its first paragraph is the summary of ``--help`` and its
    other lines are the examples (unless ``examples`` is given). ``flags`` maps option names (without
    ``--``) to config keys or :class:`Flag`. ``--dry-run`` prints the resolved config and exits 0;
    ``--list-keys`` prints every key, type and default and exits 0. A mistake exits 2 with one line.
    """
    fields = flat_fields(cls)
    spec = _normalise(flags, fields)
    parser = _parser(cls, description or "", spec, examples)
    args = parser.parse_intermixed_args(argv)
    if args.list_keys:
        for k, (tp, default) in fields.items():
            print(f"{k}: {type_name(tp)} = {_show(default)}")
        sys.exit(0)
    values = {}
    for name, flag in spec.items():
        given = getattr(args, "flag_" + name.replace("-", "_"))
        if given is not None:
            values[flag.key] = given
    try:
        cfg = load_config(cls, args.config, args.overrides, values)
        for name, flag in spec.items():
            if flag.required and _get(cfg, flag.key) in ("", None):
                raise UserError(
                    f"--{name} is required: the {flag.help} (or {flag.key}=... or a --config FILE)"
                )
    except UserError as e:
        fail(e)
    if args.dry_run:
        print(yaml.safe_dump(redact(to_dict(cfg)), sort_keys=False), end="")
        sys.exit(0)
    try:
        for name, flag in spec.items():
            if flag.path is not None:
                check_path(str(_get(cfg, flag.key) or ""), f"--{name}", flag.path, flag.help)
    except UserError as e:
        fail(e)
    return cfg


def run_cli(
    cls: type[T],
    main: Callable[[T], Any],
    description: str | None = "",
    flags: Mapping[str, FlagSpec] | None = None,
    examples: Sequence[str] | None = None,
    argv: Sequence[str] | None = None,
) -> None:
    """Parse the command line into ``cls`` (see :func:`parse_cli`) and run ``main(cfg)``.

    A :class:`UserError` (or :class:`ConfigError`) from ``main`` is one line on stderr and exit 2;
    KeyboardInterrupt is one line and exit 130; any other exception propagates with its traceback.
    """
    cfg = parse_cli(cls, argv, description, flags, examples)
    try:
        main(cfg)
    except UserError as e:
        fail(e)
    except KeyboardInterrupt:
        fail(KeyboardInterrupt("interrupted"), status=130)


__all__ = ["Flag", "check_path", "fail", "parse_cli", "run_cli"]
