"""The README stays true to the code: its config-key reference is what the dataclasses say today."""

from __future__ import annotations

import runpy

from tests.conftest import REPO


def test_config_reference_matches_the_dataclasses() -> None:
    reference = runpy.run_path(str(REPO / "docs" / "config_reference.py"))["reference"]()
    readme = (REPO / "README.md").read_text()
    assert reference in readme, "README's config reference is stale: run python docs/config_reference.py"
    assert "data.batch_size" not in reference  # the loader's batch size is train.micro_batch_size
