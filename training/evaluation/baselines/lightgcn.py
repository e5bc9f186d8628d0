"""LightGCN (He et al., SIGIR 2020) trained with BPR on CPU.

Embeddings ``E0`` of users and items are propagated ``layers`` times over the symmetrically normalised
bipartite train adjacency ``Â = D^-½ [[0, R], [Rᵀ, 0]] D^-½`` (a torch sparse matrix) and averaged over
layers; a user-item score is the inner product of the final vectors. Training samples every train edge once
per epoch with one uniform negative that the user has not interacted with; the L2 penalty is on the layer-0
embeddings of the batch, as in the paper. The best epoch on validation is kept (early stopping).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from training.evaluation.baselines.base import Recommender, sample_negatives
from training.evaluation.baselines.early_stopping import EarlyStopping


class LightGCN(Recommender):
    name = "LightGCN"
    grid = {"reg": [1e-4, 1e-3]}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {
            "dim": 64,
            "layers": 3,
            "lr": 5e-3,
            "reg": 1e-4,
            "batch_size": 4096,
            "max_epochs": 300,
            "eval_every": 5,
            "patience": 4,
            "budget_s": 600.0,
            "seed": 0,
        }

    def fit(self, train: sp.csr_matrix, valid: sp.csr_matrix | None = None, log=None) -> LightGCN:
        import torch

        p = self.params
        self.train = x = self._check_train(train)
        n_users, n_items = x.shape
        torch.manual_seed(int(p["seed"]))
        rng = np.random.default_rng(int(p["seed"]))
        self.net = _LightGCNNet(x, int(p["dim"]), int(p["layers"]))
        opt = torch.optim.Adam(self.net.parameters(), lr=float(p["lr"]))
        coo = x.tocoo()
        users_all, items_all = coo.row.astype(np.int64), coo.col.astype(np.int64)
        seen = np.sort(users_all * n_items + items_all)  # for rejecting negatives the user has seen
        stopper = EarlyStopping.from_params(x, valid, p, log)
        bs, reg = int(p["batch_size"]), float(p["reg"])
        epoch = 0
        while True:
            epoch += 1
            self.net.train()
            perm = rng.permutation(len(users_all))
            neg = sample_negatives(users_all[perm], n_items, seen, rng)
            for start in range(0, len(perm), bs):
                sl = slice(start, start + bs)
                u = torch.from_numpy(users_all[perm[sl]])
                i = torch.from_numpy(items_all[perm[sl]])
                j = torch.from_numpy(neg[sl])
                users_f, items_f = self.net.propagate()
                pos = (users_f[u] * items_f[i]).sum(1)
                negs = (users_f[u] * items_f[j]).sum(1)
                loss = torch.nn.functional.softplus(negs - pos).mean()
                e_u, e_i = self.net.user_emb.weight, self.net.item_emb.weight
                penalty = (e_u[u].square().sum() + e_i[i].square().sum() + e_i[j].square().sum()) / (
                    2 * len(u)
                )
                opt.zero_grad(set_to_none=True)
                (loss + reg * penalty).backward()
                opt.step()
            self._cache = None
            if stopper.after_epoch(epoch, self.net, self.score):
                break
        stopper.restore(self.net)
        self._cache = None
        self.info = stopper.info(epoch)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        import torch

        self._require_fit()
        if self._cache is None:  # final embeddings are fixed between optimiser steps: compute once
            self.net.eval()
            with torch.no_grad():
                self._cache = self.net.propagate()
        users_f, items_f = self._cache
        with torch.no_grad():
            return (users_f[torch.as_tensor(users, dtype=torch.long)] @ items_f.T).numpy()


def _normalised_adjacency(x: sp.csr_matrix):
    import torch

    n_users, n_items = x.shape
    adj = sp.bmat([[None, x], [x.T, None]], format="csr", dtype=np.float32)
    deg = np.asarray(adj.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(deg)
    nz = deg > 0
    inv_sqrt[nz] = deg[nz] ** -0.5
    norm = sp.diags(inv_sqrt) @ adj @ sp.diags(inv_sqrt)
    norm = norm.tocsr().astype(np.float32)
    coo = norm.tocoo()
    idx = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    # COO (stable API) rather than CSR (beta in torch); coalesced once, multiplied many times
    vals = torch.from_numpy(coo.data)
    return torch.sparse_coo_tensor(idx, vals, size=norm.shape, check_invariants=False).coalesce()


def _LightGCNNet(x: sp.csr_matrix, dim: int, layers: int):
    """Built inside a function so that importing this module does not import torch."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.n_users, self.n_items = x.shape
            self.user_emb = torch.nn.Embedding(self.n_users, dim)
            self.item_emb = torch.nn.Embedding(self.n_items, dim)
            torch.nn.init.normal_(self.user_emb.weight, std=0.1)
            torch.nn.init.normal_(self.item_emb.weight, std=0.1)
            self.adj = _normalised_adjacency(x)
            self.layers = layers

        def propagate(self):
            e = torch.cat([self.user_emb.weight, self.item_emb.weight])
            acc = e
            for _ in range(self.layers):
                e = self.adj @ e
                acc = acc + e
            acc = acc / (self.layers + 1)
            return acc[: self.n_users], acc[self.n_users :]

    return Net()
