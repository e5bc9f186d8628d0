"""`edgerec export RUN_DIR`: a finished training run → a model version → published (and promoted).

Known failures (missing run or checkpoint, wrong dataset, an ONNX encoder that disagrees with torch, store
errors) print one line and exit with code 2; nothing is published unless the whole export succeeded.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from enum import StrEnum
from pathlib import Path

import typer

from model_store.cli import STORE_OPTION

EXIT_FAILED = 2


class IndexKind(StrEnum):
    exact = "exact"
    ivf = "ivf"
    hnsw = "hnsw"


def export_cmd(
    run_dir: Path = typer.Argument(..., help="Finished training run folder (holds model.safetensors)."),
    store: Path | None = STORE_OPTION,
    publish: bool = typer.Option(True, "--publish/--no-publish", help="Publish the version into the store."),
    promote: bool = typer.Option(False, "--promote", help="Make the published version the served one."),
    index: IndexKind = typer.Option(IndexKind.exact, "--index", help="FAISS index over the item embeddings."),
    int8: bool = typer.Option(False, "--int8", help="Also write encoder.int8.onnx (INT8 weights)."),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Keep the version folder here (default: RUN_DIR/export with --no-publish, else a temp folder).",
        show_default=False,
    ),
    dataset: str | None = typer.Option(
        None, "--dataset", help="Prepared dataset folder, when the run's recorded path does not resolve here."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out folder."),
) -> None:
    """Export RUN_DIR as a model version (ONNX encoder, item embeddings, FAISS index, graph, metadata)."""
    from model_store import ModelStoreError
    from training.export.exporter import ExportError, export_run
    from training.export.exporter import publish as publish_folder

    if promote and not publish:
        typer.echo("error: --promote needs --publish", err=True)
        raise typer.Exit(EXIT_FAILED)
    if not run_dir.is_dir():
        typer.echo(f"error: run folder {run_dir} does not exist", err=True)
        raise typer.Exit(EXIT_FAILED)
    scratch = None
    if out is None:
        if publish:
            scratch = Path(tempfile.mkdtemp(prefix="edgerec-export-"))
            out = scratch / "version"
        else:
            out = run_dir / "export"
    try:
        folder = export_run(run_dir, out, index.value, int8, dataset=dataset, overwrite=overwrite)
        info = json.loads((folder / "export.json").read_text())
        typer.echo(
            f"exported {run_dir} -> {folder if scratch is None else '(temporary folder)'}: encoder via "
            f"{info['exporter']}, max |onnx - torch| {info['parity_max_abs_diff']:.1e}, "
            f"index {info['index_kind']}"
            + (f", int8 max |diff| {info['int8']['max_abs_diff']:.1e}" if "int8" in info else "")
        )
        if publish:
            version = publish_folder(folder, store, promote=promote)
            typer.echo(f"published {version}" + (" (promoted)" if promote else ""))
    except (ExportError, ModelStoreError, FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
