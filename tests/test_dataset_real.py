"""Real data from ../shared/datasets: counts must equal the table in its README."""

from __future__ import annotations

from pathlib import Path

from shared_data import dataset_or_skip

from training.data.dataset import PreparedDataset, prepare
from training.data.ingest import read_source


def test_amazon_office_matches_the_readme(tmp_path: Path) -> None:
    raw = read_source(dataset_or_skip("amazon-office"))
    ds = prepare(raw, "amazon-office")
    assert (ds.n_users, ds.n_items) == (4_905, 2_420)
    assert ds.train.nnz + ds.valid.nnz + ds.test.nnz == 53_258
    assert set(ds.item_text) == {"title", "brand", "categories", "description"}
    titled = sum(1 for t in ds.item_text["title"] if t)
    assert titled > 0.95 * ds.n_items  # a few items have no title in the source
    back = PreparedDataset.load(ds.save(tmp_path / "office"))
    assert back.fingerprint == ds.fingerprint and (back.test != ds.test).nnz == 0


def test_movielens_100k_raw_counts_and_threshold() -> None:
    raw = read_source(dataset_or_skip("movielens-100k"))
    assert len(raw.users) == 100_000
    assert (len(set(raw.users)), len(set(raw.items))) == (943, 1_682)
    everything = prepare(raw, "ml", rating_threshold=None, k_core=1)
    assert (everything.n_users, everything.n_items) == (943, 1_682)
    kept = prepare(raw, "ml", k_core=1)  # ratings > 3, i.e. 4 and 5
    assert kept.train.nnz + kept.valid.nnz + kept.test.nnz == int((raw.ratings > 3).sum())
