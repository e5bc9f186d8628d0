"""The committed model results describe the recipe ``edgerec train`` runs today (issue 14: "no overrides on
the default variant")."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.model_bench import ADDED_OFF, _default_recipe, recipe_hash  # noqa: E402

RESULTS = sorted((ROOT / "benchmarks" / "results").glob("model-amazon-*.json"))


@pytest.mark.parametrize("path", RESULTS, ids=[p.stem for p in RESULTS])
def test_committed_results_are_of_todays_default_recipe(path: Path) -> None:
    doc = json.loads(path.read_text())
    assert doc["default_variant"] == "full" and doc["variants"]["full"]["overrides"] == {}
    assert doc["default_recipe"] == _default_recipe(), (
        f"{path.name} was made under another default recipe: TrainConfig's defaults changed. A new knob "
        "that is off by default belongs in model_bench.ADDED_OFF; a changed recipe needs its results rerun."
    )


def test_a_knob_added_off_leaves_the_recipe_and_turned_on_changes_it() -> None:
    from training.recipe.train import TrainConfig

    assert (
        recipe_hash(TrainConfig(dataset="x", seed=3, soup_size=ADDED_OFF["soup_size"])) == _default_recipe()
    )
    assert recipe_hash(TrainConfig(dataset="", soup_size=4)) != _default_recipe()
    assert recipe_hash(TrainConfig(dataset="", lr=3e-4)) != _default_recipe()
