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


def office_users(n_users: int, seed: int | None = None):
    """A user slice of the real amazon-office data as RawInteractions (item text kept), or skip.

    ``seed=None`` takes the first ``n_users`` raw ids in sorted order; a seed takes a fixed random sample.
    """
    import numpy as np

    from training.data.dataset import RawInteractions
    from training.data.ingest import read_source

    raw = read_source(dataset_or_skip("amazon-office"))
    ids = sorted(set(raw.users))
    if seed is None:
        keep = set(ids[:n_users])
    else:
        keep = set(np.random.default_rng(seed).choice(ids, n_users, replace=False).tolist())
    rows = np.flatnonzero([u in keep for u in raw.users])
    return RawInteractions(
        users=[raw.users[r] for r in rows],
        items=[raw.items[r] for r in rows],
        ratings=None if raw.ratings is None else raw.ratings[rows],
        timestamps=None if raw.timestamps is None else raw.timestamps[rows],
        item_text=raw.item_text,
        source=raw.source,
    )
