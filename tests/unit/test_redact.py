"""URLs with credentials are masked wherever they are printed or stored (issue 12, item 11).

``s3://key:secret@bucket/...`` and ``...?token=...`` used to reach logs, error lines, config dumps and
manifests verbatim. :func:`~vqvdm_scale.config.text.redact` is the one helper; these tests check it and
the places that print or store URLs through it (the one-line CLI error, the saved config, the loaders'
bad-shard warnings, shard and latent manifests).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import pytest

from vqvdm_scale.config import dump_config
from vqvdm_scale.config.cli import fail
from vqvdm_scale.config.core import UserError
from vqvdm_scale.config.text import redact
from vqvdm_scale.data.pipeline import ErrorCounter
from vqvdm_scale.formats.shard_io import write_json

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCY"  # AWS secret keys hold "/" and "+"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (f"s3://AKIAEXAMPLE:{SECRET}@bucket/ucf/shard-000000.tar", "s3://***@bucket/ucf/shard-000000.tar"),
        ("https://ghp_token123@github.com/o/r", "https://***@github.com/o/r"),
        ("gs://b/x.tar?token=abc&part=1", "gs://b/x.tar?token=***&part=1"),
        (
            "https://h/x.tar?X-Amz-Credential=AK%2F1&X-Amz-Signature=ff00&v=2",
            "https://h/x.tar?X-Amz-Credential=***&X-Amz-Signature=***&v=2",
        ),
        (
            "https://acct.blob.core.windows.net/c/x.tar?sv=2022&sig=Zm9v%3D",
            "https://acct.blob.core.windows.net/c/x.tar?sv=2022&sig=***",
        ),
        (
            f"cannot open s3://k:{SECRET}@b/a.tar, nor gs://b/c.tar?access_token=t0k",
            "cannot open s3://***@b/a.tar, nor gs://b/c.tar?access_token=***",
        ),
    ],
)
def test_redact_masks_credentials(text: str, masked: str) -> None:
    assert redact(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "runs/data/real",
        "/data/a@b/video.mp4",
        "s3://bucket/ucf/shard-{000000..000127}.tar",
        "http://host:8080/x",
    ],
)
def test_redact_leaves_plain_paths_alone(text: str) -> None:
    assert redact(text) == text


def test_redact_walks_containers() -> None:
    data = {
        "input": f"s3://k:{SECRET}@b/x",
        "list": ["a", "gs://b/y?token=1"],
        "n": 3,
        "t": ("s3://u:p@h/z",),
    }
    assert redact(data) == {
        "input": "s3://***@b/x",
        "list": ["a", "gs://b/y?token=***"],
        "n": 3,
        "t": ("s3://***@h/z",),
    }


def test_cli_error_line_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        fail(UserError(f"no shards found at s3://k:{SECRET}@b/x"))
    err = capsys.readouterr().err
    assert SECRET not in err and "s3://***@b/x" in err


@dataclass
class _Data:
    train_shards: str = f"s3://k:{SECRET}@b/train"
    eval_shards: list[str] = field(default_factory=lambda: ["gs://b/eval?token=t0k"])


@dataclass
class _Cfg:
    data: _Data = field(default_factory=_Data)


def test_saved_config_is_redacted(tmp_path: Path) -> None:
    text = dump_config(_Cfg(), tmp_path / "config.yaml").read_text()
    assert SECRET not in text and "t0k" not in text and "s3://***@b/train" in text


def test_bad_shard_warnings_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        ErrorCounter("rank 0")(OSError(f"cannot read s3://k:{SECRET}@b/x.tar"))
    assert "cannot read s3://***@b/x.tar" in caplog.text and SECRET not in caplog.text


def test_manifests_and_sidecars_are_redacted() -> None:
    fs = fsspec.filesystem("memory")
    write_json(fs, "/redact", "manifest.json", {"params": {"output": f"s3://k:{SECRET}@b/out"}})
    text = fs.cat("/redact/manifest.json").decode()
    assert SECRET not in text and json.loads(text)["params"]["output"] == "s3://***@b/out"
