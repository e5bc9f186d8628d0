"""The one `edgerec` command.

Each area registers its own subcommands; heavy imports stay inside the commands.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="edgerec",
    help="Graph-attentive GPT-2 recommendations: prepare data, train, evaluate, export, store, serve.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# Modules that each expose `register(app)`. Order is the order of the help text.
COMMAND_MODULES = [
    "training.data.cli",
    "training.evaluation.cli",
    "training.recipe.cli",
    "training.export.cli",
    "model_store.cli",
    "service.cli",
]

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


if __name__ == "__main__":
    app()
