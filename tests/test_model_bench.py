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


def test_rebase_makes_the_variant_that_is_todays_default_full() -> None:
    from benchmarks.model_bench import rebase
    from training.recipe.train import TrainConfig

    old_default = {"lr": 3e-4}  # the file's default had lr 3e-4; its "low_lr" variant is today's default
    old_hash = recipe_hash(TrainConfig(dataset="", lr=3e-4))
    runs = {
        name: {"overrides": o, "runs": [{"seed": 0, "name": name}], "summary": {}}
        for name, o in (("full", {}), ("low_lr", {"lr": 1e-4}), ("short", {"epochs": 3}))
    }
    doc = {"default_recipe": old_hash, "common_overrides": {}, "variants": runs}
    new = rebase(doc, "low_lr", old_default, "lr3e-4")
    assert new["default_recipe"] == _default_recipe() and list(new["variants"])[0] == "full"
    assert new["variants"]["full"] == {**runs["low_lr"], "overrides": {}}
    assert new["variants"]["lr3e-4"]["overrides"] == {"lr": 3e-4}
    assert new["variants"]["lr3e-4"]["runs"] == runs["full"]["runs"]
    assert new["variants"]["lr3e-4+short"]["overrides"] == {"lr": 3e-4, "epochs": 3}
    assert new["rebased"] == [{"from_recipe": old_hash, "variant": "low_lr", "old_full_as": "lr3e-4"}]
    # a wrong account of the old default, or a variant that is not today's default, is refused
    with pytest.raises(ValueError, match="not the file's default recipe"):
        rebase(doc, "low_lr", {"lr": 1e-3}, "lr3e-4")
    with pytest.raises(ValueError, match="not today's default recipe"):
        rebase(doc, "short", old_default, "lr3e-4")
    with pytest.raises(ValueError, match="already of today's"):
        rebase(new, "full", old_default, "x")


def test_a_variant_that_is_another_recipe_under_todays_default_is_not_trained_twice(capsys) -> None:
    from benchmarks.model_bench import VARIANTS, distinct_recipes

    names = [
        "full",
        "no_bias",
        "hop_bias",
        "no_neighbourhood",
        "no_neighbourhood_no_bias",
        "soup",
        "no_bias_soup",
    ]
    kept = distinct_recipes(names, {n: VARIANTS[n] for n in names})
    assert kept == ["full", "hop_bias", "no_neighbourhood", "soup"]
    said = capsys.readouterr().err
    assert "no_bias: the same recipe as full" in said and "no_bias_soup: the same recipe as soup" in said
