"""Wording of counts in user-facing messages ("1 shard", "3 shards"); the lowest layer, so any package can use it."""

from __future__ import annotations

from typing import Optional

__all__ = ["plural"]


def plural(count: int, noun: str, plural_form: Optional[str] = None) -> str:
    """``"<count> <noun>"`` with the noun in the plural unless ``count`` is exactly 1.

    ``plural_form`` is the plural when adding an "s" is wrong (``plural(2, "batch", "batches")``).
    """
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {plural_form if plural_form is not None else noun + 's'}"
