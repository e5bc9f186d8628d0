"""Results table of one dataset: JSON (everything), Markdown (the table + the command), PNG (bar chart).

Rows are plain dicts (``BaselineResult.to_dict()`` or any producer of the same keys: ``model``, ``params``,
``valid``, ``test``, ``fit_seconds``, optionally ``search_seconds`` and ``info``), so a trained GPT-2 run can
join the same table as an extra row.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import durable as atomic

TABLE_METRICS = ("recall@20", "recall@40", "ndcg@100")
SHORT = {"recall@20": "R@20", "recall@40": "R@40", "ndcg@100": "N@100"}


def fmt_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) or "-"


def tuned_params(row: dict[str, Any], grid_keys: Sequence[str] | None = None) -> dict[str, Any]:
    """The hyper-parameters worth showing: those the grid searched, else all."""
    keys = grid_keys if grid_keys is not None else row.get("grid_keys")
    params = row.get("params", {})
    return {k: params[k] for k in keys if k in params} if keys else params


def merge_rows(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replace rows of the same model, keep the others (order: old order, then new models)."""
    by_model = {r["model"]: r for r in new}
    out = [by_model.pop(r["model"], r) for r in old]
    return out + [r for r in new if r["model"] in by_model]


def build_document(
    rows: list[dict[str, Any]], dataset_summary: dict[str, Any], command: str
) -> dict[str, Any]:
    return {
        "dataset": dataset_summary,
        "command": command,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "protocol": "full ranking over all items; only train items masked, for validation and for test "
        "(validation items stay rankable at test); mean over users with held-out items; hyper-parameters "
        "and epochs chosen on valid R@20+R@40+N@100; test evaluated once",
        "rows": rows,
    }


def markdown(doc: dict[str, Any]) -> str:
    ds = doc["dataset"]
    lines = [
        f"### {ds['name']} ({ds['users']:,} users, {ds['items']:,} items, "
        f"{ds['train']:,} train interactions)",
        "",
        "| model | R@20 | R@40 | N@100 | valid R@20/R@40/N@100 | fit (s) | search (s) "
        "| chosen hyper-parameters |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        t, v = r["test"], r["valid"]
        valid = "/".join(f"{v[m]:.4f}" for m in TABLE_METRICS)
        extra = ""
        info = r.get("info") or {}
        if "best_epoch" in info:
            extra = f"; best epoch {info['best_epoch']} of {info['epochs_run']} ({info['stop_reason']})"
        lines.append(
            f"| {r['model']} | {t['recall@20']:.4f} | {t['recall@40']:.4f} | {t['ndcg@100']:.4f} | {valid} "
            f"| {r['fit_seconds']:.1f} | {r.get('search_seconds', r['fit_seconds']):.1f} "
            f"| {fmt_params(tuned_params(r))}{extra} |"
        )
    lines += [
        "",
        f"Split: {json.dumps(ds.get('split', {}))}; fingerprint `{ds.get('fingerprint', '')[:16]}`. "
        f"Machine: {doc['machine']['cpus']} CPUs ({doc['machine']['platform']}).",
        "",
        f"Command: `{doc['command']}`",
        "",
    ]
    return "\n".join(lines)


def bar_chart(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = doc["rows"]
    x = np.arange(len(TABLE_METRICS))
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for n, r in enumerate(rows):
        vals = [r["test"][m] for m in TABLE_METRICS]
        bars = ax.bar(x + (n - (len(rows) - 1) / 2) * width, vals, width, label=r["model"])
        ax.bar_label(bars, fmt="%.3f", fontsize=6, rotation=90, padding=2)
    ax.set_xticks(x, [SHORT[m] for m in TABLE_METRICS])
    ax.set_ylabel("test")
    ax.set_title(f"{doc['dataset']['name']}: test metrics (hyper-parameters chosen on validation)")
    ax.margins(y=0.15)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_outputs(doc: dict[str, Any], out_dir: Path, stem: str) -> dict[str, Path]:
    """Write ``stem.json``, ``stem.md``, ``stem.png`` into ``out_dir`` (each atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("json", "md", "png")}
    atomic.write_text(paths["json"], json.dumps(doc, indent=1, default=_json_default) + "\n")
    atomic.write_text(paths["md"], markdown(doc))
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=out_dir)
    os.close(fd)
    try:
        bar_chart(doc, Path(tmp))
        os.replace(tmp, paths["png"])
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return paths


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
