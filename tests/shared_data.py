"""Where the tests find the real datasets: `../shared/datasets` beside the repository, or $EDGEREC_DATASETS.

They exist on dev and CI machines only; tests that need them skip with a message elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATASETS = Path(
    os.environ.get("EDGEREC_DATASETS", Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets")
)


def dataset_or_skip(name: str) -> Path:
    """The folder of one shared dataset, or skip the calling test with a clear message."""
    path = DATASETS / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent (the shared datasets are only on dev/CI machines)")
    return path
