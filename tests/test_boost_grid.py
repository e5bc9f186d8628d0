"""The one-pass blend grid gives, bit for bit, what scoring each point with ``evaluate`` gives."""

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

from training.evaluation.boost_grid import add_boosts, evaluate_boost_grid
from training.evaluation.harness import evaluate


def _dataset(rng, n_users: int, n_items: int) -> SimpleNamespace:
    """Disjoint random train / valid / test interactions (some users hold nothing out)."""
    which = rng.integers(0, 8, size=(n_users, n_items))
    return SimpleNamespace(
        train=sp.csr_matrix((which == 0).astype(np.float32)),
        valid=sp.csr_matrix((which == 1).astype(np.float32) * (rng.random((n_users, 1)) < 0.8)),
        test=sp.csr_matrix((which == 2).astype(np.float32)),
    )


def _boosts(rng, n_users: int, n_items: int, size: int, negative: bool = False) -> list:
    out = []
    for _ in range(n_users):
        if rng.random() < 0.15:
            out.append(None)  # this user has no candidates
            continue
        items = rng.integers(0, n_items, size=rng.integers(0, size + 1))  # repeats: np.add.at adds them
        vals = rng.integers(0, 4, size=len(items)).astype(np.float32) / 2  # coarse: many exact ties
        if negative and len(vals):
            vals[0] = -1.0
        out.append((items, vals))
    return out


def _reference(base, parts, dataset, point, split, users, batch_size):
    """One point the way the grid used to score it: base + boosts on every item, then ``evaluate``."""

    def score(us):
        out = base[us].copy()
        for name, weight in point.items():
            add_boosts(out, [parts[name][u] for u in us], weight)
        return out

    return evaluate(score, dataset, split, users=users, batch_size=batch_size)


@pytest.mark.parametrize(
    ("n_items", "integer_scores", "negative"),
    [(300, False, False), (300, True, False), (30, True, False), (300, True, True)],
    ids=["float-scores", "tied-scores", "fewer-items-than-k", "negative-boost-falls-back"],
)
def test_boost_grid_matches_evaluate_per_point(n_items, integer_scores, negative):
    rng = np.random.default_rng(n_items + integer_scores + 2 * negative)
    n_users = 120
    data = _dataset(rng, n_users, n_items)
    base = rng.standard_normal((n_users, n_items)).astype(np.float32)
    if integer_scores:
        base = np.round(base * 2).astype(np.float32)  # few distinct values: ties cross the top-k cut
    parts = {
        "prior": _boosts(rng, n_users, n_items, 25, negative),
        "term@20": _boosts(rng, n_users, n_items, 10),
        "term@100": _boosts(rng, n_users, n_items, 40),
    }
    points = [
        {"prior": b} | ({name: w} if name else {})
        for b in (0.0, 0.5, 3.0)
        for name, w in [(None, 0.0), ("term@20", 0.1), ("term@100", 1.0), ("term@100", 0.0)]
    ]
    users = rng.permutation(n_users)[:100]  # a subset, out of order, as fine-tuning's validation users are
    for split in ("valid", "test"):
        got = evaluate_boost_grid(
            lambda us: base[us],
            lambda us: {name: [found[u] for u in us] for name, found in parts.items()},
            points,
            data,
            split,
            users=users,
            batch_size=32,
        )
        want = [_reference(base, parts, data, p, split, users, 32) for p in points]
        assert got == want  # exact: the same top k, hence the same floats


def test_boost_grid_rejects_a_wrong_shape():
    rng = np.random.default_rng(0)
    data = _dataset(rng, 10, 50)
    with pytest.raises(ValueError, match="base_fn returned shape"):
        evaluate_boost_grid(lambda us: np.zeros((len(us), 49)), lambda us: {}, [{}], data)
