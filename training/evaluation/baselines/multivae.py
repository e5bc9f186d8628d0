"""Multi-VAE (Liang et al., WWW 2018): a variational autoencoder with a multinomial likelihood over items.

Encoder ``x → [hidden, tanh] → (μ, log σ²)`` of size ``latent``; decoder ``z → [hidden, tanh] → logits``
over all items. Input rows are L2-normalised and dropped out (p = ``dropout``); the first layer takes the
sparse input directly (a sparse-dense product), so only the decoder's output layer is dense in the items.
Loss ``-Σ x log softmax(logits) + β KL``, β annealed linearly to ``beta_cap`` over ``anneal_steps`` updates.
Scoring uses ``μ`` (no sampling). The best epoch on validation is kept (early stopping).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from training.evaluation.baselines.base import Recommender
from training.evaluation.baselines.early_stopping import EarlyStopping


class MultiVAE(Recommender):
    name = "Multi-VAE"
    grid = {"hidden": [0, 600]}  # 0: linear encoder/decoder (no tanh layer)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {
            "hidden": 600,
            "latent": 200,
            "dropout": 0.5,
            "beta_cap": 0.2,
            "anneal_steps": 2000,
            "lr": 1e-3,
            "weight_decay": 0.0,
            "batch_size": 500,
            "max_epochs": 200,
            "eval_every": 2,
            "patience": 5,
            "budget_s": 600.0,
            "seed": 0,
        }

    def fit(self, train: sp.csr_matrix, valid: sp.csr_matrix | None = None, log=None) -> MultiVAE:
        import torch

        p = self.params
        self.train = x = self._check_train(train)
        n_users, n_items = x.shape
        torch.manual_seed(int(p["seed"]))
        rng = np.random.default_rng(int(p["seed"]))
        self.net = _make_net(n_items, int(p["hidden"]), int(p["latent"]))
        opt = torch.optim.Adam(
            self.net.parameters(), lr=float(p["lr"]), weight_decay=float(p["weight_decay"])
        )
        stopper = EarlyStopping.from_params(x, valid, p, log)
        bs, drop = int(p["batch_size"]), float(p["dropout"])
        beta_cap, anneal = float(p["beta_cap"]), max(1, int(p["anneal_steps"]))
        active = np.flatnonzero(np.diff(x.indptr) > 0)  # users with train items
        step, epoch = 0, 0
        while True:
            epoch += 1
            self.net.train()
            perm = rng.permutation(active)
            for start in range(0, len(perm), bs):
                batch = x[perm[start : start + bs]]
                inp = _sparse_input(batch, drop, rng)
                target = torch.from_numpy(batch.toarray())
                logits, mu, logvar = self.net(inp, sample=True)
                nll = -(torch.log_softmax(logits, dim=1) * target).sum(1).mean()
                kl = (-0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(1)).mean()
                beta = min(beta_cap, beta_cap * step / anneal)
                opt.zero_grad(set_to_none=True)
                (nll + beta * kl).backward()
                opt.step()
                step += 1
            if stopper.after_epoch(epoch, self.net, self.score):
                break
        stopper.restore(self.net)
        self.info = stopper.info(epoch)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        import torch

        x = self._require_fit()
        self.net.eval()
        with torch.no_grad():
            logits, _, _ = self.net(_sparse_input(x[users], 0.0, None), sample=False)
        return logits.numpy()


def _sparse_input(rows: sp.csr_matrix, dropout: float, rng):
    """L2-normalised rows (then input dropout, scaled by 1/(1-p)) as a torch sparse COO tensor."""
    import torch

    coo = rows.tocoo()
    norms = np.sqrt(np.asarray(rows.multiply(rows).sum(axis=1)).ravel())
    vals = coo.data / np.maximum(norms[coo.row], 1e-12)
    r, c = coo.row, coo.col
    if dropout > 0:
        keep = rng.random(len(vals)) >= dropout
        vals, r, c = vals[keep] / (1.0 - dropout), r[keep], c[keep]
    idx = torch.from_numpy(np.vstack([r, c]).astype(np.int64))
    vals_t = torch.from_numpy(vals.astype(np.float32))
    return torch.sparse_coo_tensor(idx, vals_t, size=rows.shape, check_invariants=False)


def _make_net(n_items: int, hidden: int, latent: int):
    """Built inside a function so that importing this module does not import torch."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            first = hidden if hidden > 0 else 2 * latent
            self.enc_in = nn.Linear(n_items, first)
            self.enc_out = nn.Linear(hidden, 2 * latent) if hidden > 0 else None
            self.dec = (
                nn.Sequential(nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, n_items))
                if hidden > 0
                else nn.Linear(latent, n_items)
            )
            self.latent = latent
            for m in self.modules():
                if isinstance(m, nn.Linear):  # Xavier weights, small normal biases (as in the paper's code)
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.normal_(m.bias, std=0.001)

        def forward(self, x_sparse, sample: bool):
            h = torch.sparse.mm(x_sparse, self.enc_in.weight.T) + self.enc_in.bias
            if self.enc_out is not None:
                h = self.enc_out(torch.tanh(h))
            mu, logvar = h[:, : self.latent], h[:, self.latent :]
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
            return self.dec(z), mu, logvar

    return Net()
