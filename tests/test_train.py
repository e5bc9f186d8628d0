"""Training end to end on a real slice of amazon-office (~300 users): the loss falls, validation beats
popularity,
resuming reproduces an uninterrupted run, and two DDP processes (gloo) agree with one process."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from shared_data import office_users

TINY = dict(
    n_layer=1,
    n_embd=32,
    n_head=2,
    word_vocab=400,
    batch_size=32,
    pretrain_batch=32,
    target_variants=2,
    prompt={"max_history": 30, "n_co_users": 5, "n_two_hop_items": 5, "max_text_tokens": 16},
)


@pytest.fixture(scope="module")
def office_slice(tmp_path_factory) -> Path:
    from training.data.dataset import prepare

    out = tmp_path_factory.mktemp("office") / "office-300"
    prepare(office_users(300), "office-300", k_core=3).save(out)
    return out


def _cfg(data: Path, run: Path, **kw):
    from training.recipe.train import TrainConfig

    return TrainConfig(dataset=str(data), run_dir=str(run), **{**TINY, **kw})


def _popularity(data: Path) -> dict:
    from training.data.dataset import PreparedDataset
    from training.evaluation.harness import evaluate

    ds = PreparedDataset.load(data)
    pop = np.asarray(ds.train.sum(0)).ravel().astype(np.float32)
    return evaluate(lambda us: np.tile(pop, (len(us), 1)), ds, "valid")


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]


def test_end_to_end_beats_popularity(office_slice: Path, tmp_path: Path) -> None:
    from training.recipe.train import load_run, train

    torch.set_num_threads(1)
    cfg = _cfg(
        office_slice, tmp_path / "run", pretrain_rounds=1, content_warmup=1, epochs=8, patience=8, lr=3e-3
    )
    metrics = train(cfg, quiet=True)
    recs = _records(tmp_path / "run")
    pre = [r for r in recs if r.get("stage") == "pretrain" and r.get("event") == "epoch"]
    assert [r["kind"] for r in pre] == ["content", "collab", "content"]
    assert all(np.isfinite(r["loss"]["lm"]) for r in pre)
    ft = [r["loss"]["rec"] for r in recs if r.get("stage") == "finetune"]
    assert ft[-1] < ft[0]  # the fine-tuning loss falls
    pop = _popularity(office_slice)
    score = metrics["valid"]["recall@20"] + metrics["valid"]["ndcg@100"]
    assert score > pop["recall@20"] + pop["ndcg@100"], (metrics["valid"], pop)
    # the ranker's parts on the same weights: the blend is the validation grid's best point, and each part's
    # ablation switches it off and re-chooses the other on that grid
    from training.recipe.blend import best_point

    grid, ab = metrics["blend_grid"], metrics["ablations"]
    best = best_point(grid)
    assert (best["beta"], best["weight"]) == (metrics["prior"]["beta"], metrics["item_item"]["weight"])
    assert set(ab) == {"transformer_only", "no_prior", "no_item_item"}
    assert ab["no_item_item"]["beta"] == best_point(grid, weight=0.0)["beta"]
    assert ab["no_prior"]["weight"] == best_point(grid, beta=0.0)["weight"]
    assert set(ab["transformer_only"]["test"]) >= {"recall@20", "recall@40", "ndcg@100"}
    assert "test_without" not in metrics["prior"]  # one place for each ablation: "ablations"
    # the ablations' test figures (one pass over stored parts) are what the served scoring path gives
    from training.data.dataset import PreparedDataset
    from training.evaluation.harness import evaluate
    from training.recipe.finetune import PredictiveData, score_users

    model, builder = load_run(tmp_path / "run")
    fdata = PredictiveData(builder, builder.graph, cfg.seed, cfg.target_frac, 1)
    ds = PreparedDataset.load(office_slice)
    for name in ("transformer_only", "no_item_item"):
        model.set_prior(ab[name].get("beta", 0.0))
        want = evaluate(lambda us: score_users(model, fdata, us, torch.device("cpu")), ds, "test")
        for k in ("recall@20", "recall@40", "ndcg@100"):
            assert ab[name]["test"][k] == pytest.approx(want[k], abs=2e-3), (name, k)
    files = ["model.safetensors", "model_config.json", "prompt_config.json", "tokenizer.json", "metrics.json"]
    for f in [*files, "losses.png", "valid.png", "graph"]:
        assert (tmp_path / "run" / f).exists(), f
    model, builder = load_run(tmp_path / "run")
    p = builder.predictive(0, builder.graph.user_items(0))
    vec = model.user_vector(*(torch.from_numpy(a) for a in builder.collate([p])))
    assert vec.shape == (1, model.cfg.n_embd)


def test_a_run_without_graph_bias_keeps_the_candidate_prior(office_slice: Path, tmp_path: Path) -> None:
    """bias.enabled=false takes graph relations out of attention and nothing else: the model ignores the
    bias input in attention, prompts carry only the strength row, and the prior fitted on it is live (its
    weight moves the validation figures), as in a run with the bias."""
    from training.recipe.train import load_run, train

    torch.set_num_threads(1)
    metrics = train(
        _cfg(office_slice, tmp_path / "run", epochs=2, patience=2, bias={"enabled": False}), quiet=True
    )
    model, builder = load_run(tmp_path / "run")
    assert model.cfg.attend_graph_bias is False and builder.writes_strength
    u = int(np.flatnonzero(np.diff(builder.graph.ui.indptr) >= 2)[0])
    items = builder.graph.user_items(u)
    p = builder.predictive(u, items, builder.neighbourhood(u, items))
    assert p.strength is not None and np.all(p.bias[:-1] == 0) and p.bias[-1].max() > 0
    by_beta = {g["beta"]: g["recall@20"] + g["ndcg@100"] for g in metrics["blend_grid"] if g["weight"] == 0.0}
    assert len(set(by_beta.values())) > 1, by_beta  # a dead prior would give one figure for every weight


def test_a_sequential_run_learns_from_the_next_item_loss_and_saves_its_time_order(
    office_slice: Path, tmp_path: Path
) -> None:
    """The `sequential` recipe (time-ordered history, time cuts, next-item loss at every history position)
    trains end to end on real data; the next-item loss reaches the weights (the same run without it ends
    elsewhere), and the run's prompt config and graph carry the time order serving needs."""
    from safetensors.torch import load_file

    from training.recipe.train import load_run, train

    torch.set_num_threads(1)
    timed = {"prompt": {"history_order": "time"}, "next_targets": 0.5, "epochs": 1, "patience": 1}
    metrics = train(_cfg(office_slice, tmp_path / "seq", seq_loss=1.0, **timed), quiet=True)
    train(_cfg(office_slice, tmp_path / "plain", **timed), quiet=True)
    assert metrics["test"]["recall@20"] > 0
    a = load_file(str(tmp_path / "seq" / "model.safetensors"))
    b = load_file(str(tmp_path / "plain" / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    _, builder = load_run(tmp_path / "seq")
    assert builder.cfg.history_order == "time" and builder.graph.has_time


def test_a_run_with_transitions_chooses_their_weight_on_validation_and_exports_them(
    office_slice: Path, tmp_path: Path
) -> None:
    """transitions=true: the test step fits what followed each item in the train time lines, picks their
    weight on the validation grid (recorded with every point), saves them with the item-item term, and a
    warm start keeps that choice."""
    from inference.item_item import ItemItem
    from training.recipe.train import train
    from training.recipe.warm_start import served_blend

    torch.set_num_threads(1)
    metrics = train(_cfg(office_slice, tmp_path / "run", epochs=1, patience=1, transitions=True), quiet=True)
    record = metrics["transitions"]
    assert [p["next_weight"] for p in record["grid"]] == [0.0, 0.2, 0.5, 1.0, 2.0, 4.0]
    best = max(record["grid"], key=lambda p: p["recall@20"] + p["recall@40"] + p["ndcg@100"])
    assert record["next_weight"] == best["next_weight"]
    term = ItemItem.load(tmp_path / "run")
    assert term is not None and term.next_rows is not None and term.next_rows.nnz > 0
    assert term.next_weight == record["next_weight"]
    assert ("no_transitions" in metrics["ablations"]) == (record["next_weight"] > 0)
    pinned = served_blend(tmp_path / "run")
    assert pinned["transitions"] is True and pinned["transition_grid"] == [record["next_weight"]]


def test_a_run_tests_the_soup_validation_chose(office_slice: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from training.recipe import soup
    from training.recipe.train import train

    torch.set_num_threads(1)
    metrics = train(
        _cfg(office_slice, tmp_path / "run", epochs=4, patience=4, lr=3e-3, soup_size=3), quiet=True
    )
    rec = metrics["soup"]
    assert len(rec["kept"]) == 3 and rec["members"][0] == rec["kept"][0]["epoch"]
    assert len(rec["tries"]) == 2 and all(t["joined"] == (t["epoch"] in rec["members"]) for t in rec["tries"])
    stage = tmp_path / "run" / "finetune"
    assert len(list((stage / soup.SOUP_DIR).glob("epoch-*.safetensors"))) == 3
    served = load_file(str(tmp_path / "run" / "model.safetensors"))["item_emb.weight"]
    used = load_file(str(soup.soup_weights(stage) or stage / "best.safetensors"))["item_emb.weight"]
    assert torch.equal(served, used) and (soup.soup_weights(stage) is not None) == (len(rec["members"]) > 1)


def test_resume_matches_uninterrupted(office_slice: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from training.recipe.train import train

    torch.set_num_threads(1)
    kw = dict(pretrain_rounds=1, content_warmup=0, epochs=3, patience=3)
    full = train(_cfg(office_slice, tmp_path / "a", **kw), quiet=True)
    # interrupted: pre-training, then 2 fine-tuning epochs; resumed to 3
    train(_cfg(office_slice, tmp_path / "b", **{**kw, "epochs": 2}), quiet=True)
    with pytest.raises(FileExistsError, match="--resume"):
        train(_cfg(office_slice, tmp_path / "b", **kw), quiet=True)
    with pytest.raises(ValueError, match="different configuration"):
        train(_cfg(office_slice, tmp_path / "b", **{**kw, "lr": 1e-2}), resume=True, quiet=True)
    resumed = train(_cfg(office_slice, tmp_path / "b", **kw), resume=True, quiet=True)
    # Wall-clock figures (time, tokens/s, peak memory) differ between runs; everything else must not.
    timing = {"train_seconds", "finetune_tokens_per_s", "peak_rss_mb", "item_item_seconds"}
    assert {k: v for k, v in resumed.items() if k not in timing} == {
        k: v for k, v in full.items() if k not in timing
    }
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    la = [r["loss"] for r in _records(tmp_path / "a") if r.get("event") == "epoch"]
    lb = [r["loss"] for r in _records(tmp_path / "b") if r.get("event") == "epoch"]
    assert la == lb


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg_dict: dict, out: str) -> None:
    env = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank))
    os.environ.update(env, LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from training.recipe.train import TrainConfig, train

    metrics = train(TrainConfig.from_dict(cfg_dict), quiet=True)
    if rank == 0:
        Path(out).write_text(json.dumps(metrics))


def test_ddp_two_processes_agree_with_one(office_slice: Path, tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    from training.recipe.train import train

    torch.set_num_threads(1)
    # no dropout, so the only difference is how the batch's gradient is summed (per rank, then all-reduced)
    kw = dict(pretrain_rounds=0, content_warmup=0, epochs=2, patience=2, dropout=0.0)
    single = train(_cfg(office_slice, tmp_path / "one", **kw), quiet=True)
    cfg = _cfg(office_slice, tmp_path / "two", **kw).to_dict()
    out = tmp_path / "ddp.json"
    mp.start_processes(_ddp_worker, args=(2, _free_port(), cfg, str(out)), nprocs=2, start_method="spawn")
    ddp = json.loads(out.read_text())
    for split in ("valid", "test"):
        for k in ("recall@20", "recall@40", "ndcg@100"):
            assert ddp[split][k] == pytest.approx(single[split][k], abs=0.01), (split, k)
    l1 = [r["loss"]["rec"] for r in _records(tmp_path / "one") if r.get("stage") == "finetune"]
    l2 = [r["loss"]["rec"] for r in _records(tmp_path / "two") if r.get("stage") == "finetune"]
    # the logged loss is all-reduced over ranks: the same global mean up to summation order
    assert l2 == pytest.approx(l1, rel=1e-3)


def test_evaluate_run_reproduces_training_metrics(office_slice: Path, tmp_path: Path) -> None:
    """`edgerec evaluate --run` rescores a finished run; it must give the run's own metrics.json figures."""
    from training.data.dataset import PreparedDataset
    from training.evaluation.run import evaluate_run
    from training.recipe.train import train

    torch.set_num_threads(1)
    run = tmp_path / "run"
    metrics = train(_cfg(office_slice, run, pretrain_rounds=0, content_warmup=0, epochs=1), quiet=True)
    row = evaluate_run(run, PreparedDataset.load(office_slice))
    for split in ("valid", "test"):
        for name, value in metrics[split].items():
            assert row[split][name] == pytest.approx(value, abs=1e-6), (split, name)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        evaluate_run(tmp_path, PreparedDataset.load(office_slice))


def test_precision_is_validated_and_fp32_means_no_autocast():
    from training.recipe import loop
    from training.recipe.train import TrainConfig

    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(dataset="x", precision="fp16")
    assert TrainConfig(dataset="x", precision="fp32").precision == "fp32"
    cuda = torch.device("cuda")
    assert isinstance(loop.autocast(cuda, "fp32"), contextlib.nullcontext)
    with warnings.catch_warnings():  # torch warns that CUDA is absent; only the chosen context matters here
        warnings.simplefilter("ignore")
        assert isinstance(loop.autocast(cuda, "auto"), torch.autocast)
    assert isinstance(loop.autocast(torch.device("cpu"), "bf16"), contextlib.nullcontext)


def test_prompt_and_bias_sections_are_typed_and_name_unknown_fields():
    from graphprompt.bias import BiasConfig
    from graphprompt.prompts import PromptConfig
    from training.recipe.train import TrainConfig

    cfg = TrainConfig(dataset="x", prompt={"n_two_hop_items": 30}, bias={"max_hops": 3})
    assert cfg.prompt == PromptConfig(n_two_hop_items=30, bias=BiasConfig(max_hops=3))
    assert cfg.prompt.bias is cfg.bias  # one bias: the prompt config the run saves carries the bias section
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    saved = cfg.to_dict()
    assert saved["prompt"]["n_two_hop_items"] == 30 and "bias" not in saved["prompt"]
    assert saved["bias"]["max_hops"] == 3 and "tokenizer" not in saved["prompt"]
    with pytest.raises(ValueError, match=r"TrainConfig.prompt: unknown field\(s\) \['n_two_hop'\]"):
        TrainConfig(dataset="x", prompt={"n_two_hop": 30})
    with pytest.raises(ValueError, match=r"TrainConfig.bias: unknown field\(s\) \['hops'\]"):
        TrainConfig.from_dict({"dataset": "x", "bias": {"hops": 3}})
    with pytest.raises(ValueError, match="'bias' cannot be set here"):
        TrainConfig(dataset="x", prompt={"bias": {"max_hops": 3}})
    with pytest.raises(ValueError, match="must be an object"):
        TrainConfig(dataset="x", prompt=30)


def test_train_config_of_a_run_before_the_sections_were_typed_still_loads(tmp_path: Path):
    """Older runs' train_config.json hold only the overridden prompt / bias fields; they load, and a resume
    compares them with today's form (nothing differs), while a real change is still refused."""
    from training.recipe.train import TrainConfig, _claim_run_dir

    old = {"dataset": "x", "prompt": {"max_history": 30}, "bias": {}, "epochs": 2}
    cfg = TrainConfig.from_dict(old)
    assert (
        cfg.prompt.max_history == 30
        and cfg.prompt.n_two_hop_items == TrainConfig(dataset="x").prompt.n_two_hop_items
    )
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "train_config.json").write_text(json.dumps(old))
    _claim_run_dir(tmp_path, TrainConfig.from_dict({**old, "epochs": 5}), True, False, ("pretrain",))
    changed = TrainConfig.from_dict({**old, "prompt": {"max_history": 20}})
    with pytest.raises(ValueError, match=r"different configuration \(prompt\)"):
        _claim_run_dir(tmp_path, changed, True, False, ("pretrain",))


def test_a_resume_refused_for_a_changed_default_says_how_to_continue_as_started(tmp_path: Path):
    """A run started under the old default (graph bias on) is refused by today's default, and the message
    gives the --set that continues it as it was started; applying that --set is accepted."""
    from training.recipe.cli import apply_overrides
    from training.recipe.train import TrainConfig, _claim_run_dir

    started = TrainConfig.from_dict({"dataset": "x", "bias": {"enabled": True}})
    (tmp_path / "finetune").mkdir()
    (tmp_path / "train_config.json").write_text(json.dumps(started.to_dict()))
    with pytest.raises(ValueError, match=r"different configuration \(bias\)") as err:
        _claim_run_dir(tmp_path, TrainConfig(dataset="x"), True, False, ("finetune",))
    hint = str(err.value).split("add ", 1)[1]
    assert hint.startswith("--set bias='{") and '"enabled": true' in hint
    key, value = hint.removeprefix("--set ").split("=", 1)
    fields = apply_overrides({"dataset": "x"}, [f"{key}={value.strip(chr(39))}"])
    _claim_run_dir(tmp_path, TrainConfig.from_dict(fields), True, False, ("finetune",))


def test_set_overrides_whole_sections_and_single_fields():
    import typer

    from training.recipe.cli import apply_overrides

    got = apply_overrides(
        {"prompt": {"max_history": 7}},
        ["epochs=3", "device=cpu", "prompt.n_two_hop_items=30", "bias.enabled=false"],
    )
    assert got == {
        "prompt": {"max_history": 7, "n_two_hop_items": 30},
        "bias": {"enabled": False},
        "epochs": 3,
        "device": "cpu",
    }
    whole = apply_overrides({}, ['prompt={"n_two_hop_items": 30}', "prompt.two_hop_norm=0"])
    assert whole == {"prompt": {"n_two_hop_items": 30, "two_hop_norm": 0}}
    for bad in ("epochs", "lr.x=1", "prompt.=3"):
        with pytest.raises(typer.BadParameter):
            apply_overrides({}, [bad])


def test_the_default_recipe_has_no_graph_bias_and_a_bias_section_turns_it_on():
    """The recipe runs without the graph bias (chosen on validation, docs/model.md "Graph bias"); asking for
    any bias setting without `enabled` means a bias, and `enabled` says so outright either way."""
    from training.recipe.cli import apply_overrides
    from training.recipe.train import TrainConfig

    assert TrainConfig(dataset="x").bias.enabled is False
    assert TrainConfig(dataset="x").to_dict()["bias"]["enabled"] is False

    def bias(*sets: str):
        return TrainConfig.from_dict({"dataset": "x", **apply_overrides({}, list(sets))}).bias

    assert bias("bias.enabled=true").enabled is True
    ones = bias("bias.mode=ones")
    assert (ones.enabled, ones.mode) == (True, "ones")
    assert bias('bias={"max_hops": 3}').enabled is True
    assert bias("bias.mode=ones", "bias.enabled=false").enabled is False
