"""FAISS item index: exactness, save/load, approximate recall, and the Ranker's exclusion contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from inference.ranker import Ranker
from model_store import ModelStore
from model_store.index import build_index, gpu_available, load_index, measure_recall


def numpy_topk(emb: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = q.astype(np.float64) @ emb.astype(np.float64).T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(scores, ids, axis=1)


def clustered(n: int, d: int, n_clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Items around cluster centres, queries near the same centres: the structure real embeddings have."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d)).astype(np.float32)
    emb = centres[rng.integers(n_clusters, size=n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    q = centres[rng.integers(n_clusters, size=64)] + 0.3 * rng.standard_normal((64, d)).astype(np.float32)
    return emb.astype(np.float32), q.astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    emb = rng.standard_normal((1000, 32)).astype(np.float32)
    return emb, rng.standard_normal((20, 32)).astype(np.float32)


def test_exact_topk_matches_numpy(data) -> None:
    emb, q = data
    ids, scores = build_index(emb).search(q, 100)
    ref_ids, ref_scores = numpy_topk(emb, q, 100)
    assert ids.shape == (20, 100) and ids.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-4)
    # Same ids in the same order, except where two scores are closer than float32 rounding can separate.
    gaps = np.abs(np.diff(ref_scores, axis=1))
    tie = np.zeros_like(ids, dtype=bool)
    tie[:, 1:] |= gaps < 1e-4
    tie[:, :-1] |= gaps < 1e-4
    assert (ids[~tie] == ref_ids[~tie]).all()
    for a, b in zip(ids, ref_ids, strict=True):
        assert set(a) == set(b)


@pytest.mark.parametrize(("kind", "params"), [("exact", {}), ("ivf", {"nlist": 16}), ("hnsw", {"M": 8})])
def test_save_load_roundtrip(tmp_path: Path, data, kind: str, params: dict) -> None:
    emb, q = data
    built = build_index(emb, kind, out_dir=tmp_path, **params)
    meta = json.loads((tmp_path / "index.json").read_text())
    assert meta["kind"] == kind and meta["dim"] == 32 and meta["count"] == 1000
    assert meta["metric"] == "inner_product"
    for key, value in params.items():
        assert meta["params"][key] == value
    loaded = load_index(tmp_path, use_gpu=False)
    assert loaded.device == "cpu" and loaded.info == built.info
    a_ids, a_scores = built.search(q, 10)
    b_ids, b_scores = loaded.search(q, 10)
    np.testing.assert_array_equal(a_ids, b_ids)
    np.testing.assert_allclose(a_scores, b_scores)


def test_load_refuses_mismatched_description(tmp_path: Path, data) -> None:
    build_index(data[0], out_dir=tmp_path)
    meta = json.loads((tmp_path / "index.json").read_text())
    meta["count"] = 999
    (tmp_path / "index.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="holds 1000 x 32 vectors but index.json says 999 x 32"):
        load_index(tmp_path)
    (tmp_path / "index.json").unlink()
    with pytest.raises(FileNotFoundError, match="index.json"):
        load_index(tmp_path)


def test_bad_arguments(data) -> None:
    emb, _ = data
    with pytest.raises(ValueError, match="unknown index kind 'annoy'"):
        build_index(emb, "annoy")
    with pytest.raises(ValueError, match="unknown parameter.*nprobe.*exact"):
        build_index(emb, "exact", nprobe=3)
    with pytest.raises(ValueError, match="NaN"):
        build_index(np.full((3, 4), np.nan))
    with pytest.raises(ValueError, match="dimension 8 does not match the index dimension 32"):
        build_index(emb).search(np.zeros((1, 8)), 5)


@pytest.mark.skipif(gpu_available(), reason="checks the CPU-only refusal")
def test_use_gpu_true_without_gpu_is_a_clear_error(tmp_path: Path, data) -> None:
    build_index(data[0], out_dir=tmp_path)
    assert load_index(tmp_path, use_gpu="auto").device == "cpu"
    with pytest.raises(RuntimeError, match="no GPU support or no GPU"):
        load_index(tmp_path, use_gpu=True)


def test_approximate_recall_on_clustered_data() -> None:
    emb, q = clustered(4000, 32, 40, seed=3)
    exact = build_index(emb)
    assert measure_recall(exact, exact, q, k=100) == 1.0
    ivf = build_index(emb, "ivf", nlist=64, nprobe=8)
    hnsw = build_index(emb, "hnsw")  # defaults: M 32, ef_search 128
    r_ivf, r_hnsw = measure_recall(ivf, exact, q), measure_recall(hnsw, exact, q)
    assert r_ivf > 0.85, r_ivf
    assert r_hnsw > 0.9, r_hnsw
    ivf.set_search_params(nprobe=1)
    assert measure_recall(ivf, exact, q) < r_ivf  # the knob really changes the search


def test_ranker_exact_k_with_exclusions(data) -> None:
    emb, q = data
    rng = np.random.default_rng(0)
    ref_ids, _ = numpy_topk(emb, q, 1000)
    # exclude each user's own top items (the worst case: every excluded item would otherwise be returned)
    exclude = [ref_ids[i, : rng.integers(0, 300)] for i in range(len(q))]
    ranker = Ranker(build_index(emb), margin=0)
    ids, scores = ranker.search(q, 50, exclude)
    assert ids.shape == (20, 50)
    for i in range(len(q)):
        assert not np.isin(ids[i], exclude[i]).any()
        expected = [x for x in ref_ids[i] if x not in set(exclude[i])][:50]
        assert set(ids[i]) == set(expected)
        assert (np.diff(scores[i]) <= 1e-6).all()


def test_ranker_pads_only_when_catalogue_is_exhausted() -> None:
    emb = np.random.default_rng(1).standard_normal((30, 8)).astype(np.float32)
    ranker = Ranker(build_index(emb))
    ids, scores = ranker.search(np.ones((2, 8)), 10, [np.arange(25), []])
    assert sorted(ids[0, :5]) == [25, 26, 27, 28, 29]
    assert (ids[0, 5:] == -1).all() and np.isneginf(scores[0, 5:]).all()
    assert (ids[1] >= 0).all()
    with pytest.raises(ValueError, match="exclude\\[0\\] holds item id 30"):
        ranker.search(np.ones((1, 8)), 5, [[30]])
    with pytest.raises(ValueError, match="2 entries for 1 user"):
        ranker.search(np.ones((1, 8)), 5, [[1], [2]])


def test_ranker_on_ivf_fills_from_embeddings_when_probed_lists_run_dry() -> None:
    emb, q = clustered(2000, 16, 20, seed=5)
    ivf = build_index(emb, "ivf", nlist=40, nprobe=1)  # one list holds ~50 items: fewer than k + exclusions
    exclude = [np.arange(i, 2000, 7) for i in range(len(q))]
    without = Ranker(ivf).search(q, 150, exclude)[0]
    assert (without == -1).any()  # the index alone cannot fill the rows ...
    ids, scores = Ranker(ivf, item_embeddings=emb).search(q, 150, exclude)
    assert (ids >= 0).all()  # ... the exact fallback does
    for i in range(len(q)):
        assert not np.isin(ids[i], exclude[i]).any()
        assert len(set(ids[i])) == 150


def test_index_inside_a_version(tmp_path: Path) -> None:
    emb = np.random.default_rng(2).standard_normal((500, 16)).astype(np.float32)
    src = tmp_path / "src"
    src.mkdir()
    np.save(src / "item_embeddings.npy", emb)
    build_index(emb, "exact", out_dir=src)
    store = ModelStore(tmp_path / "store")
    handle = store.open_version(store.publish(src))
    idx = handle.load_index(use_gpu=False)
    ranker = Ranker(idx, item_embeddings=handle.load_npy("item_embeddings.npy"))
    ids, _ = ranker.search(emb[:3], 5, [[0], [1], [2]])
    assert ids.shape == (3, 5) and not np.isin(ids[0], [0]).any()


def test_boosted_search_is_the_exact_top_k_of_the_boosted_scores(data) -> None:
    """Index top-k merged with re-scored boosted items == brute force over (inner product + boost)."""
    emb, q = data
    rng = np.random.default_rng(3)
    ranker = Ranker(build_index(emb), emb, margin=0)
    exclude, boosts, dense = [], [], np.asarray(q @ emb.T, dtype=np.float64)
    for i in range(len(q)):
        ex = rng.choice(len(emb), size=40, replace=False)
        items = rng.choice(len(emb), size=30, replace=False)  # some overlap the exclusions
        extra = rng.uniform(0, 3 * dense[i].std(), size=30).astype(np.float32)
        exclude.append(ex)
        boosts.append((items, extra))
        dense[i, items] += extra
        dense[i, ex] = -np.inf
    boosts[5] = None  # a user without boosts is searched as usual
    dense[5] = np.asarray(q[5] @ emb.T, dtype=np.float64)
    dense[5, exclude[5]] = -np.inf
    ids, scores = ranker.search(q, 20, exclude, boosts=boosts)
    want = np.argsort(-dense, axis=1, kind="stable")[:, :20]
    for i in range(len(q)):
        assert not np.isin(ids[i], exclude[i]).any()
        assert np.allclose(scores[i], dense[i, want[i]], atol=1e-4)
        assert set(ids[i]) == set(want[i])
    assert any(np.isin(ids[i], boosts[i][0]).any() for i in range(len(q)) if boosts[i] is not None)


def test_boosted_search_refuses_bad_boosts(data) -> None:
    emb, q = data
    with pytest.raises(ValueError, match="item embeddings"):
        Ranker(build_index(emb)).search(q[:1], 5, boosts=[(np.array([1]), np.array([1.0]))])
    ranker = Ranker(build_index(emb), emb)
    with pytest.raises(ValueError, match=">= 0"):
        ranker.search(q[:1], 5, boosts=[(np.array([1]), np.array([-1.0]))])
    with pytest.raises(ValueError, match="in range"):
        ranker.search(q[:1], 5, boosts=[(np.array([len(emb)]), np.array([1.0]))])
    with pytest.raises(ValueError, match="entries"):
        ranker.search(q[:2], 5, boosts=[None])
