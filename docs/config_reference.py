"""Print the README's full config-key reference from the dataclasses (``python docs/config_reference.py``).

tests/unit/test_readme.py checks that the README holds exactly this output, so the reference cannot drift.
"""

from __future__ import annotations

from typing import Any

from vqvdm_scale.config import to_dict
from vqvdm_scale.config.core import ConfigError, flat_fields, type_name
from vqvdm_scale.evaluate.config import EvalConfig
from vqvdm_scale.train.ldm import LDMRunConfig
from vqvdm_scale.train.vqgan import VQGANRunConfig

STAGES: list[tuple[str, type, str]] = [
    ("Stage 1", VQGANRunConfig, "launchers/train_vqgan.py"),
    ("Stage 2", LDMRunConfig, "launchers/train_ldm.py"),
    ("Evaluation", EvalConfig, "launchers/evaluate.py"),
]


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def _cell(value: Any) -> str:
    return f"`{value}`" if value != "" else "`''`"


def reference() -> str:
    """The Markdown tables: every key of each stage's root config with its type and default."""
    parts = []
    for title, cls, entry in STAGES:
        try:
            defaults = _flat(to_dict(cls()))  # the root's own defaults (sections may override their class's)
        except ConfigError:  # a config with required choices (evaluate: --fake or --run): field defaults
            defaults = {k: d for k, (_, d) in flat_fields(cls).items()}
        rows = [f"#### {title}: `{cls.__name__}` ({entry})", "", "| key | type | default |", "|---|---|---|"]
        for key, (tp, _) in flat_fields(cls).items():
            rows.append(f"| `{key}` | {type_name(tp).replace(' | ', ' / ')} | {_cell(defaults.get(key))} |")
        parts.append("\n".join(rows))
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
