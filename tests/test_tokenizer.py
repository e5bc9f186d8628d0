"""Tokenizer: one id space (words, then users, then items), atomic id tokens, round trips, persistence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from graphprompt.tokenizer import RecTokenizer, item_corpus

TEXTS = [
    "Swingline Stapler, Heavy Duty, 20 Sheets",
    "Avery Dennison Index Tabs, Assorted Colors",
    "Office Products > Office Supplies > Paper",
    "Pilot G2 Gel Ink Pens, Fine Point, Black",
] * 20


@pytest.fixture(scope="module")
def tok() -> RecTokenizer:
    return RecTokenizer.train(TEXTS, n_users=5, n_items=7, vocab_size=400, min_frequency=1)


def test_id_layout(tok: RecTokenizer) -> None:
    v = tok.n_words
    assert 256 <= v <= 400  # byte alphabet plus merges
    assert tok.user_token(0) == v and tok.user_token(4) == v + 4
    assert tok.item_token(0) == v + 5 and tok.item_token(6) == v + 11
    assert tok.vocab_size == v + 12
    ids = np.array([3, tok.user_token(2), tok.item_token(6)])
    # node ids are the graph's global ids: users 0..U-1, items U..U+I-1
    assert tok.node_ids(ids).tolist() == [-1, 2, 5 + 6]


def test_round_trip_with_id_tokens(tok: RecTokenizer) -> None:
    text = "user_3 has interacted with item_4 item_0, user_3 will interact with"
    ids = tok.encode(text)
    assert ids[0] == tok.user_token(3)
    assert tok.item_token(4) in ids and tok.item_token(0) in ids
    assert (ids >= tok.n_words).sum() == 4  # id tokens are atomic, never split by the BPE
    assert tok.decode(ids) == text
    words = "Heavy Duty Stapler, Fine Point"
    assert tok.decode(tok.encode_text(words)) == words


def test_out_of_range_id_token_is_an_error(tok: RecTokenizer) -> None:
    with pytest.raises(ValueError, match="item_7 is out of range"):
        tok.encode("item_7")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_save_load(tmp_path: Path, tok: RecTokenizer) -> None:
    counts = tok.save(tmp_path)
    (tmp_path / "prompt_config.json").write_text(json.dumps({"tokenizer": counts}))
    back = RecTokenizer.load(tmp_path)
    assert back.counts() == tok.counts()
    text = "user_1 The title of item_2 is: Swingline Stapler"
    assert np.array_equal(back.encode(text), tok.encode(text))
    with pytest.raises(ValueError, match="word tokens"):
        RecTokenizer.load(tmp_path, {**counts, "n_words": counts["n_words"] + 1})


def test_training_is_deterministic() -> None:
    a = RecTokenizer.train(TEXTS, 1, 1, vocab_size=350, min_frequency=1)
    b = RecTokenizer.train(TEXTS, 1, 1, vocab_size=350, min_frequency=1)
    assert a.words.to_str() == b.words.to_str()


def test_gpt2_folder_needs_tokenizer_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no GPT-2 tokenizer"):
        RecTokenizer.from_gpt2(tmp_path, 1, 1)


def test_item_corpus_skips_empty() -> None:
    corpus = item_corpus({"title": ["a", ""], "brand": ["b", "c"]}, {(0, 1): "great"})
    assert sorted(corpus) == ["a", "b", "c", "great"]
