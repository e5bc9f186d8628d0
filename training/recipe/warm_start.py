"""Warm-started fine-tuning of a served version on a retrain snapshot (``edgerec retrain``).

The new run is a normal run folder (``training.recipe.train``: :func:`build_run`, :func:`finetune`,
:func:`test`), with three differences: its tokenizer is the served version's own word vocabulary with the
snapshot's user and item counts; there is no pre-training; and before fine-tuning every weight is taken from
the served version (``encoder.safetensors``): the transformer as it is, the id tables row for row for the
users and items the served version knew (the snapshot keeps their dense ids), and the new rows from their
neighbours in the snapshot's train graph:

* a new item: the mean embedding of the known items that co-occur with it (items of the users who chose it),
  else the mean of all known items;
* a new user: the mean embedding of the known users who share an item with them, else the mean of all known
  users.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from graphprompt.prompts import PromptConfig
from inference.encoders import MODEL_CONFIG_FILE, TORCH_WEIGHTS_FILE
from inference.item_item import ItemItem
from inference.version import EXPORT_INFO_FILE

# Fields of TrainConfig a warm start sets itself (the rest come from the served version's run).
_FORCED = {"pretrain_rounds": 0, "content_warmup": 0, "svd_init": False, "base_model": None}


def base_train_config(version_dir: str | Path, recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """The served version's training configuration: ``recorded`` (what a retrained version's manifest
    keeps), else the ``train_config.json`` of the run its ``export.json`` names, else one derived from the
    version's model and prompt configs (shape, prior, prompt fields) with the recipe's defaults."""
    if recorded:
        return dict(recorded)
    folder = Path(version_dir)
    info = json.loads((folder / EXPORT_INFO_FILE).read_text())
    run_cfg = Path(info.get("run_dir", "")) / "train_config.json"
    if info.get("run_dir") and run_cfg.is_file():
        return json.loads(run_cfg.read_text())
    mcfg = json.loads((folder / MODEL_CONFIG_FILE).read_text())
    # PromptConfig.load fills fields a file written before they existed lacks with the values that model
    # was trained with (not today's defaults), so the fine-tune builds the prompts the version serves.
    pcfg = PromptConfig.load(folder / "prompt_config.json").to_dict()
    bias = pcfg.pop("bias", {}) or {}
    pcfg.pop("tokenizer", None)
    return {
        "dataset": "",
        "seed": int(info.get("seed", 0)),
        "n_layer": mcfg["n_layer"],
        "n_embd": mcfg["n_embd"],
        "n_head": mcfg["n_head"],
        "bias_scale": mcfg.get("bias_scale", 1.0),
        "learn_bias_scale": mcfg.get("learn_bias_scale", False),
        "candidate_prior": mcfg.get("candidate_prior", True),
        "prompt": pcfg,
        "bias": bias,
    }


def served_blend(version_dir: str | Path) -> dict[str, Any]:
    """TrainConfig overrides that keep the served version's ranker choices: the candidate prior's weight
    (its ``metrics.json``) and the item-item term's λ, row cut and weight (its ``item_item/``), or no term
    where the version has none.

    A warm start keeps them instead of re-picking: the picks are made on the validation split, and a
    retrain's recent validation holds one interaction for each of a few hundred users, where the grid's
    choice is noise (in a movielens-100k replay, day 0 picked a prior weight of 4.0 on 934 users, the next
    three retrains 1.5, 4.0, 1.0). The term's rows are refitted on the snapshot (new items get theirs)."""
    folder = Path(version_dir)
    out: dict[str, Any] = {}
    path = folder / "metrics.json"
    prior = (json.loads(path.read_text()).get("prior") or {}) if path.is_file() else {}
    if prior.get("beta") is not None:
        out["prior_grid"] = [float(prior["beta"])]
    term = ItemItem.load(folder)
    if term is None:
        out["item_item"] = False
    else:
        out |= {
            "item_item_grid": [term.weight],
            "item_item_lams": [float(term.params["lam"])],
            "item_item_keeps": [int(term.params["keep"])],
            "item_item_top_n": term.top_n,
        }
        if term.next_rows is not None:  # the transitions too: refitted on the snapshot, weight kept
            out |= {"transitions": True, "transition_grid": [term.next_weight]}
    return out


def _row_means(adj: sp.csr_matrix, table: np.ndarray, rows: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Per row r of ``rows``: the mean of ``table`` over the columns adj[r] selects, else ``fallback``."""
    out = np.empty((len(rows), table.shape[1]), dtype=np.float32)
    for k, r in enumerate(rows):
        cols = adj.indices[adj.indptr[r] : adj.indptr[r + 1]]
        out[k] = table[cols].mean(0) if cols.size else fallback
    return out


def warm_rows(
    train: sp.csr_matrix, user_emb: np.ndarray, item_emb: np.ndarray, n_users: int, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """(user table [n_users, D], item table [n_items, D]): the known rows kept, the new ones from their
    neighbours (see the module docstring)."""
    n_bu, n_bi = user_emb.shape[0], item_emb.shape[0]
    a = sp.csr_matrix(train, dtype=np.float32, copy=True)  # never the caller's data
    a.data[:] = 1
    known_u = sp.diags((np.arange(n_users) < n_bu).astype(np.float32))
    known_i = sp.diags((np.arange(n_items) < n_bi).astype(np.float32))
    # item x item co-occurrence restricted to known items; user x user sharing restricted to known users
    co_items = ((a.T @ a) @ known_i).tocsr()[:, :n_bi]
    co_users = ((a @ a.T) @ known_u).tocsr()[:, :n_bu]
    co_items.eliminate_zeros()
    co_users.eliminate_zeros()
    users = np.concatenate(
        [user_emb, _row_means(co_users, user_emb, np.arange(n_bu, n_users), user_emb.mean(0))]
    )
    items = np.concatenate(
        [item_emb, _row_means(co_items, item_emb, np.arange(n_bi, n_items), item_emb.mean(0))]
    )
    return users.astype(np.float32), items.astype(np.float32)


def warm_state(model: torch.nn.Module, version_dir: str | Path, train: sp.csr_matrix) -> dict[str, int]:
    """Load the served version's weights into ``model`` (built for the snapshot; see the module docstring).

    Raises ValueError when a non-id weight's shape differs (the run is not the served version's shape)."""
    from safetensors.torch import load_file

    base = load_file(str(Path(version_dir) / TORCH_WEIGHTS_FILE))
    cfg = model.cfg
    users, items = warm_rows(
        train,
        base["user_emb.weight"].float().numpy(),
        base["item_emb.weight"].float().numpy(),
        cfg.n_users,
        cfg.n_items,
    )
    state = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        # the content tables (content pre-training only; export drops them) start as the id tables
        if name in ("user_emb.weight", "content_user_emb.weight"):
            new[name] = torch.from_numpy(users[: tensor.shape[0]]).to(tensor.dtype)
        elif name in ("item_emb.weight", "content_item_emb.weight"):
            new[name] = torch.from_numpy(items).to(tensor.dtype)
        elif name in base:
            if tuple(base[name].shape) != tuple(tensor.shape):
                raise ValueError(
                    f"served weight {name} has shape {tuple(base[name].shape)}, the warm-start run "
                    f"{tuple(tensor.shape)}: the run's configuration does not match the served version"
                )
            new[name] = base[name].to(tensor.dtype)
        else:
            new[name] = tensor  # not in the served encoder (none today): the fresh initialisation
    model.load_state_dict(new)
    return {
        "users_kept": int(base["user_emb.weight"].shape[0]),
        "items_kept": int(base["item_emb.weight"].shape[0]),
    }


def _prepare_run_dir(version_dir: Path, run_dir: Path, n_users: int, n_items: int) -> None:
    """A fresh run folder with the served word vocabulary and the snapshot's id counts (build_run loads a
    tokenizer it finds there)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    shutil.copyfile(version_dir / "tokenizer.json", run_dir / "tokenizer.json")
    pcfg = json.loads((version_dir / "prompt_config.json").read_text())
    pcfg["tokenizer"] = {**pcfg["tokenizer"], "n_users": n_users, "n_items": n_items}
    (run_dir / "prompt_config.json").write_text(json.dumps(pcfg, indent=2))


def warm_train(
    version_dir: str | Path,
    snapshot_dir: str | Path,
    run_dir: str | Path,
    train_config: dict[str, Any],
    *,
    epochs: int = 2,
    patience: int = 1,
    quiet: bool = True,
) -> dict:
    """Fine-tune the served version on the snapshot in ``run_dir`` (replaced); returns the run's metrics
    (rank 0's; the other ranks of a ``torchrun`` get ``{}``)."""
    from training.data.dataset import PreparedDataset
    from training.recipe import loop
    from training.recipe.train import TrainConfig, build_run, finetune, test

    version_dir, run_dir = Path(version_dir), Path(run_dir)
    data = PreparedDataset.load(snapshot_dir)
    fields = {
        **train_config,
        **_FORCED,
        "dataset": str(snapshot_dir),
        "run_dir": str(run_dir),
        "epochs": epochs,
        "patience": patience,
    }
    cfg = TrainConfig.from_dict(fields)
    # Under torchrun every rank gets here; the run folder is shared, so rank 0 alone prepares it.
    d = loop.setup(cfg.device)
    try:
        if d.main:
            _prepare_run_dir(version_dir, run_dir, data.n_users, data.n_items)
        loop.barrier(d)
        run = build_run(cfg, stages=("finetune",), quiet=quiet)
        warm = warm_state(run.model, version_dir, data.train)
        run.log.write(event="warm_start", version=str(version_dir), **warm)
        finetune(run, quiet)
        metrics = test(run) if run.dist.main else {}
    finally:
        loop.teardown(d)
    return metrics
