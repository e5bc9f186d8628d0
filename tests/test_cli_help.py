"""`edgerec ... --help` as a user reads it: defaults written in a help text stay visible (rich would take
a bracketed "[default: ...]" for markup and drop it)."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from edgerec.cli import app


def _help(*args: str) -> str:
    r = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert r.exit_code == 0, r.output
    return re.sub(r"\s+", " ", r.output)


@pytest.mark.parametrize(
    "command, shown",
    [
        (("serve",), "Bind address (default: EDGEREC_HOST or 0.0.0.0)"),
        (("serve",), "Port (default: EDGEREC_PORT or 8000)"),
        (("demo",), "Port to serve on (default: a free one)"),
        (("data", "prepare"), "(default: $EDGEREC_HOME/data/<name>)"),
        (("models", "list"), "(default: $EDGEREC_MODEL_STORE or ./.edgerec/models)"),
    ],
)
def test_defaults_in_help_texts_are_shown(command, shown):
    assert shown in _help(*command)


def test_every_command_has_help():
    out = _help()
    for name in ("data", "evaluate", "train", "export", "models", "serve", "demo"):
        assert f" {name} " in out
