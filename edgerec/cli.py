"""The one `edgerec` command.

Each area registers its own subcommands; heavy imports (torch, transformers, faiss) stay inside the
commands, so `edgerec --help` and the service's `edgerec serve` start fast.
"""

from __future__ import annotations

import typer

from edgerec import demo, retrain
from model_store import cli as models_cli
from service import cli as service_cli
from training.data import cli as data_cli
from training.evaluation import cli as evaluate_cli
from training.export import cli as export_cli
from training.recipe import cli as train_cli

app = typer.Typer(
    name="edgerec",
    help="Graph-attentive GPT-2 recommendations: prepare data, train, evaluate, export, store, serve.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# The order is the order of the help text: the offline stages, the store, then serving.
for _area in (data_cli, evaluate_cli, train_cli, export_cli, models_cli, service_cli, retrain, demo):
    _area.register(app)


if __name__ == "__main__":
    app()
