"""The label contract every shard shares: a sample's label is an integer in ``[0, len(classes))``.

``classes`` is the class list of the shards' manifest (``classes[label]`` is the label's name). A label
equal to ``len(classes)`` would silently become the diffusion loss's null class (unconditional), and a
larger one an IndexError deep in the network, so writers, loaders and trainers all check labels here:
the shard writers skip such a sample with reason ``bad_label``, the loaders count it as a bad sample, and
stage 2 refuses a cache whose recorded label counts fall outside its classes. An empty class list means
the classes are unknown (shards without a manifest): then a label need only be an integer >= 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vqvdm_scale.config.core import UserError

__all__ = ["LabelError", "check_label", "check_label_counts", "describe_classes"]

_SHOWN = 8  # class names a message lists before "..."


class LabelError(ValueError):
    """A sample whose label is missing, not an integer, or outside its class list."""


def describe_classes(classes: Sequence[str]) -> str:
    """``the 3 classes ['a', 'b', 'c'] (labels 0..2)``, shortened for long lists; for messages."""
    if not classes:
        return "an unknown class list (labels must be integers >= 0)"
    names = [str(c) for c in classes[:_SHOWN]]
    shown = repr(names) if len(classes) <= _SHOWN else repr(names)[:-1] + ", ...]"
    return f"the {len(classes)} classes {shown} (labels 0..{len(classes) - 1})"


def check_label(value: object, classes: Sequence[str], sample: str) -> int:
    """``value`` as a label of ``classes``, or a :class:`LabelError` that names ``sample`` and the class list."""
    if value is None:
        raise LabelError(f"sample {sample} has no label; its shard holds {describe_classes(classes)}")
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        else:
            raise LabelError(
                f"sample {sample}: label {value!r} is not an integer; its shard holds {describe_classes(classes)}"
            )
    if value < 0 or (classes and value >= len(classes)):
        raise LabelError(f"sample {sample}: label {value} is outside {describe_classes(classes)}")
    return int(value)


def check_label_counts(counts: Mapping[str, int], classes: Sequence[str], where: str) -> None:
    """UserError naming ``where`` unless every label of ``counts`` (label -> samples) is one of ``classes``."""
    bad = {}
    for label, count in counts.items():
        try:
            check_label(int(label), classes, "")
        except (LabelError, ValueError):
            bad[label] = count
    if bad:
        listed = ", ".join(f"label {k} ({v} samples)" for k, v in sorted(bad.items()))
        raise UserError(
            f"{where} holds {listed} outside {describe_classes(classes)}: they would train as the "
            "unconditional class or fail in the network; re-run data_prep/encode_latents.py, which skips them"
        )
