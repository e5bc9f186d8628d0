"""`edgerec models ...`: list, show, verify, publish, promote, roll back and garbage-collect versions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

models_app = typer.Typer(help="The model store: immutable, verified model versions and the promoted one.")

STORE_OPTION = typer.Option(
    None,
    "--store",
    help="Model store folder (default: $EDGEREC_MODEL_STORE or ./.edgerec/models).",
    show_default=False,
)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


def _store(path: Path | None):
    from .store import ModelStore

    return ModelStore(path)


@contextmanager
def _errors() -> Iterator[None]:
    """Known failures become one line on stderr and exit code 2 (no traceback)."""
    from .errors import ModelStoreError

    try:
        yield
    except (ModelStoreError, FileNotFoundError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None


def _console():
    from rich.console import Console

    con = Console()
    # Piped output (files, CI logs) would otherwise be squeezed to 80 columns and fold every metric.
    return con if con.is_terminal else Console(width=max(con.width, 140))


def _fmt_metrics(metrics: dict[str, dict[str, float]], split: str, sep: str = " ") -> str:
    vals = metrics.get(split) or {}
    return sep.join(f"{k}={v:.4g}" for k, v in sorted(vals.items())) or "-"


def _fmt_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@models_app.command("list")
def list_cmd(
    store: Path | None = STORE_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the rows as a JSON list."),
) -> None:
    """All versions, oldest first; * marks the promoted one, ^ the rollback target."""
    from dataclasses import asdict

    from rich import box
    from rich.table import Table

    with _errors():
        s = _store(store)
        rows = s.list()
        if as_json:
            typer.echo(json.dumps([asdict(r) for r in rows], indent=2))
            return
        if not rows:
            typer.echo(f"no versions in {s.root}")
            return
        table = Table(
            title=f"model versions in {s.root}",
            caption="valid and test: the selected model over all users of each split (training's per-epoch "
            "log may score a subset, max_eval_users)",
            box=box.SIMPLE_HEAD,
        )
        table.add_column("")
        table.add_column("version", no_wrap=True)
        table.add_column("created_at (UTC)", no_wrap=True)
        table.add_column("size", no_wrap=True, justify="right")
        table.add_column("valid (all users)", min_width=17, overflow="fold")
        table.add_column("test (all users)", min_width=17, overflow="fold")
        for r in rows:
            mark = "*" if r.promoted else ("^" if r.previous else "")
            if r.error:
                table.add_row(mark, r.version, "-", _fmt_size(r.size_bytes), f"[red]{r.error}[/red]", "")
                continue
            created = (r.created_at or "-").replace("T", " ").rstrip("Z").split(".")[0]
            table.add_row(
                mark,
                r.version,
                created,
                _fmt_size(r.size_bytes),
                _fmt_metrics(r.metrics, "valid", "\n"),
                _fmt_metrics(r.metrics, "test", "\n"),
            )
        _console().print(table)


@models_app.command("show")
def show_cmd(
    version: str = typer.Argument(..., help="Version id, or current / previous / latest."),
    store: Path | None = STORE_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """A version's manifest: files, metrics, dataset fingerprint, model config, code version."""
    from rich.table import Table

    with _errors():
        info: dict[str, Any] = _store(store).show(version)
        if as_json:
            typer.echo(json.dumps(info, indent=2, sort_keys=True))
            return
        con = _console()
        title = info["version"] + ("  (promoted)" if info["promoted"] else "")
        head = Table(show_header=False, title=title)
        head.add_column("field")
        head.add_column("value")
        head.add_row("created_at", info["created_at"])
        head.add_row("dataset_fingerprint", str(info["dataset_fingerprint"]))
        code = info["code_version"]
        made_by = (
            f"edgerec {code['edgerec']} @ {code['git_commit'] or 'unknown commit'}"
            if code
            else "not recorded"
        )
        head.add_row("code_version", made_by)
        head.add_row("valid", _fmt_metrics(info["metrics"], "valid"))
        head.add_row("test", _fmt_metrics(info["metrics"], "test"))
        head.add_row("model_config", json.dumps(info["model_config"], sort_keys=True))
        if info["extra"]:
            head.add_row("extra", json.dumps(info["extra"], sort_keys=True))
        con.print(head)
        files = Table(title="files")
        for col in ("path", "size", "sha256"):
            files.add_column(col)
        for name, entry in sorted(info["files"].items()):
            files.add_row(name, _fmt_size(entry["size"]), entry["sha256"][:16] + "…")
        con.print(files)


@models_app.command("verify")
def verify_cmd(
    version: str = typer.Argument("current", help="Version id, or current / previous / latest."),
    store: Path | None = STORE_OPTION,
) -> None:
    """Recompute every file's size and sha256 against the manifest."""
    with _errors():
        s = _store(store)
        vid = s.resolve(version)
        m = s.verify(vid)
        total = sum(e.size for e in m.files.values())
        typer.echo(f"{vid}: OK ({len(m.files)} files, {_fmt_size(total)})")


@models_app.command("publish")
def publish_cmd(
    folder: Path = typer.Argument(..., help="Folder holding the model files (see docs/ARCHITECTURE.md §4)."),
    metadata: Path | None = typer.Option(
        None,
        "--metadata",
        help="JSON file with dataset_fingerprint, model_config, metrics {valid, test}, code_version, extra.",
    ),
    promote: bool = typer.Option(False, "--promote", help="Promote the new version right away."),
    store: Path | None = STORE_OPTION,
) -> None:
    """Copy a folder into the store as a new immutable version."""
    with _errors():
        meta = None
        if metadata is not None:
            try:
                meta = json.loads(metadata.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{metadata}: not valid JSON ({exc})") from None
        s = _store(store)
        vid = s.publish(folder, meta)
        typer.echo(f"published {vid}")
        if promote:
            s.promote(vid)
            typer.echo(f"promoted {vid}")


@models_app.command("promote")
def promote_cmd(
    version: str = typer.Argument(..., help="Version id, or previous / latest."),
    store: Path | None = STORE_OPTION,
) -> None:
    """Verify a version and make it the CURRENT one served."""
    with _errors():
        vid = _store(store).promote(version)
        typer.echo(f"promoted {vid}")


@models_app.command("rollback")
def rollback_cmd(store: Path | None = STORE_OPTION) -> None:
    """Make the previously promoted version CURRENT again."""
    with _errors():
        vid = _store(store).rollback()
        typer.echo(f"rolled back to {vid}")


@models_app.command("gc")
def gc_cmd(
    keep: int = typer.Option(3, "--keep", min=0, help="How many of the newest versions to keep."),
    store: Path | None = STORE_OPTION,
) -> None:
    """Delete old versions, keeping the newest N plus the current and previous promoted ones."""
    with _errors():
        deleted = _store(store).gc(keep=keep)
        typer.echo(f"deleted {len(deleted)} version(s)" + (": " + " ".join(deleted) if deleted else ""))
