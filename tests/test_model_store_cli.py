"""`edgerec models ...` through Typer's CliRunner on a fresh app (independent of the other areas)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from model_store import ModelStore
from model_store.cli import register


@pytest.fixture
def app() -> typer.Typer:
    a = typer.Typer()
    register(a)

    @a.callback()
    def _root() -> None:  # keeps `models` a subcommand even with a single registered group
        pass

    return a


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _src(folder: Path, tag: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "items.json").write_text(json.dumps([tag]))
    (folder / "popularity.npy").write_bytes(b"\x93NUMPY" + tag.encode())
    return folder


def _invoke(runner: CliRunner, app: typer.Typer, *args: str):
    return runner.invoke(app, ["models", *args], env={"COLUMNS": "200"})


def test_publish_list_show_verify_promote_rollback_gc(app, runner, tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"dataset_fingerprint": "fp", "metrics": {"test": {"ndcg@20": 0.0421}}}))

    r = _invoke(
        runner, app, "publish", str(_src(tmp_path / "a", "a")), "--metadata", str(meta), "--store", store
    )
    assert r.exit_code == 0, r.output
    va = r.output.split()[-1]
    r = _invoke(runner, app, "publish", str(_src(tmp_path / "b", "b")), "--promote", "--store", store)
    assert r.exit_code == 0, r.output
    vb = r.output.split("\n")[0].split()[-1]
    assert f"promoted {vb}" in r.output

    r = _invoke(runner, app, "list", "--store", store)
    assert r.exit_code == 0, r.output
    assert va in r.output and vb in r.output
    assert "ndcg@20=0.0421" in r.output
    assert "valid (all users)" in r.output and "max_eval_users" in r.output  # not the per-epoch subset
    line_b = next(line for line in r.output.splitlines() if vb in line)
    assert "*" in line_b
    r = _invoke(runner, app, "list", "--json", "--store", store)
    rows = json.loads(r.output)
    assert [(x["version"], x["promoted"]) for x in rows] == [(va, False), (vb, True)]
    assert rows[0]["metrics"]["test"] == {"ndcg@20": 0.0421}

    r = _invoke(runner, app, "show", va, "--store", store, "--json")
    assert r.exit_code == 0, r.output
    shown = json.loads(r.output)
    assert shown["dataset_fingerprint"] == "fp" and set(shown["files"]) == {"items.json", "popularity.npy"}
    r = _invoke(runner, app, "show", "current", "--store", store)
    assert r.exit_code == 0 and vb in r.output and "popularity.npy" in r.output

    r = _invoke(runner, app, "verify", va, "--store", store)
    assert r.exit_code == 0 and f"{va}: OK (2 files" in r.output

    r = _invoke(runner, app, "promote", va, "--store", store)
    assert r.exit_code == 0 and ModelStore(store).current() == va
    r = _invoke(runner, app, "rollback", "--store", store)
    assert r.exit_code == 0 and f"rolled back to {vb}" in r.output
    assert ModelStore(store).current() == vb

    r = _invoke(runner, app, "gc", "--keep", "0", "--store", store)
    assert r.exit_code == 0 and "deleted 1 version(s)" in r.output and va in r.output


def test_store_from_environment(app, runner, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EDGEREC_MODEL_STORE", str(tmp_path / "envstore"))
    r = _invoke(runner, app, "publish", str(_src(tmp_path / "a", "a")))
    assert r.exit_code == 0, r.output
    assert len(ModelStore(tmp_path / "envstore").list()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "v20000101-000000-000-00000000"], "not found"),
        (["show", "nonsense"], "is not a version id"),
        (["rollback"], "no version has been promoted"),
        (["promote", "current"], "no version has been promoted"),
    ],
)
def test_errors_are_one_line_exit_2(app, runner, tmp_path: Path, args: list[str], message: str) -> None:
    r = _invoke(runner, app, *args, "--store", str(tmp_path / "store"))
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in r.output


def test_publish_pickle_and_tampered_verify_fail_cleanly(app, runner, tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    bad = _src(tmp_path / "bad", "x")
    (bad / "model.pkl").write_bytes(b"\x80")
    r = _invoke(runner, app, "publish", str(bad), "--store", store)
    assert r.exit_code == 2 and "model.pkl" in r.stderr and "pickled" in r.stderr

    (bad / "model.pkl").unlink()
    vid = ModelStore(store).publish(bad)
    f = ModelStore(store).path(vid) / "items.json"
    f.parent.chmod(f.parent.stat().st_mode | stat.S_IWUSR)
    f.chmod(0o644)
    f.write_text('["y"]')
    r = _invoke(runner, app, "verify", vid, "--store", store)
    assert r.exit_code == 2 and "items.json: sha256 changed" in r.stderr

    meta = tmp_path / "m.json"
    meta.write_text("{not json")
    r = _invoke(runner, app, "publish", str(bad), "--metadata", str(meta), "--store", store)
    assert r.exit_code == 2 and "not valid JSON" in r.stderr
