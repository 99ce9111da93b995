"""Network faults of an object store, told apart from bad data, and the one error a lost store gives.

A shard that cannot be read because the store is unreachable is not a corrupt shard: the loaders retry
it (:func:`is_network_error` decides) and, when the retry budget is spent, raise
:class:`StorageUnreachable`, which the trainers turn into a checkpoint and one line.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

from vqvdm_scale.config.core import UserError
from vqvdm_scale.config.text import redact

__all__ = ["StorageUnreachable", "is_network_error", "storage_errors", "unreachable_line"]

# the client libraries' connection and timeout errors, by class name so none of them must be installed:
# botocore (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ... all HTTPClientError or
# botocore's ConnectionError), aiohttp (ClientConnectionError and its subclasses, ClientPayloadError),
# fsspec's FSTimeoutError, urllib3/requests' connection errors
_NETWORK_CLASSES = frozenset(
    {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "HTTPClientError",
        "ClientConnectionError",
        "ClientConnectorError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
        "ClientOSError",
        "ClientPayloadError",
        "FSTimeoutError",
        "ProtocolError",
        "NewConnectionError",
        "MaxRetryError",
        "IncompleteRead",
    }
)
_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EPIPE,
    }
)
_LINE = re.compile(r"storage unreachable: [^\n]*")


def _one_is_network(exn: BaseException) -> bool:
    if isinstance(exn, (ConnectionError, TimeoutError)):  # builtins: refused, reset, timed out
        return True
    if any(cls.__name__ in _NETWORK_CLASSES for cls in type(exn).__mro__):
        return True
    return isinstance(exn, OSError) and exn.errno in _NETWORK_ERRNOS


def is_network_error(exn: BaseException) -> bool:
    """True when ``exn``, or an exception it was raised from, is a connection or timeout error."""
    seen: set[int] = set()
    current: Optional[BaseException] = exn
    while current is not None and id(current) not in seen:
        if _one_is_network(current):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def unreachable_line(url: str, tries: int, cause: BaseException) -> str:
    """The one line a lost store gives: the URL (credentials masked), the tries, what failed."""
    return redact(
        f"storage unreachable: {url} after {tries} {'try' if tries == 1 else 'tries'} "
        f"({type(cause).__name__}); re-run the same command to resume"
    )


class StorageUnreachable(UserError):
    """The object store stayed unreachable through the retry budget (or at start): stop, do not skip data.

    Raised in a DataLoader worker, it reaches the trainer re-created from a message holding the worker's
    traceback; :attr:`line` is the one line to show either way.
    """

    @property
    def line(self) -> str:
        """The "storage unreachable: ..." line, also when the message holds a worker's traceback."""
        found = _LINE.findall(str(self))
        return found[-1].strip() if found else " ".join(str(self).split())


@contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Turn a network error reaching ``url`` into one-line :class:`StorageUnreachable` (start-up checks)."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        if is_network_error(e):
            raise StorageUnreachable(
                redact(
                    f"storage unreachable: cannot reach the store of {url} ({type(e).__name__}); check "
                    "object_store.endpoint_url / AWS_ENDPOINT_URL and that the store is up"
                )
            ) from e
        if isinstance(e, PermissionError):
            raise UserError(redact(f"access to {url} denied ({e}); check the credentials")) from e
        raise
