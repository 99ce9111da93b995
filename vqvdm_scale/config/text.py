"""User-facing text: counts ("1 shard", "3 shards") and URLs with their secrets masked; the lowest layer,
so any package can use it."""

from __future__ import annotations

import re
from typing import Any, Optional, TypeVar

__all__ = ["plural", "redact"]

T = TypeVar("T")

# scheme://user:password@host -> scheme://***@host; a password may hold an unescaped "/" (AWS secret keys
# often do), so after "user:" everything up to the "@" is masked
_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?:[^/\s@'\"?#:]*:[^\s@'\"]*|[^/\s@'\"?#]+)@"
)
# ?token=... / &X-Amz-Signature=... -> ?token=*** : query parameters whose name says they are secret
_SECRET_PARAM = re.compile(
    r"(?P<name>[?&;][^=&\s'\"#]*(?:token|secret|sig|signature|key|password|passwd|pwd|credential|auth)"
    r"[^=&\s'\"#]*=)[^&\s'\"#]*",
    re.IGNORECASE,
)
MASK = "***"


def plural(count: int, noun: str, plural_form: Optional[str] = None) -> str:
    """``"<count> <noun>"`` with the noun in the plural unless ``count`` is exactly 1.

    ``plural_form`` is the plural when adding an "s" is wrong (``plural(2, "batch", "batches")``).
    """
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {plural_form if plural_form is not None else noun + 's'}"


def redact(value: T) -> T:
    """``value`` with the credentials of every URL in it masked (``s3://key:secret@b/x`` -> ``s3://***@b/x``,
    ``?token=abc`` -> ``?token=***``), for anything printed, logged or written to a manifest.

    Strings are searched for URLs anywhere in them (an error message naming one is masked too); lists,
    tuples and dicts are masked item by item; anything else is returned as it is.
    """
    if isinstance(value, str):
        masked = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", value)
        return _SECRET_PARAM.sub(lambda m: f"{m['name']}{MASK}", masked)  # type: ignore[return-value]
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}  # type: ignore[return-value]
    if isinstance(value, (list, tuple)):
        items: Any = [redact(v) for v in value]
        return type(value)(items) if isinstance(value, tuple) else items  # type: ignore[return-value]
    return value
