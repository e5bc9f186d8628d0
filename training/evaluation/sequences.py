"""Each user's train items in the order they happened, for sequence models (SASRec).

A ``PreparedDataset`` keeps its splits as CSR matrices with sorted column indices, so the per-user order is
gone once a dataset is prepared. It is recovered from the raw source the dataset was prepared from, with the
rule ``training.data.dataset.prepare`` uses for its events: by timestamp where there are timestamps, ties and
sources without timestamps by file order (the shared datasets' rows are chronological within a user), and a
repeated (user, item) pair counts at its first event. Every train pair must be found in the source, so a
source that does not match the dataset fails loudly instead of giving a scrambled order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp


def train_sequences(dataset, raw=None) -> sp.csr_matrix:
    """The train matrix with each row's column indices in chronological order (not sorted by item).

    ``raw`` is the dataset's ``RawInteractions``; by default it is read again from ``dataset.source``.
    Read the order with :func:`rows_in_order`; scipy operations that sort indices would lose it.
    """
    if raw is None:
        raw = _read_raw(dataset)
    train = dataset.train.tocsr()
    n_users, n_items = train.shape
    users = _dense_ids(raw.users, dataset.user_index())
    items = _dense_ids(raw.items, dataset.item_index())
    keep = (users >= 0) & (items >= 0)
    threshold = (dataset.split or {}).get("rating_threshold")
    if raw.ratings is not None and threshold is not None:
        keep &= np.asarray(raw.ratings) > threshold
    events = np.flatnonzero(keep)
    if raw.timestamps is not None:
        events = events[np.argsort(np.asarray(raw.timestamps)[events], kind="stable")]
    # rank of an event = its place in time; a repeated pair keeps its first (earliest) event's rank
    keys = users[events] * n_items + items[events]
    uniq, first = np.unique(keys, return_index=True)
    rank_of_key = first  # positions in `events`, i.e. in time order
    train_users = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(train.indptr))
    train_keys = train_users * n_items + train.indices
    pos = np.searchsorted(uniq, train_keys)
    found = (pos < len(uniq)) & (uniq[np.minimum(pos, len(uniq) - 1)] == train_keys)
    if not found.all():
        raise ValueError(
            f"{dataset.name}: {int((~found).sum())} train interactions are not in the source "
            f"{raw.source or dataset.source!r}; it is not the data this dataset was prepared from"
        )
    order = np.lexsort((rank_of_key[pos], train_users))  # by user, then time
    ordered = sp.csr_matrix(
        (np.ones(len(order), dtype=np.float32), train.indices[order].copy(), train.indptr.copy()),
        shape=train.shape,
    )
    ordered.has_sorted_indices = False  # so that no scipy routine assumes (or restores) item order
    return ordered


def rows_in_order(seqs: sp.csr_matrix, users: Sequence[int] | np.ndarray) -> list[np.ndarray]:
    """The items of ``users`` in chronological order (views into ``seqs``)."""
    return [seqs.indices[seqs.indptr[u] : seqs.indptr[u + 1]] for u in users]


def _read_raw(dataset):
    from training.data.ingest import read_source

    if not dataset.source:
        raise ValueError(
            f"{dataset.name}: the dataset does not record its source, so the per-user order cannot be "
            "recovered; pass the RawInteractions it was prepared from"
        )
    try:
        return read_source(dataset.source)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{dataset.name}: its source {dataset.source!r} is not readable from here (run from the folder "
            "it was prepared in); sequence models need it for the per-user order"
        ) from None


def _dense_ids(raw_ids: Sequence[str], index: dict[str, int]) -> np.ndarray:
    """Dense index per raw id, -1 where the dataset dropped the id (k-core, threshold)."""
    uniq, inverse = np.unique(np.asarray(raw_ids, dtype=str), return_inverse=True)
    dense = np.fromiter((index.get(str(u), -1) for u in uniq), dtype=np.int64, count=len(uniq))
    return dense[inverse]
