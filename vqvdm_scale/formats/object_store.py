"""The ``object_store:`` section: object-store options handed to fsspec for every URL of a protocol.

:func:`apply_object_store` puts the options into ``fsspec.config.conf`` (this process and the workers it forks)
and into the ``FSSPEC_S3`` / ``FSSPEC_GCS`` environment variables, which fsspec reads when it is imported
(spawned workers, process pools). The shard readers' retry budget travels the same way
(:func:`retry_policy`). No credential is ever part of it: keys come from the standard variables or files
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``GOOGLE_APPLICATION_CREDENTIALS``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Optional

import fsspec.config

from vqvdm_scale.config.core import ConfigError

__all__ = ["RetryPolicy", "ObjectStoreConfig", "apply_object_store", "retry_policy"]

_RETRY_ENV = "VQVDM_STORAGE_RETRY"
_PROTOCOLS = {"s3": ("s3", "s3a"), "gcs": ("gcs", "gs")}  # conf key per backend; fsspec keys by protocol


@dataclass
class ObjectStoreConfig:
    """Object-store options, applied to every ``s3://`` (s3fs) and ``gs://`` (gcsfs) URL of the run.

    Args:
        endpoint_url: the S3-compatible endpoint (MinIO, Ceph, a local test server); None: the
            ``AWS_ENDPOINT_URL`` variable, else AWS. For gs:// it is the GCS endpoint.
        profile: the AWS profile of ``~/.aws/credentials`` to use (None: ``AWS_PROFILE``, else default).
        anon: anonymous access (public buckets); no credentials are looked up.
        requester_pays: the reader pays for requests to requester-pays buckets.
        connect_timeout_s, read_timeout_s: per request, before the client's own retry.
        client_retries: attempts botocore makes per request (its ``max_attempts``) before a shard read
            fails; None: botocore's default.
        tries: attempts the loaders make per shard (re-opened from its start, samples already used
            skipped) before the run stops with "storage unreachable" and a checkpoint.
        backoff_s: wait before the second try; it doubles each try (5 tries: 4+8+16+32 s, about 2 min
            with the timeouts).
    """

    endpoint_url: Optional[str] = None
    profile: Optional[str] = None
    anon: bool = False
    requester_pays: bool = False
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    client_retries: Optional[int] = None
    tries: int = 5
    backoff_s: float = 4.0

    def __post_init__(self) -> None:
        if self.tries < 1:
            raise ConfigError(f"object_store.tries must be >= 1, got {self.tries}")
        if self.backoff_s < 0 or self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ConfigError("object_store.backoff_s must be >= 0 and storage timeouts > 0")
        if self.client_retries is not None and self.client_retries < 1:
            raise ConfigError(f"object_store.client_retries must be >= 1, got {self.client_retries}")
        if self.anon and self.profile:
            raise ConfigError("object_store.anon=true takes no object_store.profile; set one of them")


@dataclass(frozen=True)
class RetryPolicy:
    """How often a shard is re-opened after a network fault, and the wait before each re-open."""

    tries: int = 5
    backoff_s: float = 4.0

    def wait(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based): exponential backoff."""
        return self.backoff_s * 2 ** (attempt - 1)


def _s3_options(cfg: ObjectStoreConfig) -> dict[str, Any]:
    config: dict[str, Any] = {"connect_timeout": cfg.connect_timeout_s, "read_timeout": cfg.read_timeout_s}
    opts: dict[str, Any] = {}
    if cfg.client_retries is not None:
        config["retries"] = {"max_attempts": cfg.client_retries, "mode": "standard"}
    opts["config_kwargs"] = config
    if cfg.endpoint_url:
        opts["endpoint_url"] = cfg.endpoint_url
    if cfg.profile:
        opts["profile"] = cfg.profile
    if cfg.anon:
        opts["anon"] = True
    if cfg.requester_pays:
        opts["requester_pays"] = True
    return opts


def _gcs_options(cfg: ObjectStoreConfig) -> dict[str, Any]:
    opts: dict[str, Any] = {"timeout": cfg.read_timeout_s}
    if cfg.endpoint_url:
        opts["endpoint_url"] = cfg.endpoint_url
    if cfg.anon:
        opts["token"] = "anon"
    if cfg.requester_pays:
        opts["requester_pays"] = True
    return opts


# every option this section sets, per backend: all are replaced on each apply, also when they came from an
# earlier run's FSSPEC_S3 / FSSPEC_GCS inherited through the environment
_MANAGED = {
    "s3": ("config_kwargs", "endpoint_url", "profile", "anon", "requester_pays"),
    "gcs": ("timeout", "endpoint_url", "token", "requester_pays"),
}


_GCS_ZONAL_ENV = "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"


def apply_object_store(cfg: Optional[ObjectStoreConfig]) -> None:
    """Make ``cfg``'s options the fsspec defaults of every s3:// and gs:// URL opened from now on."""
    cfg = cfg if cfg is not None else ObjectStoreConfig()
    for backend, options in (("s3", _s3_options(cfg)), ("gcs", _gcs_options(cfg))):
        for proto in _PROTOCOLS[backend]:
            conf = fsspec.config.conf.setdefault(proto, {})
            for key in _MANAGED[backend]:
                conf.pop(key, None)
            conf.update(options)
        os.environ[f"FSSPEC_{backend.upper()}"] = json.dumps(options)
    os.environ[_RETRY_ENV] = json.dumps(asdict(RetryPolicy(cfg.tries, cfg.backoff_s)))
    if cfg.endpoint_url:
        # gcsfs (read when it is imported) first asks a gRPC control API whether each bucket is zonal;
        # an emulator or a non-Google endpoint has none, and every bucket then waits 60 s. A user's own
        # setting of the switch wins.
        os.environ.setdefault(_GCS_ZONAL_ENV, "false")


def retry_policy() -> RetryPolicy:
    """The shard readers' retry budget of this run (set by :func:`apply_object_store`; else the default)."""
    raw = os.environ.get(_RETRY_ENV)
    if not raw:
        return RetryPolicy()
    try:
        return RetryPolicy(**json.loads(raw))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{_RETRY_ENV}={raw!r} is not a retry policy ({e}); unset it") from e
