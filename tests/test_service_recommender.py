"""Pure pieces of the request path: history ordering."""

from __future__ import annotations

import numpy as np

from service.recommender import Recommendation, dedup_keep_last


def test_history_keeps_last_occurrence_order():
    # train items (ascending), then live history, then session items: the newest interactions end the prompt
    assert dedup_keep_last(np.array([1, 2, 3, 2, 5, 1])).tolist() == [3, 2, 5, 1]
    assert dedup_keep_last(np.array([], dtype=np.int64)).tolist() == []


def test_main_fallback_is_the_most_telling_reason():
    rec = Recommendation("u", "v", np.array([]), np.array([]), ["cache_unavailable", "popularity"])
    assert rec.fallback == "popularity"
    assert Recommendation("u", "v", np.array([]), np.array([]), []).fallback is None
