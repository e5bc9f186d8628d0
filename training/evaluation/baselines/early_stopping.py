"""Early stopping on validation for the iterative baselines (LightGCN, Multi-VAE, SASRec).

Every ``eval_every`` epochs the model is scored on validation with the shared harness; the best state by
R@20 + R@40 + N@100 is kept (a copy of the parameters), and training stops after ``patience`` evaluations
without improvement or when the wall-clock budget is spent. The budget bounds CPU time on shared machines;
the epoch reached and the reason for stopping are reported with the results.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import scipy.sparse as sp

from training.evaluation.baselines.base import selection_score, validation_view
from training.evaluation.harness import evaluate


class EarlyStopping:
    def __init__(
        self,
        train: sp.csr_matrix,
        valid: sp.csr_matrix | None,
        *,
        eval_every: int,
        patience: int,
        budget_s: float,
        max_epochs: int,
        log=None,
    ):
        if eval_every < 1 or patience < 1 or max_epochs < 1 or budget_s <= 0:
            raise ValueError("eval_every, patience, max_epochs must be >= 1 and budget_s > 0")
        self.view = None if valid is None else validation_view(train, valid)
        self.eval_every, self.patience = eval_every, patience
        self.budget_s, self.max_epochs = budget_s, max_epochs
        self.log = log
        self.start = time.perf_counter()
        self.best_score = float("-inf")
        self.best_epoch = 0
        self.best_state: dict[str, Any] | None = None
        self.best_metrics: dict[str, float] = {}
        self.bad_evals = 0
        self.stop_reason = "max_epochs"
        self.history: list[dict[str, float]] = []

    @classmethod
    def from_params(cls, train: sp.csr_matrix, valid: sp.csr_matrix | None, params: dict, log=None):
        """From a baseline's ``eval_every``, ``patience``, ``budget_s`` and ``max_epochs`` parameters."""
        return cls(
            train,
            valid,
            eval_every=int(params["eval_every"]),
            patience=int(params["patience"]),
            budget_s=float(params["budget_s"]),
            max_epochs=int(params["max_epochs"]),
            log=log,
        )

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def after_epoch(self, epoch: int, model, score_fn) -> bool:
        """Call after each epoch (1-based); returns True when training should stop."""
        last = epoch >= self.max_epochs
        over = self.elapsed() >= self.budget_s
        if self.view is not None and (epoch % self.eval_every == 0 or last or over):
            m = evaluate(score_fn, self.view, "valid")
            s = selection_score(m)
            self.history.append({"epoch": epoch, "seconds": round(self.elapsed(), 1), **m})
            if self.log:
                self.log(f"  epoch {epoch} valid sum {s:.4f} ({self.elapsed():.0f}s)")
            if s > self.best_score:
                self.best_score, self.best_epoch, self.best_metrics = s, epoch, m
                self.best_state = copy.deepcopy(model.state_dict())
                self.bad_evals = 0
            else:
                self.bad_evals += 1
                if self.bad_evals >= self.patience:
                    self.stop_reason = "patience"
                    return True
        if over:
            self.stop_reason = "budget"
            return True
        return last

    def restore(self, model) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)

    def info(self, epochs_run: int) -> dict[str, Any]:
        return {
            "epochs_run": epochs_run,
            "best_epoch": self.best_epoch,
            "stop_reason": self.stop_reason,
            "train_seconds": round(self.elapsed(), 1),
            "budget_s": self.budget_s,
            "history": self.history,
        }
