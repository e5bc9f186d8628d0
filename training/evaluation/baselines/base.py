"""The small interface every baseline implements, and validation-only model selection around it.

In the spirit of benfred/implicit's ``RecommenderBase``: a model is built from keyword hyper-parameters,
``fit`` on a users x items CSR train matrix (iterative models may early-stop on ``valid``), and ``score``
returns dense scores for a batch of users, which :func:`training.evaluation.harness.evaluate` masks and ranks.
Models score from the train matrix they were fitted on; nothing here sees the test split until
:func:`select_and_test` reports it once.
"""

from __future__ import annotations

import itertools
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from training.evaluation.harness import DEFAULT_KS, DEFAULT_NDCG_KS, evaluate

# The selection criterion of DESIGN.md §1 (the paper picks checkpoints on R@20 + R@40 + N@100 of validation).
SELECTION_METRICS = ("recall@20", "recall@40", "ndcg@100")


def selection_score(metrics: dict[str, float]) -> float:
    return float(sum(metrics[m] for m in SELECTION_METRICS))


class Recommender(ABC):
    """A baseline: ``Model(**params).fit(train, valid).score(users) -> [B, I]``."""

    name: ClassVar[str]
    # hyper-parameter name -> candidate values; the cross product is searched on validation
    grid: ClassVar[dict[str, list[Any]]] = {}

    def __init__(self, **params: Any):
        unknown = set(params) - set(self.defaults())
        if unknown:
            raise ValueError(
                f"{self.name}: unknown hyper-parameters {sorted(unknown)}; known: {sorted(self.defaults())}"
            )
        self.params: dict[str, Any] = {**self.defaults(), **params}
        self.train: sp.csr_matrix | None = None
        self.info: dict[str, Any] = {}  # what fitting found out (e.g. best epoch), reported with the results

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {}

    @abstractmethod
    def fit(self, train: sp.csr_matrix, valid: sp.csr_matrix | None = None, log=None) -> Recommender:
        """Fit on ``train``; iterative models early-stop on ``valid`` and report progress through ``log``."""

    def fit_dataset(self, dataset, log=None) -> Recommender:
        """Fit on a prepared dataset's train split (early-stopping on its valid split). Models that need more
        than the train matrix (SASRec: the per-user order) override this; the harness always calls it."""
        return self.fit(dataset.train, dataset.valid, log=log)

    @abstractmethod
    def score(self, users: np.ndarray) -> np.ndarray:
        """Scores ``[len(users), n_items]`` (float); the caller may modify the returned array in place."""

    def _check_train(self, train: sp.csr_matrix) -> sp.csr_matrix:
        if not sp.issparse(train) or train.ndim != 2:
            raise ValueError(f"{self.name}: train must be a scipy sparse users x items matrix")
        if train.nnz == 0:
            raise ValueError(f"{self.name}: train matrix has no interactions")
        # a copy: the caller's matrix (often float32 CSR already, shared otherwise) keeps its values
        train = sp.csr_matrix(train, dtype=np.float32, copy=True)
        train.data[:] = 1.0  # implicit feedback: presence only
        return train

    def _require_fit(self) -> sp.csr_matrix:
        if self.train is None:
            raise RuntimeError(f"{self.name}: call fit() before score()")
        return self.train


def validation_view(train: sp.csr_matrix, valid: sp.csr_matrix) -> SimpleNamespace:
    """A dataset-like object for the harness when a model early-stops on validation inside ``fit``."""
    empty = sp.csr_matrix(train.shape, dtype=np.float32)
    return SimpleNamespace(train=train, valid=valid, test=empty)


def sample_negatives(users: np.ndarray, n_items: int, seen_keys: np.ndarray, rng) -> np.ndarray:
    """One uniform negative per row, resampled until it is not one of the user's train items."""
    neg = rng.integers(0, n_items, size=len(users))
    bad = np.flatnonzero(np.isin(users * n_items + neg, seen_keys, assume_unique=False))
    while len(bad):
        neg[bad] = rng.integers(0, n_items, size=len(bad))
        still = np.isin(users[bad] * n_items + neg[bad], seen_keys)
        bad = bad[still]
    return neg


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    if not grid:
        return [{}]
    names = list(grid)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(grid[n] for n in names))]


@dataclass
class TrialResult:
    params: dict[str, Any]
    valid: dict[str, float]
    fit_seconds: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class BaselineResult:
    """One row of the results table: the validation-chosen configuration and its single test evaluation."""

    model: str
    params: dict[str, Any]
    valid: dict[str, float]
    test: dict[str, float]
    fit_seconds: float  # fit time of the chosen configuration
    search_seconds: float  # whole grid search including evaluations
    info: dict[str, Any] = field(default_factory=dict)
    trials: list[TrialResult] = field(default_factory=list)
    grid_keys: list[str] = field(default_factory=list)  # the hyper-parameters that were searched

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "params": self.params,
            "valid": self.valid,
            "test": self.test,
            "fit_seconds": self.fit_seconds,
            "search_seconds": self.search_seconds,
            "info": self.info,
            "grid_keys": self.grid_keys,
            "trials": [t.__dict__ for t in self.trials],
        }


def select_and_test(
    model_cls: type[Recommender],
    dataset,
    grid: dict[str, list[Any]] | None = None,
    fixed: dict[str, Any] | None = None,
    batch_size: int = 1024,
    log=print,
) -> BaselineResult:
    """Fit every grid point on train, pick the best by validation R@20+R@40+N@100, evaluate test once."""
    grid = model_cls.grid if grid is None else grid
    t_search = time.perf_counter()
    best: tuple[float, Recommender, TrialResult] | None = None
    trials = []
    for point in grid_points(grid):
        params = {**(fixed or {}), **point}
        model = model_cls(**params)
        t0 = time.perf_counter()
        model.fit_dataset(dataset, log=log)
        fit_s = time.perf_counter() - t0
        valid = evaluate(model.score, dataset, "valid", DEFAULT_KS, DEFAULT_NDCG_KS, batch_size=batch_size)
        trial = TrialResult(model.params, valid, fit_s, dict(model.info))
        trials.append(trial)
        log(f"{model_cls.name} {point} valid {_fmt(valid)} fit {fit_s:.1f}s")
        s = selection_score(valid)
        if best is None or s > best[0]:
            best = (s, model, trial)
        else:
            del model  # free big matrices (EASE) before the next grid point
    assert best is not None
    _, model, trial = best
    test = evaluate(model.score, dataset, "test", DEFAULT_KS, DEFAULT_NDCG_KS, batch_size=batch_size)
    log(f"{model_cls.name} chosen {trial.params} test {_fmt(test)}")
    return BaselineResult(
        model=model_cls.name,
        params=trial.params,
        valid=trial.valid,
        test=test,
        fit_seconds=trial.fit_seconds,
        search_seconds=time.perf_counter() - t_search,
        info=trial.info,
        trials=trials,
        grid_keys=list(grid),
    )


def _fmt(m: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in m.items() if k != "users")
