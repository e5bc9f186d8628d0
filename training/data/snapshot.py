"""A retrain's dataset snapshot: the served version's dataset plus the interactions read from the stream.

:func:`merge` keeps every user and item of the base dataset at its dense index (so the served model's rows
stay where they are) and appends new users and new items after them, in sorted raw-id order. Splits:

* ``test``  = the **holdout**: per user among the new interactions, the newest one (stream order) when the
  user keeps at least one other train interaction, the item is not already known to that user, and the item
  occurs in train for someone else (an item no model has seen cannot be ranked by either). Neither the served
  version nor the candidate trains on it; the promotion gate scores both on it, and the next snapshot folds it
  into train, so every interaction is learned from exactly once.
* ``valid`` = the fine-tune's model selection (epochs, the prior's weight). **Recent** when the new
  interactions allow it: per user, the newest new interaction after the holdout's, on the same conditions,
  once at least ``MIN_RECENT_VALID`` users have one; the base's valid is then old enough to learn from and
  joins train. Otherwise the base's valid, as in the original run. Selecting on the day-0 split forever
  would tune every warm start to the past the service has moved away from.
* ``train`` = base train + base test (the previous snapshot's holdout) + base valid when it was replaced + the
  new interactions that are in neither of the above.

Time order (``PreparedDataset.times``, where the base has it): old events keep their place in each user's time
line and the new ones follow, in stream order.

Item text: known items keep theirs; a new item takes its title, brand, categories and description from the
``catalogue`` (``service.catalogue.read_catalogue``'s records) when it has a record there, else empty text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from training.data.dataset import PreparedDataset, fingerprint


@dataclass(frozen=True)
class Event:
    """One new interaction, in stream order (``order`` is the global reading position)."""

    user: str
    item: str
    order: int


@dataclass
class Snapshot:
    data: PreparedDataset
    n_base_users: int
    n_base_items: int
    stats: dict


# Fewest users with a recent validation interaction for the snapshot to select on them (fewer: the base's
# valid; recall over a few dozen users moves by more than a warm start's effect).
MIN_RECENT_VALID = 100

# The catalogue record fields that are item text (as inference.item_text.TEXT_FIELDS).
CATALOGUE_TEXT_FIELDS = ("title", "brand", "categories", "description")


def merge(
    base: PreparedDataset,
    events: Sequence[Event],
    name: str | None = None,
    holdout: bool = True,
    catalogue: Mapping[str, Mapping] | None = None,
) -> Snapshot:
    """The new snapshot (see the module docstring); ``holdout=False`` trains on every new interaction;
    ``catalogue`` (item id -> record) gives new items their text."""
    u_index, i_index = base.user_index(), base.item_index()
    new_users = sorted({e.user for e in events} - set(u_index))
    new_items = sorted({e.item for e in events} - set(i_index))
    user_ids = list(base.user_ids) + new_users
    item_ids = list(base.item_ids) + new_items
    u_index.update({u: len(base.user_ids) + k for k, u in enumerate(new_users)})
    i_index.update({it: len(base.item_ids) + k for k, it in enumerate(new_items)})
    shape = (len(user_ids), len(item_ids))

    def grow(m: sp.csr_matrix) -> sp.csr_matrix:
        m = m.tocoo()
        return sp.csr_matrix((np.ones(m.nnz, np.float32), (m.row, m.col)), shape=shape)

    old = grow(base.train + base.test)
    old.data[:] = 1
    valid = grow(base.valid)
    valid.data[:] = 1
    # pairs already in the dataset (a valid pair stays in valid only: never in two splits)
    known = {(int(u), int(i)) for u, i in zip(*(old + valid).nonzero(), strict=True)}
    # New pairs, first occurrence only (a repeat of a pair is one interaction, as prepare() dedupes).
    fresh: dict[tuple[int, int], int] = {}
    for e in sorted(events, key=lambda e: e.order):
        pair = (u_index[e.user], i_index[e.item])
        if pair not in known and pair not in fresh:
            fresh[pair] = e.order
    held: set[tuple[int, int]] = set()
    recent: set[tuple[int, int]] = set()
    if fresh:
        item_users: dict[int, int] = {}
        for _, i in list(known) + list(fresh):
            item_users[i] = item_users.get(i, 0) + 1
        old_deg = np.diff(old.indptr)
        if holdout:
            held = _newest_per_user(fresh, set(), old_deg, item_users)
        recent = _newest_per_user(fresh, held, old_deg, item_users)
        if len(recent) < MIN_RECENT_VALID:
            recent = set()
    if recent:  # select on the recent interactions; the base's valid is learned from
        old = _matrix(old, list(zip(*valid.nonzero(), strict=True)), shape)
        valid = _matrix(sp.csr_matrix(shape, dtype=np.float32), sorted(recent), shape)
    train_pairs = [p for p in fresh if p not in held and p not in recent]
    train = _matrix(old, train_pairs, shape)
    test = _matrix(sp.csr_matrix(shape, dtype=np.float32), sorted(held), shape)
    item_text, from_catalogue = _item_text(base.item_text, len(base.item_ids), new_items, catalogue or {})
    split = {
        "kind": "retrain",
        "base_fingerprint": base.fingerprint,
        "holdout": "newest new interaction per user (stream order) whose item others trained on",
        "valid": "recent: the next newest per user, on the same rule" if recent else "the base's valid",
        "k_core": base.split.get("k_core"),
    }
    mats = {"train": train, "valid": valid, "test": test}
    for m in mats.values():
        m.sort_indices()
    times = None if base.times is None else _times(base.times, list(fresh), shape)
    data = PreparedDataset(
        name=name or base.name,
        user_ids=user_ids,
        item_ids=item_ids,
        train=train,
        valid=valid,
        test=test,
        item_text=item_text,
        split=split,
        fingerprint=fingerprint(user_ids, item_ids, mats, split),
        reviews=dict(base.reviews),
        source=base.source,
        times=times,
    )
    stats = {
        "events": len(events),
        "new_pairs": len(fresh),
        "repeats": len(events) - len(fresh),
        "holdout": len(held),
        "new_users": len(new_users),
        "new_items": len(new_items),
        "new_items_with_text": from_catalogue,
        "valid": "recent" if recent else "base",
        "valid_pairs": int(valid.nnz),
        "train": int(train.nnz),
    }
    return Snapshot(data, len(base.user_ids), len(base.item_ids), stats)


def _newest_per_user(
    fresh: Mapping[tuple[int, int], int],
    taken: set[tuple[int, int]],
    old_deg: np.ndarray,
    item_users: Mapping[int, int],
) -> set[tuple[int, int]]:
    """Per user, the newest pair of ``fresh`` outside ``taken``, when the user keeps at least one other
    train interaction and the item has at least one other user (the holdout's and recent valid's rule)."""
    per_user: dict[int, list[tuple[int, int]]] = {}
    for pair, order in fresh.items():
        if pair not in taken:
            per_user.setdefault(pair[0], []).append((order, pair[1]))
    out = set()
    for u, rows in per_user.items():
        _, item = max(rows)
        if old_deg[u] + len(rows) - 1 >= 1 and item_users[item] >= 2:
            out.add((u, item))
    return out


def _times(base: sp.csr_matrix, fresh: list[tuple[int, int]], shape: tuple[int, int]) -> sp.csr_matrix:
    """The base's time ranks, grown to ``shape``, and the ``fresh`` pairs (stream order) after each user's
    last base event."""
    coo = base.tocoo()
    last = np.zeros(shape[0], dtype=np.float64)
    np.maximum.at(last, coo.row, coo.data)
    rows = np.array([p[0] for p in fresh], dtype=np.int64)
    cols = np.array([p[1] for p in fresh], dtype=np.int64)
    vals = np.empty(len(fresh), dtype=np.float64)
    for k, u in enumerate(rows):  # stream order: each new event one step after the user's previous one
        last[u] += 1
        vals[k] = last[u]
    m = sp.csr_matrix(
        (np.concatenate([coo.data, vals]), (np.concatenate([coo.row, rows]), np.concatenate([coo.col, cols]))),
        shape=shape,
    )
    m.sort_indices()
    return m


def _matrix(old: sp.csr_matrix, pairs: list[tuple[int, int]], shape: tuple[int, int]) -> sp.csr_matrix:
    coo = old.tocoo()
    rows = np.concatenate([coo.row, np.array([p[0] for p in pairs], dtype=np.int64)])
    cols = np.concatenate([coo.col, np.array([p[1] for p in pairs], dtype=np.int64)])
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=shape)
    m.sum_duplicates()
    m.data[:] = 1
    return m


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):  # categories may come as a list
        return ", ".join(str(v).strip() for v in value if str(v).strip())
    return str(value).strip()


def _item_text(
    base_text: Mapping[str, list[str]], n_base: int, new_items: list[str], catalogue: Mapping[str, Mapping]
) -> tuple[dict[str, list[str]], int]:
    """The base's text columns extended by the new items' catalogue text (a text field only the catalogue
    has gets a column, empty for the base's items); and how many new items had a catalogue record."""
    records = [catalogue.get(it) or {} for it in new_items]
    fields = set(base_text) | {f for r in records for f in CATALOGUE_TEXT_FIELDS if _text(r.get(f))}
    text = {}
    for f in sorted(fields):
        old = list(base_text.get(f, [""] * n_base))
        text[f] = old + [_text(r.get(f)) for r in records]
    return text, sum(1 for r in records if r)
