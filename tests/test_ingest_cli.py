"""`edgerec data prepare/info/fetch` through Typer's CliRunner: happy paths, one-line errors, exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from training.data.cli import register
from training.data.dataset import PreparedDataset


@pytest.fixture
def app() -> typer.Typer:
    root = typer.Typer()
    register(root)
    return root


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    """6 users x 6 items, every user rates every item (so any k-core up to 6 keeps all), one low rating."""
    d = tmp_path / "toy"
    d.mkdir()
    rows = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(6):
        for i in range(6):
            rows.append(f"u{u}\ti{i}\t{2 if (u, i) == (0, 0) else 5}\t{u * 10 + i}")
    (d / "toy.inter").write_text("\n".join(rows) + "\n")
    (d / "toy.item").write_text(
        "item_id:token\ttitle:token_seq\n" + "".join(f"i{i}\tThing {i}\n" for i in range(6))
    )
    return d


def test_prepare_then_info(app: typer.Typer, toy: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EDGEREC_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    res = runner.invoke(app, ["data", "prepare", str(toy), "--k-core", "2", "--split", "temporal"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "home" / "data" / "toy"  # default --out is $EDGEREC_HOME/data/<name>
    ds = PreparedDataset.load(out)
    assert (ds.n_users, ds.n_items) == (6, 6)
    assert ds.train.nnz + ds.valid.nnz + ds.test.nnz == 35  # the rating of 2 is dropped
    assert ds.split["kind"] == "temporal"
    assert "35" in res.output and "users" in res.output
    info = runner.invoke(app, ["data", "info", "toy"])  # a bare name is looked up under $EDGEREC_HOME/data
    assert info.exit_code == 0, info.output
    assert ds.fingerprint[:16] in info.output


def test_prepare_csv_flags(app: typer.Typer, tmp_path: Path) -> None:
    rows = "".join(f"{u};{i};5\n" for u in range(3) for i in range(3))
    (tmp_path / "r.txt").write_text("who;what;stars\n" + rows)
    (tmp_path / "items.tsv").write_text("id\tname\n0\tPen\n1\tPad\n2\tInk\n")
    args = ["data", "prepare", str(tmp_path / "r.txt"), "--out", str(tmp_path / "o"), "--format", "csv"]
    args += ["--user-col", "who", "--item-col", "what", "--rating-col", "stars", "--sep", ";"]
    args += ["--item-file", str(tmp_path / "items.tsv"), "--item-id-col", "id", "--text-cols", "name=title"]
    args += ["--k-core", "1", "--name", "mini"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    ds = PreparedDataset.load(tmp_path / "o")
    assert ds.name == "mini" and ds.item_text == {"title": ["Pen", "Pad", "Ink"]}


def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    app: typer.Typer, toy: Path, tmp_path: Path
) -> None:
    with open(toy / "toy.inter", "a") as f:
        f.write("u9\ti9\tlots\t1\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["data", "prepare", str(toy), "--out", str(out)])
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "toy.inter, line 38, field 'rating'" in lines[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["toy"]


def test_refuses_to_replace_a_folder_that_is_not_a_dataset(
    app: typer.Typer, toy: Path, tmp_path: Path
) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    res = CliRunner().invoke(app, ["data", "prepare", str(toy), "--out", str(precious)])
    assert res.exit_code == 2 and "refusing to replace" in res.output
    assert (precious / "notes.txt").read_text() == "keep me"


def test_replaces_an_earlier_dataset(app: typer.Typer, toy: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "out"
    assert (
        runner.invoke(app, ["data", "prepare", str(toy), "--out", str(out), "--k-core", "1"]).exit_code == 0
    )
    res = runner.invoke(
        app, ["data", "prepare", str(toy), "--out", str(out), "--all-ratings", "--k-core", "1"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads((out / "meta.json").read_text())["train"] + 2 * 6 == 36  # 36 events, 6 valid + 6 test
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "toy"]  # no backup or temp folders left


@pytest.mark.parametrize(
    "args",
    [
        ["data", "prepare", "no/such/path"],
        ["data", "prepare", "{toy}", "--name", "../escape"],
        ["data", "prepare", "{toy}", "--k-core", "50", "--out", "{tmp}/o"],  # nothing survives
        ["data", "prepare", "{toy}", "--format", "csv", "--sep", "ab"],
        ["data", "info", "{tmp}"],
        ["data", "fetch", "no-such-dataset", "--dest", "{tmp}/s"],
    ],
)
def test_errors_exit_2(app: typer.Typer, toy: Path, tmp_path: Path, args: list[str]) -> None:
    args = [a.format(toy=toy, tmp=tmp_path) for a in args]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and "Traceback" not in res.output


def test_registered_in_the_edgerec_cli() -> None:
    from edgerec.cli import app as edgerec_app

    res = CliRunner().invoke(edgerec_app, ["data", "--help"])
    assert res.exit_code == 0 and "prepare" in res.output and "fetch" in res.output
