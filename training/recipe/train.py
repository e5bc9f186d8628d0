"""The training recipe: data → graph → tokenizer → model → pre-training → fine-tuning → test, in one run
folder.

Run folder (default ``$EDGEREC_HOME/runs/<dataset>``)::

    train_config.json  model_config.json  prompt_config.json  tokenizer.json  graph/   (the run's inputs)
    pretrain/ckpt/     finetune/ckpt/     (last checkpoint of each stage: safetensors + JSON, for --resume)
    pretrain/model.safetensors            (weights after pre-training; fine-tuning starts from them)
    model.safetensors  metrics.json       (the selected model: best validation R@20 + R@40 + N@100; test
    metrics)
    log.jsonl  losses.png  valid.png

Load a trained run with :func:`load_run` (model + prompt builder) or ``GraphGPT.load(run_dir)``.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from graphprompt.bias import BiasConfig
from graphprompt.graph import BipartiteGraph
from graphprompt.prompts import PromptBuilder, PromptConfig
from graphprompt.tokenizer import RecTokenizer, item_corpus
from inference.item_item import ITEM_ITEM_DIR, transition_rows
from inference.torch_model import GraphGPT, ModelConfig
from inference.version import load_builder
from training.data.dataset import PreparedDataset
from training.data.sources import edgerec_home, load_dataset
from training.evaluation.baselines.base import selection_score
from training.evaluation.harness import evaluate
from training.recipe import loop, soup
from training.recipe.blend import best_point, fit_blend, fit_item_item, fit_transitions, score_blend_points
from training.recipe.finetune import PredictiveData, score_users, targets_matrix, to_tensors
from training.recipe.pretrain import PretrainData


@dataclass
class TrainConfig:
    dataset: str  # prepared dataset folder, or a raw RecBole folder (prepared on the fly)
    run_dir: str = ""  # default $EDGEREC_HOME/runs/<dataset name>
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto = bf16 autocast on GPU, fp32 on CPU; fp32 forces full precision on GPU
    # model
    size: str = "small"  # small | gpt2 (shape); base_model loads pretrained GPT-2 weights from a local folder
    base_model: str | None = None
    n_layer: int | None = None
    n_embd: int | None = None
    n_head: int | None = None
    word_vocab: int = 6000  # trained byte-level BPE size when no base model is given
    svd_init: bool = True
    bias_scale: float = 1.0
    learn_bias_scale: bool = False
    # the candidate prior (GraphGPT.set_prior): its weight is picked on validation after fine-tuning
    candidate_prior: bool = True
    prior_grid: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0])
    # the ranker's item-item term (inference/item_item.py): EASE on the train matrix, λ from item_item_lams
    # by EASE's validation score, the user's item_item_top_n largest entries boosted; how many weights each
    # item keeps (item_item_keeps) and the term's weight (item_item_grid, 0 = off) are chosen with the
    # prior's weight on validation (training/recipe/blend.py). Skipped above item_item_max_items items
    # (EASE holds two dense I x I float32 matrices).
    item_item: bool = True
    item_item_lams: list[float] = field(default_factory=lambda: [100.0, 200.0, 500.0, 1000.0])
    item_item_keeps: list[int] = field(default_factory=lambda: [20, 100, 300])
    item_item_grid: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.35, 0.5, 1.0])
    item_item_top_n: int = 200
    item_item_max_items: int = 40000
    # the item-item term's transitions (inference/item_item.py): what followed each item in the train users'
    # time lines, scored from the user's newest items; weight chosen on validation from transition_grid after
    # the rest of the blend. Opt-in: measured on temporal splits and the replay (docs/model.md)
    transitions: bool = False
    transition_grid: list[float] = field(default_factory=lambda: [0.0, 0.2, 0.5, 1.0, 2.0, 4.0])
    transition_keep: int = 100
    # prompts and graph bias; given as dicts of fields (JSON, --set), a missing field takes its class default
    prompt: PromptConfig = field(default_factory=PromptConfig)  # its .bias is always the bias section
    # the hop-distance graph bias in attention: off by default. On validation (R@20 + R@40 + N@100, mean of
    # seeds, benchmarks/results/model-*.json) it did not earn its place: office -0.4 % with it (3 seeds),
    # beauty +0.02 % (3), sports +0.1 % (3), level within the seeds' spread, and it costs a BFS per prompt
    # (training, and serving on a cache miss). `--set bias.enabled=true` restores it; a
    # bias section given without `enabled` (e.g. `--set bias.mode=ones`) turns it on, as it asks for a bias.
    bias: BiasConfig = field(default_factory=lambda: BiasConfig(enabled=False))
    # pre-training: off by default. On validation (office 3 seeds, beauty 1; benchmarks/results/model-*)
    # fine-tuning alone tied it on office (R@20+R@40+N@100 .4455 vs .4452) and beat it on beauty (.4231 vs
    # .4161) in half the training time. The paper's schedule is pretrain_rounds=2, content_warmup=1.
    pretrain_rounds: int = 0  # each round = one collaborative epoch + one content epoch
    content_warmup: int = 0  # content epochs before the first round
    pretrain_lr: float = 1e-3
    pretrain_dropout: float = 0.1
    pretrain_batch: int = 64
    reg_lambda: float = 1.0  # mutual regulariser weight (summed over id-token positions and dims)
    neighbour_prompts: bool = True
    group_prompts: bool = True
    # fine-tuning
    epochs: int = 40
    lr: float = 1e-4  # office sweep: 1e-4 beat 3e-4 and 1e-3 (docs/history.md)
    dropout: float = 0.5
    batch_size: int = 64
    target_frac: float = 0.5
    target_variants: int = 4
    all_train_targets: bool = True  # predict every train item, visible ones too (denoising; reference code)
    # share of the held-out splits that are time cuts (the newest events are the targets; finetune.py); needs
    # prompt.history_order="time"
    next_targets: float = 0.0
    # weight of the next-item loss at every history position (SASRec's objective on the same attention;
    # PromptBuilder.history_labels), beside the last position's multinomial loss; needs history_order="time"
    seq_loss: float = 0.0
    patience: int = 5
    # checkpoint soup (training/recipe/soup.py): average up to this many of the best epochs where validation
    # prefers it to the best epoch alone; 0 or 1: the best epoch's weights
    soup_size: int = 0
    weight_decay: float = 0.0
    eval_batch: int = 256
    max_eval_users: int | None = None  # validation on a fixed subset (quick runs); test always uses all users

    def __post_init__(self) -> None:
        if self.precision not in loop.PRECISIONS:
            raise ValueError(f"precision must be one of {loop.PRECISIONS}, got {self.precision!r}")
        self.prior_grid = [float(b) for b in self.prior_grid]  # JSON-equal, so a resume compares equal
        if not self.prior_grid or min(self.prior_grid) < 0:
            raise ValueError(f"prior_grid must hold one or more weights >= 0, got {self.prior_grid}")
        self.item_item_grid = [float(w) for w in self.item_item_grid]
        self.item_item_lams = [float(x) for x in self.item_item_lams]
        if not self.item_item_grid or min(self.item_item_grid) < 0:
            raise ValueError(f"item_item_grid must hold one or more weights >= 0, got {self.item_item_grid}")
        if not self.item_item_lams or min(self.item_item_lams) <= 0:
            raise ValueError(f"item_item_lams must hold one or more values > 0, got {self.item_item_lams}")
        self.item_item_keeps = [int(k) for k in self.item_item_keeps]
        if not self.item_item_keeps or min(self.item_item_keeps) < 1 or self.item_item_top_n < 1:
            raise ValueError(
                f"item_item_keeps must hold one or more counts >= 1 and item_item_top_n be >= 1, got "
                f"{self.item_item_keeps}, {self.item_item_top_n}"
            )
        if not isinstance(self.bias, BiasConfig):
            self.bias = _section(BiasConfig, "bias", self.bias)
        if not isinstance(self.prompt, PromptConfig):
            self.prompt = _section(PromptConfig, "prompt", self.prompt)
        elif self.prompt.bias not in (BiasConfig(), self.bias) or self.prompt.tokenizer:
            raise ValueError("TrainConfig.prompt: leave bias to TrainConfig.bias and tokenizer to the run")
        # One bias, shared: the prompt config the run saves carries exactly the bias section.
        self.prompt = replace(self.prompt, bias=self.bias)
        if self.seq_loss < 0 or not 0 <= self.next_targets <= 1:
            raise ValueError(
                f"seq_loss must be >= 0 and next_targets in [0, 1], got {self.seq_loss}, {self.next_targets}"
            )
        if (self.seq_loss > 0 or self.next_targets > 0) and self.prompt.history_order != "time":
            raise ValueError(
                "seq_loss and next_targets read the history's time order: add --set prompt.history_order=time"
            )

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in PROMPT_NOT_SETTABLE:  # written by their own section / the run's prompt_config.json
            del d["prompt"][key]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """From ``train_config.json`` or the CLI. Runs written before the sections were typed hold only the
        fields they overrode in ``prompt`` / ``bias``; the rest take the class defaults."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown train config fields: {sorted(unknown)}")
        return cls(**d)


# PromptConfig fields that a TrainConfig's prompt section does not set, and why.
PROMPT_NOT_SETTABLE = {
    "bias": "the graph bias is TrainConfig.bias",
    "tokenizer": "the id-token counts come from the run's data",
    "strength_without_bias": "fixed by the model: set bias.enabled=false for no graph bias in attention",
}


def _section(kind: type, name: str, fields: dict):
    """A typed config section from a dict of its fields; an unknown field is named in the error."""
    if not isinstance(fields, dict):
        raise ValueError(f"TrainConfig.{name} must be an object of {kind.__name__} fields, got {fields!r}")
    not_settable = PROMPT_NOT_SETTABLE if kind is PromptConfig else {}
    for key in set(fields) & set(not_settable):
        raise ValueError(f"TrainConfig.{name}: {key!r} cannot be set here: {not_settable[key]}")
    known = set(kind.__dataclass_fields__) - set(not_settable)
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"TrainConfig.{name}: unknown field(s) {unknown}; known: {sorted(known)}")
    return kind.from_dict(fields)


# ------------------------------------------------------------------------------------------------ run set-up
@dataclass
class Run:
    cfg: TrainConfig
    dir: Path
    data: PreparedDataset
    graph: BipartiteGraph
    tok: RecTokenizer
    builder: PromptBuilder
    model: GraphGPT
    dist: loop.Dist
    log: loop.RunLog
    predictive: PredictiveData | None = None  # fine-tuning data (its cached eval prompts serve the test too)


def build_run(
    cfg: TrainConfig,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    stages: tuple = ("pretrain", "finetune"),
) -> Run:
    d = loop.setup(cfg.device)
    torch.manual_seed(cfg.seed)
    data = load_dataset(cfg.dataset)
    run_dir = Path(cfg.run_dir or edgerec_home() / "runs" / data.name)
    if d.main:
        _claim_run_dir(run_dir, cfg, resume, overwrite, tuple(stages))
    loop.barrier(d)
    graph = BipartiteGraph.from_matrix(data.train, data.times)
    if cfg.transitions and not graph.has_time:  # before training, not at its test step
        raise ValueError("transitions need the data's time order, which this dataset lacks: prepare it again")
    tok = _tokenizer(cfg, data, run_dir)
    pcfg = replace(cfg.prompt, tokenizer=tok.counts())
    builder = PromptBuilder(tok, graph, pcfg)
    mcfg = ModelConfig.preset(cfg.size, n_words=tok.n_words, n_users=data.n_users, n_items=data.n_items)
    for k in ("n_layer", "n_embd", "n_head"):
        if getattr(cfg, k) is not None:
            setattr(mcfg, k, getattr(cfg, k))
    mcfg.bias_scale, mcfg.learn_bias_scale = cfg.bias_scale, cfg.learn_bias_scale
    mcfg.candidate_prior = cfg.candidate_prior
    # graph bias off: attention sees none; the strength row still reaches the prior (prompts.py)
    mcfg.attend_graph_bias = cfg.bias.enabled
    mcfg.n_positions = max(mcfg.n_positions, _max_prompt_len(pcfg))
    model = GraphGPT.from_gpt2(cfg.base_model, mcfg) if cfg.base_model else GraphGPT(mcfg)
    if cfg.svd_init:
        model.init_ids_from_svd(data.train, seed=cfg.seed)
    model.to(d.device)
    if d.main:
        (run_dir / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        (run_dir / "model_config.json").write_text(json.dumps(model.cfg.to_dict(), indent=2))
        tok.save(run_dir)
        pcfg.save(run_dir / "prompt_config.json")
        graph.save(run_dir / "graph")
    log = loop.RunLog(run_dir / "log.jsonl", d.main)
    log.write(
        event="start",
        stages=list(stages),
        resume=resume,
        world=d.world,
        device=str(d.device),
        config=cfg.to_dict(),
    )
    return Run(cfg, run_dir, data, graph, tok, builder, model, d, log)


def _max_prompt_len(p: PromptConfig) -> int:
    return (
        32 + p.max_history + p.n_co_users + p.n_two_hop_items + max(p.max_main_items, p.max_text_tokens + 24)
    )


RESUME_MAY_CHANGE = ("run_dir", "epochs", "patience", "device")


def _claim_run_dir(run_dir: Path, cfg: TrainConfig, resume: bool, overwrite: bool, stages: tuple) -> None:
    """Refuse to mix runs: a stage's existing state needs --resume (continue) or --overwrite (start again)."""
    owned = [s for s in ("pretrain", "finetune") if s in stages] + (
        ["model.safetensors"] if "finetune" in stages else []
    )
    has_state = any((run_dir / s).exists() for s in owned)
    if has_state and not (resume or overwrite):
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or --overwrite")
    if has_state and overwrite:
        if set(stages) >= {"pretrain", "finetune"}:
            shutil.rmtree(run_dir)
        else:
            for s in owned:
                if s != "model.safetensors":
                    shutil.rmtree(run_dir / s, ignore_errors=True)
    if has_state and resume:
        old = _comparable(json.loads((run_dir / "train_config.json").read_text()))
        new = cfg.to_dict()
        changed = sorted(
            k for k in set(old) | set(new) if k not in RESUME_MAY_CHANGE and old.get(k) != new.get(k)
        )
        if changed:
            # a default that changed since the run started lands here too: say how to resume it as it was
            hint = " ".join(f"--set {k}='{json.dumps(old.get(k))}'" for k in changed)
            raise ValueError(
                f"{run_dir} was started with a different configuration ({', '.join(changed)}); to continue "
                f"it as it was started, add {hint}"
            )
    run_dir.mkdir(parents=True, exist_ok=True)


def _comparable(saved: dict) -> dict:
    """A saved train config in today's form (a run started before the sections were typed stored only its
    prompt / bias overrides); as written where it no longer loads, so the comparison names what differs."""
    try:
        return TrainConfig.from_dict(saved).to_dict()
    except (TypeError, ValueError):
        return saved


def _tokenizer(cfg: TrainConfig, data: PreparedDataset, run_dir: Path) -> RecTokenizer:
    if (run_dir / "tokenizer.json").exists() and (run_dir / "prompt_config.json").exists():
        counts = json.loads((run_dir / "prompt_config.json").read_text())["tokenizer"]
        return RecTokenizer.load(run_dir, counts)
    if cfg.base_model:
        return RecTokenizer.from_gpt2(cfg.base_model, data.n_users, data.n_items)
    corpus = item_corpus(data.item_text, data.reviews) or ["has interacted with will interact"]
    templates = [
        "A user has interacted with. Users with shared items:. Items they also chose:.",
        "The user will interact with. user shares items with; wrote the following review for",
        "The title of is: The brand of The categories of The description of These items have the same",
    ]
    return RecTokenizer.train(corpus + templates * 10, data.n_users, data.n_items, vocab_size=cfg.word_vocab)


def load_run(run_dir: str | Path, weights: str = "model.safetensors", device: str = "cpu"):
    """(model, builder) of a trained run: what the exporter and the run's evaluation need. The builder
    comes from the inference core's ``load_builder``, the same one a version is opened with."""
    run_dir = Path(run_dir)
    return GraphGPT.load(run_dir, weights, device), load_builder(run_dir)


# ------------------------------------------------------------------------------------------------ stages
def _wrap(run: Run) -> torch.nn.Module:
    if not run.dist.enabled:
        return run.model
    from torch.nn.parallel import DistributedDataParallel as DDP

    dev = [run.dist.device.index] if run.dist.device.type == "cuda" else None
    return DDP(run.model, device_ids=dev, find_unused_parameters=True)


def _optimizer(model: torch.nn.Module, lr: float, wd: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd)


def _progress(total: int, desc: str, d: loop.Dist, quiet: bool):
    return tqdm(total=total, desc=desc, disable=quiet or not d.main, mininterval=5, leave=False)


def pretrain(run: Run, quiet: bool = False) -> None:
    """Content warm-up epochs, then rounds of (collaborative epoch, content epoch); checkpoint after each
    epoch."""
    cfg, m, d = run.cfg, run.model, run.dist
    stage_dir = run.dir / "pretrain"
    if (stage_dir / "model.safetensors").exists():
        _load_weights(m, stage_dir / "model.safetensors")
        return
    schedule = ["content"] * cfg.content_warmup + ["collab", "content"] * cfg.pretrain_rounds
    if not schedule:
        return
    m.set_dropout(cfg.pretrain_dropout)
    net = _wrap(run)
    opt = _optimizer(net, cfg.pretrain_lr, cfg.weight_decay)
    start = 0
    if (stage_dir / "ckpt" / "state.json").exists():
        start = loop.load_checkpoint(stage_dir / "ckpt", m, opt)["epoch"] + 1
    pdata = PretrainData(
        run.builder,
        run.graph,
        run.data.item_text,
        run.data.reviews,
        neighbour_prompts=cfg.neighbour_prompts,
        group_prompts=cfg.group_prompts,
    )
    offsets = {"word": 0, "user": run.tok.user_offset, "item": run.tok.item_offset}
    for epoch in range(start, len(schedule)):
        kind = schedule[epoch]
        rng = loop.epoch_rng(cfg.seed, "pretrain", epoch)
        torch.manual_seed(loop.epoch_torch_seed(cfg.seed, "pretrain", epoch, d.rank))
        t0 = time.time()
        prompts = pdata.collaborative(rng) if kind == "collab" else pdata.content(rng)
        t_build = time.time() - t0
        batches = []
        for head in ("item", "user", "word"):
            idx = np.array([k for k, p in enumerate(prompts) if p.head == head])
            if len(idx):
                lens = np.array([len(prompts[k]) for k in idx])
                batches += [idx[b] for b in loop.length_batches(lens, cfg.pretrain_batch, rng)]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        net.train()
        sums: dict[str, float] = {}
        n_tok = 0
        bar = _progress(len(batches), f"pretrain {epoch + 1}/{len(schedule)} {kind}", d, quiet)
        for gb in batches:
            part = [prompts[k] for k in loop.shard(gb, d)]
            ids, mask, bias = to_tensors(PromptBuilder.collate(part), d.device)
            labels = torch.from_numpy(PromptBuilder.labels(part, offsets)).to(d.device)
            with loop.autocast(d.device, cfg.precision):
                out = net(
                    ids,
                    mask,
                    bias,
                    labels=labels,
                    head=part[0].head,
                    content=kind == "content",
                    reg_lambda=cfg.reg_lambda,
                )
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            n_tok += int(mask.sum())
            bar.update(1)
        bar.close()
        dt = time.time() - t0
        keys = sorted(sums)
        summed = _all_sum([sums[k] for k in keys] + [n_tok], d)
        n_tok = summed[-1]
        losses = {k: v / max(len(batches) * d.world, 1) for k, v in zip(keys, summed, strict=False)}
        run.log.write(
            event="epoch",
            stage="pretrain",
            epoch=epoch,
            step_epoch=epoch,
            kind=kind,
            loss=losses,
            prompts=len(prompts),
            seconds=round(dt, 2),
            build_seconds=round(t_build, 2),
            tokens_per_s=round(n_tok / max(dt, 1e-9), 1),
        )
        if d.main:
            loop.save_checkpoint(
                stage_dir / "ckpt", m, opt, {"stage": "pretrain", "epoch": epoch, "kind": kind}
            )
        loop.barrier(d)
    if d.main:
        m.save(stage_dir)
    loop.barrier(d)


def _load_weights(m: GraphGPT, path: Path) -> None:
    from safetensors.torch import load_file

    m.load_state_dict(load_file(str(path), device=str(next(m.parameters()).device)))


def _valid_users(run: Run) -> np.ndarray | None:
    if run.cfg.max_eval_users is None:
        return None
    has = np.flatnonzero(np.diff(run.data.valid.indptr) > 0)
    rng = np.random.default_rng([run.cfg.seed, 99])
    return np.sort(rng.choice(has, size=min(run.cfg.max_eval_users, len(has)), replace=False))


def finetune(run: Run, quiet: bool = False) -> dict:
    """Multinomial fine-tuning with validation-based selection and early stopping; returns the best
    metrics."""
    cfg, m, d = run.cfg, run.model, run.dist
    stage_dir = run.dir / "finetune"
    m.set_dropout(cfg.dropout)
    net = _wrap(run)
    opt = _optimizer(net, cfg.lr, cfg.weight_decay)
    state = {"epoch": -1, "best": -math.inf, "best_epoch": -1, "bad": 0, "best_valid": None}
    if (stage_dir / "ckpt" / "state.json").exists():
        state = loop.load_checkpoint(stage_dir / "ckpt", m, opt)
    fdata = PredictiveData(
        run.builder,
        run.graph,
        cfg.seed,
        cfg.target_frac,
        cfg.target_variants,
        cfg.all_train_targets,
        cfg.next_targets,
    )
    run.predictive = fdata
    n_pre = len(
        list(r for r in run.log.records() if r.get("stage") == "pretrain" and r.get("event") == "epoch")
    )
    val_users = _valid_users(run)

    def validate() -> dict:
        return evaluate(
            lambda us: score_users(m, fdata, us, d.device, cfg.eval_batch), run.data, "valid", users=val_users
        )

    for epoch in range(state["epoch"] + 1, cfg.epochs):
        if state["bad"] >= cfg.patience:
            break
        rng = loop.epoch_rng(cfg.seed, "finetune", epoch)
        torch.manual_seed(loop.epoch_torch_seed(cfg.seed, "finetune", epoch, d.rank))
        t0 = time.time()
        prompts, targets, after = fdata.epoch(epoch, rng)
        t_build = time.time() - t0
        batches = loop.length_batches(np.array([len(p) for p in prompts]), cfg.batch_size, rng)
        net.train()
        total, n_users, n_tok = 0.0, 0, 0
        bar = _progress(len(batches), f"finetune {epoch + 1}/{cfg.epochs}", d, quiet)
        for gb in batches:
            mine = loop.shard(gb, d)
            ids, mask, bias = to_tensors(PromptBuilder.collate([prompts[k] for k in mine]), d.device)
            tgt = targets_matrix([targets[k] for k in mine], m.cfg.n_items, d.device)
            seq = {}
            if cfg.seq_loss > 0:
                lab = run.builder.history_labels([prompts[k] for k in mine], [after[k] for k in mine])
                seq = {
                    "labels": torch.from_numpy(lab).to(d.device),
                    "head": "item",
                    "lm_weight": cfg.seq_loss,
                }
            with loop.autocast(d.device, cfg.precision):
                out = net(ids, mask, bias, targets=tgt, **seq)
            # each rank averages over its shard; rescale so the all-reduced mean equals the global-batch mean
            loss = out["loss"] * (len(mine) * d.world / len(gb))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(out["rec"].detach()) * len(mine)
            n_users += len(mine)
            n_tok += int(mask.sum())
            bar.update(1)
        bar.close()
        total, n_users, n_tok = _all_sum([total, n_users, n_tok], d)  # the logged loss is the global mean
        t_train = time.time() - t0
        valid = None
        if d.main:
            t1 = time.time()
            valid = validate()
            t_eval = time.time() - t1
            score = selection_score(valid)
            improved = score > state["best"]
            if improved:
                state.update(best=score, best_epoch=epoch, bad=0, best_valid=valid)
                m.save(stage_dir, "best.safetensors")
            else:
                state["bad"] += 1
            if cfg.soup_size > 1:
                soup.keep_epoch(stage_dir, m, state, epoch, score, cfg.soup_size)
            state["epoch"] = epoch
            run.log.write(
                event="epoch",
                stage="finetune",
                epoch=epoch,
                step_epoch=n_pre + epoch,
                loss={"rec": total / max(n_users, 1)},
                valid=valid,
                improved=improved,
                seconds=round(t_train, 2),
                build_seconds=round(t_build, 2),
                eval_seconds=round(t_eval, 2),
                tokens_per_s=round(n_tok / max(t_train, 1e-9), 1),
            )
            if not quiet:
                tqdm.write(
                    f"epoch {epoch}: loss {total / max(n_users, 1):.3f} valid "
                    + " ".join(f"{k} {v:.4f}" for k, v in valid.items() if k != "users")
                    + (" *" if improved else "")
                )
            loop.save_checkpoint(stage_dir / "ckpt", m, opt, state)
            if cfg.soup_size > 1:
                soup.prune(stage_dir, state)
        state = _broadcast(state, d)
    if d.main and cfg.soup_size > 1:
        record = soup.make_soup(stage_dir, m, state, lambda: selection_score(validate()))
        run.log.write(event="soup", **record)
    return state


def _all_sum(values: list[float], d: loop.Dist) -> list[float]:
    if not d.enabled:
        return values
    import torch.distributed as tdist

    t = torch.tensor(values, dtype=torch.float64)
    tdist.all_reduce(t)
    return t.tolist()


def _broadcast(obj: dict, d: loop.Dist) -> dict:
    if not d.enabled:
        return obj
    import torch.distributed as tdist

    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def test(run: Run) -> dict:
    """Reload the selected weights, score the test split (train items masked), write model +
    metrics.json."""
    cfg, m, d = run.cfg, run.model, run.dist
    best = run.dir / "finetune" / "best.safetensors"
    if not best.exists():
        raise FileNotFoundError(f"{best} is missing: fine-tuning did not finish an epoch")
    # the checkpoint soup where this run made one (validation preferred it), else the best epoch
    chosen_weights = soup.soup_weights(run.dir / "finetune") if cfg.soup_size > 1 else None
    _load_weights(m, chosen_weights or best)
    fdata = run.predictive or PredictiveData(run.builder, run.graph, cfg.seed, cfg.target_frac, 1)
    state = json.loads((run.dir / "finetune" / "ckpt" / "state.json").read_text())

    item_item = None
    if cfg.item_item and run.data.n_items <= cfg.item_item_max_items:
        table = m.item_emb.weight.detach().float().cpu().numpy()
        item_item = fit_item_item(
            run.data,
            table,
            cfg.item_item_lams,
            max(cfg.item_item_keeps),
            cfg.item_item_top_n,
            _valid_users(run),
        )

    def score(split: str, term) -> dict:
        return evaluate(
            lambda us: score_users(m, fdata, us, d.device, cfg.eval_batch, item_item=term), run.data, split
        )

    uncut, fit_seconds = item_item, item_item.fit_seconds if item_item is not None else None
    prior = term = blend = None
    ablations: dict[str, dict] = {}
    shutil.rmtree(run.dir / ITEM_ITEM_DIR, ignore_errors=True)  # a re-test's earlier term, if any
    if m.cfg.candidate_prior or item_item is not None:
        # the prior's and the item-item term's weights, together: the best selection score over the grid on
        # the validation users fine-tuning selected on (the test split is never looked at)
        blend, item_item = fit_blend(
            m,
            fdata,
            run.data,
            item_item,
            cfg.prior_grid,
            cfg.item_item_grid,
            d.device,
            cfg.eval_batch,
            _valid_users(run),
            cfg.item_item_keeps,
        )
    transitions = None
    if cfg.transitions and item_item is not None:
        item_item.next_rows = transition_rows(run.graph.time_lines(), run.graph.n_items, cfg.transition_keep)
        beta = blend["beta"] if blend is not None else 0.0
        transitions = fit_transitions(
            m,
            fdata,
            run.data,
            item_item,
            beta,
            cfg.transition_grid,
            d.device,
            cfg.eval_batch,
            _valid_users(run),
        )
    full_valid = score("valid", item_item)
    test_m = score("test", item_item)
    if transitions is not None and item_item.next_weight > 0:
        # what they add on test: the same choice without them (the other ablations leave them out too)
        ablations["no_transitions"] = {"test": score("test", replace(item_item, next_weight=0.0))}
    if blend is not None:
        # Ablations of the ranker's parts on the same weights: each part off, the other re-chosen on the
        # same validation grid (what the recipe would have picked without it), then scored on test; the
        # points other than the chosen one (``test_m``) in one encoder pass (``score_blend_points``).
        chosen = (blend["beta"], blend["keep"], blend["weight"])
        off = {"beta": 0.0, "keep": None, "weight": 0.0}
        named = {"transformer_only": off}
        parts = [("no_item_item", {"weight": 0.0})] if uncut is not None else []
        if uncut is not None and m.cfg.candidate_prior:
            parts.append(("no_prior", {"beta": 0.0}))
        for name, fixed in parts:
            point = best_point(blend["grid"], **fixed)
            if point is not None:
                named[name] = {k: point[k] for k in off}
        todo = sorted({(p["beta"], p["keep"], p["weight"]) for p in named.values()} - {chosen}, key=str)
        terms = {k: uncut.cut(k) for _, k, w in todo if k is not None and w > 0} if uncut else {}
        found = []
        if todo:  # every ablation may fall on the chosen point
            found = score_blend_points(m, fdata, run.data, terms, todo, "test", d.device, cfg.eval_batch)
        if m.cfg.candidate_prior:
            m.set_prior(blend["beta"])
        at = dict(zip(todo, found, strict=True)) | {chosen: test_m}
        for name, point in named.items():
            extra = {} if name == "transformer_only" else point
            ablations[name] = extra | {"test": at[(point["beta"], point["keep"], point["weight"])]}
        # what each part adds on test is in "ablations" (once: no copies under "prior" / "item_item")
        if m.cfg.candidate_prior:
            prior = {"beta": blend["beta"]}
        if item_item is not None:
            term = {**item_item.params, "weight": item_item.weight, "top_n": item_item.top_n}
            item_item.save(run.dir)
    epochs = [r for r in run.log.records() if r.get("event") == "epoch"]
    ft = [r for r in epochs if r["stage"] == "finetune"]
    metrics = {
        "train_seconds": round(sum(r["seconds"] + r.get("eval_seconds", 0.0) for r in epochs), 1),
        "finetune_tokens_per_s": round(float(np.mean([r["tokens_per_s"] for r in ft])), 1) if ft else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "item_item_seconds": fit_seconds,
        "valid": full_valid,
        "test": test_m,
        "best_epoch": state["best_epoch"],
        "soup": soup.record(run.dir / "finetune") if cfg.soup_size > 1 else None,
        "prior": prior,
        "item_item": term,
        "transitions": transitions,
        "blend_grid": blend["grid"] if blend is not None else None,
        "ablations": ablations,
        "dataset": run.data.name,
        "fingerprint": run.data.fingerprint,
        "seed": cfg.seed,
    }
    m.save(run.dir, "model.safetensors")
    (run.dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    run.log.write(event="test", **metrics)
    loop.plot_run(run.log.path, run.dir)
    return metrics


def train(
    cfg: TrainConfig,
    resume: bool = False,
    overwrite: bool = False,
    stages=("pretrain", "finetune"),
    quiet: bool = False,
) -> dict | None:
    """The whole recipe (or the named stages) in one call; returns test metrics when fine-tuning ran (rank
    0)."""
    run = build_run(cfg, resume=resume, overwrite=overwrite, quiet=quiet, stages=tuple(stages))
    try:
        if "pretrain" in stages:
            pretrain(run, quiet)
        elif "finetune" in stages and (run.dir / "pretrain" / "model.safetensors").exists():
            _load_weights(run.model, run.dir / "pretrain" / "model.safetensors")
        if "finetune" not in stages:
            if run.dist.main:
                loop.plot_run(run.log.path, run.dir)
            return None
        if (run.dir / "finetune" / "ckpt").exists() and not resume:
            raise FileExistsError(f"{run.dir}/finetune exists; pass --resume")
        finetune(run, quiet)
        if run.dist.main:
            return test(run)
        return None
    finally:
        loop.teardown(run.dist)
