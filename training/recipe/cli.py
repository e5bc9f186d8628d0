"""`edgerec train DATASET` (the whole recipe), `edgerec pretrain DATASET` (needs pretrain_rounds > 0),
`edgerec finetune DATASET`.

Multi-process: ``torchrun --nproc-per-node N -m edgerec.cli train DATASET`` (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

_STAGES = {"train": ("pretrain", "finetune"), "pretrain": ("pretrain",), "finetune": ("finetune",)}


SECTIONS = ("prompt", "bias")  # TrainConfig fields that hold a config of their own


def apply_overrides(fields: dict, overrides: list[str]) -> dict:
    """``--set`` items applied in order: ``key=JSON`` (a bare word is a string) sets a TrainConfig field, a
    whole section too (``prompt='{"n_two_hop_items": 30}'``); ``prompt.n_two_hop_items=30`` sets one field of
    a section, keeping the section's others. Unknown names are left to TrainConfig, which names them."""
    out = dict(fields)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set expects key=value, got {item!r}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        section, dot, name = key.partition(".")
        if not dot:
            out[key] = value
        elif section in SECTIONS and name and isinstance(out.get(section, {}), dict):
            out[section] = {**out.get(section, {}), name: value}
        else:
            raise typer.BadParameter(f"--set {key}: only {', '.join(SECTIONS)} take SECTION.FIELD=value")
    return out


def _run(
    stage: str,
    dataset: str,
    run_dir: Path | None,
    config: Path | None,
    overrides: list[str],
    resume: bool,
    overwrite: bool,
    quiet: bool,
) -> None:
    import torch

    from training.recipe.train import TrainConfig, train

    torch.set_num_threads(max(1, torch.get_num_threads()))
    fields: dict = json.loads(config.read_text()) if config else {}
    fields = apply_overrides(fields, overrides)
    fields["dataset"] = dataset
    if run_dir is not None:
        fields["run_dir"] = str(run_dir)
    try:
        cfg = TrainConfig.from_dict(fields)
        if stage == "pretrain" and cfg.pretrain_rounds == 0 and cfg.content_warmup == 0:
            raise ValueError(
                "pre-training is off in this config (pretrain_rounds=0, content_warmup=0: the default "
                "recipe is fine-tuning alone); the paper's schedule is --set pretrain_rounds=2 "
                "--set content_warmup=1"
            )
        metrics = train(cfg, resume=resume, overwrite=overwrite, stages=_STAGES[stage], quiet=quiet)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if metrics:
        typer.echo(json.dumps({"valid": metrics["valid"], "test": metrics["test"]}, indent=2))


def register(app: typer.Typer) -> None:
    def make(stage: str, help_text: str):
        def command(
            dataset: str = typer.Argument(
                ..., help="prepared dataset folder or name, or a raw RecBole folder"
            ),
            run_dir: Path | None = typer.Option(
                None, "--run-dir", help="default $EDGEREC_HOME/runs/<dataset>"
            ),
            config: Path | None = typer.Option(None, "--config", help="JSON file of TrainConfig fields"),
            overrides: list[str] = typer.Option(
                [],
                "--set",
                help="TrainConfig field=JSON, or prompt.FIELD=JSON / bias.FIELD=JSON; repeatable",
            ),
            resume: bool = typer.Option(False, "--resume", help="continue from the run folder's checkpoints"),
            overwrite: bool = typer.Option(False, "--overwrite", help="delete an existing run folder first"),
            quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
        ) -> None:
            _run(stage, dataset, run_dir, config, overrides, resume, overwrite, quiet)

        command.__doc__ = help_text
        app.command(stage)(command)

    make(
        "train",
        "Train the graph-attentive GPT-2: fine-tuning (after pre-training when pretrain_rounds or "
        "content_warmup > 0; off by default), test metrics.",
    )
    make("pretrain", "Only pre-training (collaborative + content prompts); needs pretrain_rounds > 0.")
    make("finetune", "Only fine-tuning (starts from the run's pre-trained weights when present).")
