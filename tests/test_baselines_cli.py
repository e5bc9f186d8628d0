"""`edgerec evaluate`: writes JSON, Markdown and PNG for a tiny real slice; clear errors for bad arguments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from shared_data import office_users
from typer.testing import CliRunner

from training.evaluation import cli as evaluate_cli


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    a = typer.Typer()
    evaluate_cli.register(a)

    @a.callback()
    def _root() -> None:  # keep `evaluate` a named subcommand, as under the real `edgerec` app
        pass

    return a


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    from training.data.dataset import prepare

    return prepare(office_users(1200, seed=1), "office-tiny").save(
        tmp_path_factory.mktemp("data") / "office-tiny"
    )


def test_cli_writes_json_markdown_and_png(app, tiny_dataset, tmp_path):
    out = tmp_path / "results"
    args = ["evaluate", "--baselines", str(tiny_dataset), "--only", "pop,ease", "--out", str(out)]
    res = CliRunner().invoke(app, [*args, "--grid", "ease.lam=10,100"])
    assert res.exit_code == 0, res.output
    stem = out / "baselines-office-tiny"
    doc = json.loads(stem.with_suffix(".json").read_text())
    assert [r["model"] for r in doc["rows"]] == ["Pop", "EASE"]
    ease = doc["rows"][1]
    assert ease["params"]["lam"] in (10, 100) and len(ease["trials"]) == 2
    assert set(ease["test"]) == {"recall@20", "recall@40", "ndcg@100", "users"}
    md = stem.with_suffix(".md").read_text()
    assert "| EASE |" in md and "Command: `edgerec evaluate" in md
    assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "EASE" in res.output  # the rich table

    # --merge keeps the rows of models not re-run
    res = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--baselines",
            str(tiny_dataset),
            "--only",
            "itemknn-noshrink",
            "--grid",
            "itemknn-noshrink.k=20",
            "--out",
            str(out),
            "--merge",
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(stem.with_suffix(".json").read_text())
    assert [r["model"] for r in doc["rows"]] == ["Pop", "EASE", "ItemKNN (no shrink)"]


def test_extra_rows_join_the_same_table(tiny_dataset, tmp_path):
    from training.data.dataset import PreparedDataset

    ds = PreparedDataset.load(tiny_dataset)
    row = {
        "model": "GraphGPT (run x)",
        "params": {"layers": 2},
        "valid": {"recall@20": 0.1, "recall@40": 0.2, "ndcg@100": 0.05, "users": 5},
        "test": {"recall@20": 0.11, "recall@40": 0.21, "ndcg@100": 0.06, "users": 5},
        "fit_seconds": 12.0,
    }
    doc, paths = evaluate_cli.evaluate_rows(ds, [row], tmp_path, "test command")
    assert doc["rows"][0]["model"] == "GraphGPT (run x)"
    assert "| GraphGPT (run x) | 0.1100 | 0.2100 | 0.0600 |" in paths["md"].read_text()


def test_cli_argument_errors(app, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert res.exit_code == 2 and "nothing to evaluate" in res.output
    res = runner.invoke(app, ["evaluate", "--baselines", "--only", "svd", str(tmp_path)])
    assert res.exit_code == 2 and "unknown baseline(s) svd" in res.output
    res = runner.invoke(app, ["evaluate", "--baselines", "--only", "ease", "--grid", "lam=1", str(tmp_path)])
    assert res.exit_code == 2 and "model.param=v1,v2" in res.output
    res = runner.invoke(app, ["evaluate", "--baselines", "--only", "ease", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "missing" in res.output


def test_parse_overrides():
    assert evaluate_cli.parse_overrides(["ease.lam=10,2.5", "multivae.hidden=0"]) == {
        "ease": {"lam": [10, 2.5]},
        "multivae": {"hidden": [0]},
    }


def test_default_output_goes_to_edgerec_home_not_the_checkout(app, tiny_dataset, tmp_path, monkeypatch):
    """A user's `edgerec evaluate` must not dirty the repo's published tables (benchmarks/results)."""
    home = tmp_path / "home"
    monkeypatch.setenv("EDGEREC_HOME", str(home))
    monkeypatch.chdir(tmp_path)  # a relative default would land here
    res = CliRunner().invoke(app, ["evaluate", "--baselines", str(tiny_dataset), "--only", "pop"])
    assert res.exit_code == 0, res.output
    assert (home / "results" / "baselines-office-tiny.json").is_file()
    assert not (tmp_path / "benchmarks").exists()
