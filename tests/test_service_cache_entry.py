"""The cache entry format (service.cache_entry): round trips, fingerprints, and what it refuses."""

from __future__ import annotations

import numpy as np
import pytest

from graphprompt.graph import Neighbourhood
from service.cache_entry import Entry, history_fingerprint, is_current

FP = history_fingerprint([b"12", b"7"])


def _nbr(user: int | None = 5) -> Neighbourhood:
    return Neighbourhood(
        items=np.array([3, 1]),
        co_users=np.array([7, 2]),
        co_user_weight=np.array([2.0, 1.0], np.float32),
        two_hop_items=np.array([9]),
        two_hop_weight=np.array([4.0], np.float32),
        user=user,
    )


def test_entry_round_trip():
    nodes = np.array([2, 5, 7, 13, 19])
    dist = np.arange(25, dtype=np.int8).reshape(5, 5)
    vec = np.linspace(-1, 1, 16).astype(np.float32)
    back = Entry.unpack(Entry(_nbr(), (nodes, dist), vec).pack(FP))
    assert back.nbr == _nbr()
    assert back.nbr.items.dtype == np.int64 and back.nbr.two_hop_weight.dtype == np.float32
    assert np.array_equal(back.distances[0], nodes) and np.array_equal(back.distances[1], dist)
    assert np.array_equal(back.vector, vec)
    assert back.boost is not None and back.boost[0].size == 0  # a vector of a model without the prior
    empty = Entry.unpack(Entry().pack(FP))
    assert empty.nbr is None and empty.distances is None and empty.vector is None and empty.boost is None
    boost = (np.array([9, 4]), np.array([0.5, 2.25], np.float32))
    with_boost = Entry.unpack(Entry(_nbr(None), None, vec, boost).pack(FP))
    assert with_boost.nbr == _nbr(None) and with_boost.nbr.user is None
    assert np.array_equal(with_boost.boost[0], boost[0]) and np.array_equal(with_boost.boost[1], boost[1])
    assert with_boost.distances is None and np.array_equal(with_boost.vector, vec)


def test_fingerprint_decides_whether_an_entry_is_current():
    packed = Entry(_nbr()).pack(FP)
    assert is_current(packed, FP)
    assert not is_current(packed, history_fingerprint([b"12", b"7", b"8"]))  # the history moved on
    assert not is_current(None, FP)
    assert not is_current(b"ER1" + FP + packed, FP)  # an entry of the old layout is a miss, not an error
    assert history_fingerprint([b"1", b"27"]) != history_fingerprint([b"12", b"7"])  # ids are delimited


@pytest.mark.parametrize(
    "bad",
    [b"", b"EDC4", b"XXXX" + bytes(60), Entry().pack(FP) + b"\x00", Entry(_nbr()).pack(FP)[:-4]],
)
def test_malformed_entries_are_rejected(bad):
    with pytest.raises(ValueError):
        Entry.unpack(bad)


def test_pack_refuses_what_it_cannot_hold():
    ragged = Neighbourhood(np.array([1]), np.array([2, 3]), np.array([1.0], np.float32), np.array([]), [])
    with pytest.raises(ValueError, match="differ in length"):
        Entry(ragged).pack(FP)
    with pytest.raises(ValueError, match="ids must lie"):
        Entry(_nbr(), (np.array([-1]), np.zeros((1, 1), np.int8))).pack(FP)
    with pytest.raises(ValueError, match="fingerprint"):
        Entry().pack(b"short")
