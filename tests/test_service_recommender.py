"""Pure pieces of the request path: the cache entry format and history ordering."""

from __future__ import annotations

import numpy as np
import pytest

from graphprompt.graph import Neighbourhood
from service.recommender import Entry, Recommendation, dedup_keep_last


def test_entry_round_trip():
    nbr = Neighbourhood(
        items=np.array([3, 1]),
        co_users=np.array([7, 2]),
        co_user_weight=np.array([2.0, 1.0], np.float32),
        two_hop_items=np.array([9]),
        two_hop_weight=np.array([4.0], np.float32),
        user=5,
    )
    nodes = np.array([2, 5, 7, 13, 19])
    dist = np.arange(25, dtype=np.int8).reshape(5, 5)
    vec = np.linspace(-1, 1, 16).astype(np.float32)
    back = Entry.unpack(Entry(nbr, (nodes, dist), vec).pack())
    assert back.nbr == nbr
    assert np.array_equal(back.distances[0], nodes) and np.array_equal(back.distances[1], dist)
    assert np.array_equal(back.vector, vec)
    assert back.boost is not None and back.boost[0].size == 0  # a vector of a model without the prior
    empty = Entry.unpack(Entry().pack())
    assert empty.nbr is None and empty.distances is None and empty.vector is None and empty.boost is None
    boost = (np.array([9, 4]), np.array([0.5, 2.25], np.float32))
    with_boost = Entry.unpack(Entry(nbr, None, vec, boost).pack())
    assert np.array_equal(with_boost.boost[0], boost[0]) and np.array_equal(with_boost.boost[1], boost[1])
    assert with_boost.distances is None and np.array_equal(with_boost.vector, vec)


@pytest.mark.parametrize("bad", [b"", b"NBD2", b"XXXX" + bytes(12), Entry().pack() + b"\x00"])
def test_malformed_entries_are_rejected(bad):
    with pytest.raises(ValueError):
        Entry.unpack(bad)


def test_history_keeps_last_occurrence_order():
    # train items (ascending), then live history, then session items: the newest interactions end the prompt
    assert dedup_keep_last(np.array([1, 2, 3, 2, 5, 1])).tolist() == [3, 2, 5, 1]
    assert dedup_keep_last(np.array([], dtype=np.int64)).tolist() == []


def test_main_fallback_is_the_most_telling_reason():
    rec = Recommendation("u", "v", np.array([]), np.array([]), ["cache_unavailable", "popularity"])
    assert rec.fallback == "popularity"
    assert Recommendation("u", "v", np.array([]), np.array([]), []).fallback is None
