"""Shared pytest fixtures: the ../shared/data videos and small CPU-friendly defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("VQVDM_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _small_threads() -> None:
    """Two CPU cores are shared by every test process; one intra-op thread avoids oversubscription."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real test videos beside the checkout (../shared/data); skipped on a user's plain clone."""
    if not (SHARED_DATA / "videos").is_dir():
        pytest.skip(f"{SHARED_DATA} is absent: the real/bad test videos live beside the project checkout")
    return SHARED_DATA
