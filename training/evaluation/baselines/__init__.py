"""Strong baselines behind one small interface (:class:`Recommender`), selected on validation only.

Heavy dependencies (torch) are imported by the modules that need them, so ``REGISTRY`` lists classes lazily.
"""

from __future__ import annotations

import importlib

from training.evaluation.baselines.base import BaselineResult, Recommender, select_and_test

# CLI name -> "module:Class"; order is the order of the results table
REGISTRY: dict[str, str] = {
    "pop": "training.evaluation.baselines.pop:Pop",
    "itemknn": "training.evaluation.baselines.itemknn:ItemKNN",
    "itemknn-noshrink": "training.evaluation.baselines.itemknn:ItemKNNNoShrink",
    "ease": "training.evaluation.baselines.ease:EASE",
    "lightgcn": "training.evaluation.baselines.lightgcn:LightGCN",
    "multivae": "training.evaluation.baselines.multivae:MultiVAE",
    "sasrec": "training.evaluation.baselines.sasrec:SASRec",
}


def get(name: str) -> type[Recommender]:
    key = name.strip().lower().replace("_", "-")
    if key not in REGISTRY:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(REGISTRY)}")
    module, cls = REGISTRY[key].split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["REGISTRY", "BaselineResult", "Recommender", "get", "select_and_test"]
