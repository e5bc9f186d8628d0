"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over each user's time-ordered train items.

Input: the user's last ``max_len`` train items in the order they happened (``training.evaluation.sequences``),
padded on the left. Each item's embedding (scaled by √d, as in the authors' code) plus a learned embedding
of its place in that window (counted from the end, which is what the paper's left-padded window of fixed
length gives), dropout, then ``blocks`` pre-LN Transformer blocks (causal multi-head self-attention, a
two-layer ReLU feed-forward of width d, residuals, dropout) and a final LayerNorm. The item table is shared
between input and prediction: the score of item ``i`` after position ``t`` is ``F_t · M_i``.

Training predicts the next item at every position of the train sequence, with either loss (``loss``):
``bce``, the paper's: binary cross-entropy of the true next item against one uniformly sampled item the user
has not interacted with in train, per position; ``ce``: softmax cross-entropy over all items (no sampling).
Scoring reads the user's train sequence and ranks all items from the last position. Adam; the best epoch on
validation is kept (early stopping); padding never attends and is never attended to (except a padded
position to itself, so that its softmax is defined; its output is zeroed and never read).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from training.evaluation.baselines.base import Recommender, sample_negatives
from training.evaluation.baselines.early_stopping import EarlyStopping

LOSSES = ("bce", "ce")
_SEQUENCE_CACHE: dict[str, sp.csr_matrix] = {}  # dataset fingerprint -> ordered train (one grid, one read)


class SASRec(Recommender):
    name = "SASRec"
    grid = {"loss": ["ce", "bce"], "dropout": [0.2, 0.5]}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {
            "loss": "ce",
            "dim": 64,
            "blocks": 2,
            "heads": 1,
            "dropout": 0.2,
            "max_len": 50,
            "lr": 1e-3,
            "batch_size": 128,
            "max_epochs": 200,
            "eval_every": 1,
            "patience": 3,
            "budget_s": 600.0,
            "seed": 0,
        }

    def fit_dataset(self, dataset, log=None) -> SASRec:
        from training.evaluation.sequences import train_sequences

        seqs = _SEQUENCE_CACHE.get(dataset.fingerprint)
        if seqs is None:
            _SEQUENCE_CACHE.clear()
            seqs = _SEQUENCE_CACHE[dataset.fingerprint] = train_sequences(dataset)
        return self.fit(dataset.train, dataset.valid, log=log, sequences=seqs)

    def fit(
        self,
        train: sp.csr_matrix,
        valid: sp.csr_matrix | None = None,
        log=None,
        sequences: sp.csr_matrix | None = None,
    ) -> SASRec:
        """``sequences``: ``train`` with each row's items in time order (``train_sequences``); required."""
        import torch

        p = self.params
        self.train = x = self._check_train(train)
        _check_sequences(sequences, x)
        if p["loss"] not in LOSSES:
            raise ValueError(f"SASRec: loss must be one of {LOSSES}, got {p['loss']!r}")
        if int(p["dim"]) % int(p["heads"]):
            raise ValueError(f"SASRec: dim {p['dim']} is not divisible by heads {p['heads']}")
        n_users, n_items = x.shape
        torch.manual_seed(int(p["seed"]))
        rng = np.random.default_rng(int(p["seed"]))
        max_len = int(p["max_len"])
        self.windows, _ = _left_padded(sequences, max_len)  # scoring input: the last max_len items
        full, lengths = _left_padded(sequences, max_len + 1)  # training: inputs [:-1] predict targets [1:]
        inputs, targets, lengths = full[:, :-1], full[:, 1:], np.maximum(lengths - 1, 0)
        self.net = _make_net(
            n_items, int(p["dim"]), int(p["blocks"]), int(p["heads"]), float(p["dropout"]), max_len
        )
        opt = torch.optim.Adam(self.net.parameters(), lr=float(p["lr"]), betas=(0.9, 0.98))
        stopper = EarlyStopping.from_params(x, valid, p, log)
        seen = np.sort(np.repeat(np.arange(n_users, dtype=np.int64), np.diff(x.indptr)) * n_items + x.indices)
        active = np.flatnonzero(lengths > 0)  # users with at least two train items have something to predict
        epoch = 0
        while True:
            epoch += 1
            self.net.train()
            for batch in _length_batches(active, lengths, int(p["batch_size"]), rng):
                width = int(lengths[batch].max())
                inp = torch.from_numpy(inputs[batch, -width:])
                tgt = torch.from_numpy(targets[batch, -width:])
                hidden = self.net(inp)
                real = (inp > 0) & (tgt > 0)  # a padded input's target is the first item: not a prediction
                if p["loss"] == "ce":
                    loss = self._ce_loss(hidden[real], tgt[real])
                else:
                    loss = self._bce_loss(hidden, tgt, real, batch, n_items, seen, rng)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if stopper.after_epoch(epoch, self.net, self.score):
                break
        stopper.restore(self.net)
        self.info = stopper.info(epoch)
        return self

    def _ce_loss(self, hidden, tgt):
        import torch.nn.functional as F

        return F.cross_entropy(hidden @ self.net.items().T, tgt - 1)

    def _bce_loss(self, hidden, tgt, real, batch, n_items, seen, rng):
        import torch
        import torch.nn.functional as F

        rows = np.repeat(batch, real.sum(1).numpy())  # the user of every real position, row-major like [real]
        neg = torch.from_numpy(sample_negatives(rows.astype(np.int64), n_items, seen, rng) + 1)
        h = hidden[real]
        table = self.net.item_emb.weight
        pos_logit = (h * table[tgt[real]]).sum(1)
        neg_logit = (h * table[neg]).sum(1)
        return (F.softplus(-pos_logit) + F.softplus(neg_logit)).mean()

    def score(self, users: np.ndarray) -> np.ndarray:
        import torch

        self._require_fit()
        self.net.eval()
        win = self.windows[np.asarray(users, dtype=np.int64)]
        width = max(1, int((win > 0).sum(1).max()))
        with torch.no_grad():
            last = self.net(torch.from_numpy(win[:, -width:]))[:, -1]
            return (last @ self.net.items().T).numpy()


def _check_sequences(sequences: sp.csr_matrix | None, train: sp.csr_matrix) -> None:
    if sequences is None:
        raise ValueError(
            "SASRec needs each user's train items in time order: fit_dataset(dataset), or fit(..., "
            "sequences=training.evaluation.sequences.train_sequences(dataset))"
        )
    if sequences.shape != train.shape or not np.array_equal(sequences.indptr, train.indptr):
        raise ValueError("SASRec: sequences do not hold the train matrix's rows")


def _left_padded(sequences: sp.csr_matrix, width: int) -> tuple[np.ndarray, np.ndarray]:
    """[users, width] int64: each user's last ``width`` items (item i as i + 1), 0-padded on the left."""
    indptr = sequences.indptr
    lengths = np.minimum(np.diff(indptr), width)
    out = np.zeros((len(lengths), width), dtype=np.int64)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    # place k of a user's kept items (0 = oldest kept) goes to column width - length + k
    k = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    src = np.repeat(indptr[1:] - lengths, lengths) + k
    out[rows, width - np.repeat(lengths, lengths) + k] = sequences.indices[src].astype(np.int64) + 1
    return out, lengths


def _length_batches(users: np.ndarray, lengths: np.ndarray, size: int, rng) -> list[np.ndarray]:
    """Batches of users of similar length (little padding), random within a length and in random order."""
    perm = rng.permutation(users)
    perm = perm[np.argsort(lengths[perm], kind="stable")]
    batches = [perm[s : s + size] for s in range(0, len(perm), size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _make_net(n_items: int, dim: int, blocks: int, heads: int, dropout: float, max_len: int):
    """Built inside a function so that importing this module does not import torch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_attn, self.ln_ff = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.ff = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim))
            self.drop = nn.Dropout(dropout)

        def forward(self, x, allowed):
            b, length, _ = x.shape
            q, k, v = self.qkv(self.ln_attn(x)).view(b, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
            p = dropout if self.training else 0.0
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)
            x = x + self.drop(self.out(a.transpose(1, 2).reshape(b, length, dim)))
            return x + self.drop(self.ff(self.ln_ff(x)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=0)  # row 0: padding
            self.pos_emb = nn.Embedding(max_len, dim)
            self.blocks = nn.ModuleList(Block() for _ in range(blocks))
            self.ln = nn.LayerNorm(dim)
            self.drop = nn.Dropout(dropout)
            for m in self.modules():  # Glorot for every weight matrix, as in the authors' code
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.xavier_normal_(m.weight)
            with torch.no_grad():
                self.item_emb.weight[0].zero_()

        def items(self):
            return self.item_emb.weight[1:]

        def forward(self, seq):
            """seq [B, L] item ids + 1, left-padded with 0 → hidden states [B, L, dim] (0 at padding)."""
            length = seq.shape[1]
            real = (seq > 0).unsqueeze(-1)
            place = torch.arange(length - 1, -1, -1)  # counted from the window's end, as the paper's padding
            x = self.item_emb(seq) * dim**0.5 + self.pos_emb(place)
            x = self.drop(x) * real
            causal = torch.ones(length, length, dtype=torch.bool).tril()
            allowed = (causal & real.transpose(1, 2)) | torch.eye(length, dtype=torch.bool)
            allowed = allowed.unsqueeze(1)  # [B, 1, L, L]: one mask for every head
            for block in self.blocks:
                x = block(x, allowed) * real
            return self.ln(x) * real

    return Net()
