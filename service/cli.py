"""`edgerec serve`: the service under uvicorn (settings from EDGEREC_* environment variables)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import typer

from service.config import MULTIPROC_ENV


def serve(
    host: str | None = typer.Option(None, "--host", help="Bind address (default: EDGEREC_HOST or 0.0.0.0)."),
    port: int | None = typer.Option(None, "--port", help="Port (default: EDGEREC_PORT or 8000)."),
    workers: int | None = typer.Option(None, "--workers", help="uvicorn worker processes (default: 1)."),
) -> None:
    """Serve the promoted model over HTTP (settings from EDGEREC_* environment variables)."""
    import uvicorn

    from service.config import Settings

    settings = Settings()
    n_workers = workers or settings.workers
    if n_workers > 1 and not settings.redis_url:
        # Each worker would start its own embedded server on the same data folder.
        raise typer.BadParameter("more than one worker needs a shared Redis: set EDGEREC_REDIS_URL")
    made = _metrics_folder() if n_workers > 1 else None
    try:
        uvicorn.run(
            "service.main:create_app",
            factory=True,
            host=host or settings.host,
            port=port or settings.port,
            workers=n_workers,
            log_config=None,  # the app configures JSON logging itself
            access_log=False,
            proxy_headers=True,
        )
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)


def _metrics_folder() -> Path | None:
    """Point the workers at a folder for their metric values (service/metrics.py): PROMETHEUS_MULTIPROC_DIR
    if set, emptied (values of an earlier run must not be summed in), else a new temporary folder, which is
    returned (to be removed at exit). Set in this process's environment, which the workers inherit, before
    any of them imports prometheus-client."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        for stale in Path(given).glob("*.db"):
            stale.unlink()
        return None
    made = Path(tempfile.mkdtemp(prefix="edgerec-metrics-"))
    os.environ[MULTIPROC_ENV] = str(made)
    return made


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
