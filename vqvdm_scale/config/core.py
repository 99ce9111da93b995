"""The one config system: typed dataclass trees, YAML files, ``a.b=c`` overrides, resolved dumps.

Every stage (make_shards, VQGAN, encode_latents, LDM, sampling, launchers) describes its options as a
tree of ``@dataclass`` sections and loads it through :func:`load_config`. Unknown keys and bad values
raise :class:`ConfigError` naming the dotted key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from vqvdm_scale.config.text import redact

T = TypeVar("T")

BASE_KEY = "_base_"
PRESET_KEY = "preset"
MISSING = dataclasses.MISSING  # the default of a field that has none (see flat_fields)

_PRESETS_META = "vqvdm_presets"


def presets(getter: Callable[[str], Any]) -> dict[str, Any]:
    """Field metadata that lets a section start from a named preset: ``model: {preset: tiny, ...}``.

    ``model: UNetConfig = field(default_factory=UNetConfig, metadata=presets(unet_preset))``; the parent
    config names the presets of its own section, so there is no global registry.
    """
    return {_PRESETS_META: getter}


def _apply_preset(data: Mapping[str, Any], getter: Callable[[str], Any], key: str) -> dict[str, Any]:
    rest = {k: v for k, v in data.items() if k != PRESET_KEY}
    try:
        preset = getter(str(data[PRESET_KEY]))
    except (KeyError, ValueError) as e:
        raise ConfigError(f"{key}.{PRESET_KEY}: {e}") from e
    return _deep_merge(to_dict(preset), rest)


class UserError(ValueError):
    """A mistake the user can fix (bad input, missing file, bad value); entries print it as one line, exit 2.

    Anything else that escapes ``main()`` is a bug and keeps its traceback.
    """


class ConfigError(UserError):
    """A config key or value a user wrote is wrong; the message says which and what is allowed."""


def type_name(tp: Any) -> str:
    """A short readable name of a config field type (``int | null``, ``list of str``)."""
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(tp))
    if origin in (list, tuple, Sequence):
        args = get_args(tp)
        inner = type_name(args[0]) if args else "any"
        return f"list of {inner}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (from YAML or the command line) to ``tp`` or raise ConfigError."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"{key}: {value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}"
            )
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not a valid {type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping for section {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin in (tuple, list, Sequence) or tp in (tuple, list):
        if isinstance(value, str) and "," in value:
            value = [v.strip() for v in value.split(",")]
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {type_name(tp)}, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)} ({value!r})")
            items = [_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))]
        else:
            inner = args[0] if args else Any
            items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else list(items)
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def _fields(cls: type) -> dict[str, Any]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested mapping, rejecting unknown keys and coercing types."""
    fields = _fields(cls)
    getters = {
        f.name: f.metadata[_PRESETS_META] for f in dataclasses.fields(cls) if _PRESETS_META in f.metadata
    }
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in fields:
            raise ConfigError(
                f"unknown config key {key!r}; allowed keys{' in ' + prefix if prefix else ''}: "
                f"{', '.join(sorted(fields))}"
            )
        if name in getters and isinstance(value, Mapping) and PRESET_KEY in value:
            value = _apply_preset(value, getters[name], key)
        kwargs[name] = _coerce(value, fields[name], key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from e


def to_dict(cfg: Any) -> Any:
    """A plain (YAML/JSON-safe) nested dict of a config tree."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config YAML, following ``_base_: other.yaml`` (relative to the file) for inheritance.

    A missing, unreadable or malformed file, and a ``_base_`` chain that comes back to a file it already
    passed through, raise :class:`ConfigError` naming the file (and the chain).
    """
    path = Path(path)
    where = " (the _base_ of " + str(_chain[-1]) + ")" if _chain else ""
    if not path.exists():
        raise ConfigError(f"config file {str(path)!r}{where} does not exist")
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r}{where} is a directory; give a YAML file")
    resolved = path.resolve()
    if resolved in _chain:
        loop = " -> ".join(p.name for p in (*_chain[_chain.index(resolved) :], resolved))
        raise ConfigError(f"_base_ loop in config files: {loop}; remove one of the _base_ keys")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {_yaml_problem(e)}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level of a config file must be a mapping")
    base = data.pop(BASE_KEY, None)
    if base:
        bases = [base] if isinstance(base, str) else list(base)
        merged: dict[str, Any] = {}
        for b in bases:
            merged = _deep_merge(merged, read_yaml(path.parent / str(b), (*_chain, resolved)))
        data = _deep_merge(merged, data)
    return data


def _yaml_problem(e: yaml.YAMLError) -> str:
    """One line: what the YAML parser disliked and where (1-based line and column)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else str(problem)


def _nest(dotted: str, value: Any, out: dict[str, Any], what: str) -> None:
    """Set ``out[a][b][c] = value`` for ``dotted = "a.b.c"``."""
    node = out
    parts = dotted.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{what} conflicts with an earlier setting of {p!r}")
    node[parts[-1]] = value


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Turn ``["train.lr=1e-4", "model.channel_mult=[1,2]"]`` into a nested dict."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(e)})") from e
        _nest(dotted, value, out, f"override {item!r}")
    return out


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    values: Mapping[str, Any] | None = None,
) -> T:
    """Defaults of ``cls`` <- YAML file (with ``_base_``) <- ``values`` <- ``a.b=c`` overrides, validated.

    ``values`` maps dotted keys to values (strings are converted like YAML scalars of the key's type);
    the command line's ``--flag value`` options arrive here. A file's top-level ``slurm:`` section is
    launchers/submit.py's (the job's Slurm settings) and is ignored here unless ``cls`` has such a field.
    """
    data: dict[str, Any] = read_yaml(path) if path else {}
    if "slurm" not in _fields(cls):
        data.pop("slurm", None)
    flat: dict[str, Any] = {}
    for dotted, value in (values or {}).items():
        _nest(dotted, value, flat, f"{dotted}={value!r}")
    data = _deep_merge(_deep_merge(data, flat), parse_overrides(overrides))
    return from_dict(cls, data)


def dump_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (``.yaml``) or JSON (``.json``), credentials in URLs masked.

    The file is a record of the run, never read back, so nothing needs the secrets it would have held.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = redact(to_dict(cfg))
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        if path.suffix == ".json":
            json.dump(data, f, indent=2, sort_keys=False)
        else:
            yaml.safe_dump(data, f, sort_keys=False)
    tmp.replace(path)
    return path


def replace(cfg: T, **changes: Any) -> T:
    """``dataclasses.replace`` re-exported so callers need not import dataclasses."""
    return dataclasses.replace(cfg, **changes)  # type: ignore[type-var]


def override_types_hint(cls: type) -> dict[str, str]:
    """Flat ``{dotted.key: type}`` listing of a config tree, for ``--help`` output."""
    return {k: type_name(tp) for k, (tp, _) in flat_fields(cls).items()}


def flat_fields(cls: type) -> dict[str, tuple[Any, Any]]:
    """Flat ``{dotted.key: (type, default)}`` of a config tree, without building it.

    Sections (dataclass-typed fields) are expanded; a required field (no default) has default ``MISSING``.
    """
    out: dict[str, tuple[Any, Any]] = {}
    types_ = _fields(cls)
    for f in dataclasses.fields(cls):
        if f.name not in types_:
            continue
        tp = types_[f.name]
        if dataclasses.is_dataclass(tp):
            for k, v in flat_fields(tp).items():  # type: ignore[arg-type]
                out[f"{f.name}.{k}"] = v
            continue
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = MISSING
        out[f.name] = (tp, to_dict(default))
    return out


__all__ = [
    "ConfigError",
    "UserError",
    "dump_config",
    "flat_fields",
    "from_dict",
    "load_config",
    "override_types_hint",
    "parse_overrides",
    "read_yaml",
    "presets",
    "replace",
    "to_dict",
    "type_name",
]
