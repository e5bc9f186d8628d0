"""Amazon review JSON lines (2018 and 2023 layouts), gzip or plain, with optional metadata."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from training.data.amazon import read_amazon
from training.data.dataset import prepare
from training.data.ingest import detect_format, read_source
from training.data.text_io import DataFormatError, ReadOptions

REVIEWS_2018 = [
    {
        "reviewerID": "A1",
        "asin": "B1",
        "overall": 5.0,
        "unixReviewTime": 1400000000,
        "reviewText": "Great\npen.",
    },
    {"reviewerID": "A1", "asin": "B2", "overall": 2.0, "unixReviewTime": 1400000100, "reviewText": "Meh"},
    {"reviewerID": "A2", "asin": "B1", "overall": 4.0, "unixReviewTime": 1400000200},
]
META_2018 = [
    {
        "asin": "B1",
        "title": "Gel Pen",
        "brand": "Pilot",
        "category": ["Office Products", "Writing", "Pens"],
        "description": ["Smooth ink.", "Pack of 3."],
    },
    {"asin": "B2", "title": "Notebook", "description": "Ruled paper."},
    {"asin": "B9", "title": "Never reviewed"},
]
REVIEWS_2023 = [
    {
        "user_id": "U1",
        "parent_asin": "P1",
        "asin": "P1a",
        "rating": 5.0,
        "timestamp": 1600000000123,
        "text": "Love",
    },
    {
        "user_id": "U2",
        "parent_asin": "P1",
        "asin": "P1b",
        "rating": 1.0,
        "timestamp": 1600000100000,
        "text": "",
    },
]
META_2023 = [
    {
        "parent_asin": "P1",
        "title": "Desk Lamp",
        "store": "Brightco",
        "categories": ["Home", "Lighting"],
        "description": ["Warm light", "USB"],
    }
]


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def _write(path: Path, text: str, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path


def test_2018_reviews_and_meta(tmp_path: Path) -> None:
    reviews = _write(tmp_path / "Office.json", _jsonl(REVIEWS_2018))
    meta = _write(tmp_path / "meta_Office.json.gz", _jsonl(META_2018), gz=True)
    raw = read_source(reviews, "auto", ReadOptions(meta=meta))
    assert raw.info["format"] == "amazon2018"
    assert raw.users == ["A1", "A1", "A2"] and raw.items == ["B1", "B2", "B1"]
    np.testing.assert_array_equal(raw.ratings, [5, 2, 4])
    np.testing.assert_array_equal(raw.timestamps, [1400000000, 1400000100, 1400000200])
    assert raw.reviews == {("A1", "B1"): "Great pen.", ("A1", "B2"): "Meh"}
    assert raw.item_text == {  # only reviewed items; lists joined the canonical way
        "B1": {
            "title": "Gel Pen",
            "brand": "Pilot",
            "categories": "Office Products > Writing > Pens",
            "description": "Smooth ink. Pack of 3.",
        },
        "B2": {"title": "Notebook", "description": "Ruled paper."},
    }


def test_2023_gzip_without_gz_suffix_and_ms_timestamps(tmp_path: Path) -> None:
    reviews = _write(tmp_path / "Home.jsonl", _jsonl(REVIEWS_2023), gz=True)  # gzip content, plain name
    meta = _write(tmp_path / "meta_Home.jsonl", _jsonl(META_2023))
    assert detect_format(reviews) == "amazon2023"
    raw = read_source(reviews, "auto", ReadOptions(meta=meta))
    assert raw.items == ["P1", "P1"]  # parent_asin, not the variant asin
    np.testing.assert_allclose(raw.timestamps, [1600000000.123, 1600000100.0])
    assert raw.reviews == {("U1", "P1"): "Love"}
    assert raw.item_text == {
        "P1": {
            "title": "Desk Lamp",
            "brand": "Brightco",
            "categories": "Home > Lighting",
            "description": "Warm light USB",
        }
    }


def test_folder_tells_reviews_from_meta_by_content(tmp_path: Path) -> None:
    _write(tmp_path / "a.json.gz", _jsonl(META_2018), gz=True)
    _write(tmp_path / "b.json", _jsonl(REVIEWS_2018))
    assert detect_format(tmp_path) == "amazon2018"
    raw = read_source(tmp_path)
    assert raw.info["files"] == [str(tmp_path / "b.json"), str(tmp_path / "a.json.gz")]
    assert raw.item_text["B1"]["brand"] == "Pilot"


def test_meta_is_optional_and_meta_alone_is_rejected(tmp_path: Path) -> None:
    reviews = _write(tmp_path / "r.json", _jsonl(REVIEWS_2018))
    assert read_source(reviews).item_text == {}
    meta = _write(tmp_path / "m.json", _jsonl(META_2018))
    with pytest.raises(DataFormatError, match="metadata file"):
        read_source(meta)


def test_explicit_format_overrides_detection(tmp_path: Path) -> None:
    reviews = _write(tmp_path / "r.json", _jsonl(REVIEWS_2023))
    with pytest.raises(DataFormatError) as err:
        read_source(reviews, "amazon2018")
    assert err.value.line == 1 and err.value.field == "reviewerID"


def test_repeated_review_keeps_earliest_text_and_event(tmp_path: Path) -> None:
    rows = [
        {"reviewerID": "A1", "asin": "B1", "overall": 5, "unixReviewTime": 300, "reviewText": "later"},
        {"reviewerID": "A1", "asin": "B1", "overall": 5, "unixReviewTime": 100, "reviewText": "first"},
    ]
    raw = read_amazon(_write(tmp_path / "r.json", _jsonl(rows)))
    assert raw.reviews == {("A1", "B1"): "first"}


def test_threshold_drops_low_ratings_end_to_end(tmp_path: Path) -> None:
    raw = read_source(_write(tmp_path / "r.json", _jsonl(REVIEWS_2018)))
    ds = prepare(raw, "t", rating_threshold=3.0, k_core=1)
    assert ds.item_ids == ["B1"]  # B2 was only rated 2
    assert ds.train.nnz + ds.valid.nnz + ds.test.nnz == 2


GOOD = json.dumps(REVIEWS_2018[0])


@pytest.mark.parametrize(
    ("lines", "line", "field", "message"),
    [
        ([GOOD, '{"reviewerID": "A2", "asin": '], 2, None, "bad JSON"),
        ([GOOD, "[1, 2]"], 2, None, "JSON object"),
        (
            [GOOD, "", json.dumps({"reviewerID": "A", "asin": "B", "unixReviewTime": 1})],
            3,
            "overall",
            "missing",
        ),
        ([GOOD, json.dumps({**REVIEWS_2018[0], "overall": "five"})], 2, "overall", "not a number"),
        (
            [GOOD, json.dumps({**REVIEWS_2018[0], "unixReviewTime": None})],
            2,
            "unixReviewTime",
            "not a number",
        ),
        ([GOOD, json.dumps({**REVIEWS_2018[0], "overall": True})], 2, "overall", "not a number"),
        ([GOOD, json.dumps({**REVIEWS_2018[0], "asin": ""})], 2, "asin", "id"),
    ],
)
def test_malformed_reviews_name_file_line_field(
    tmp_path: Path, lines: list[str], line: int, field: str | None, message: str
) -> None:
    path = _write(tmp_path / "r.json.gz", "\n".join(lines) + "\n", gz=True)
    with pytest.raises(DataFormatError, match=message) as err:
        read_source(path, "amazon2018")
    assert (err.value.path, err.value.line, err.value.field) == (str(path), line, field)
    assert f"r.json.gz, line {line}" in str(err.value)


def test_empty_and_broken_files(tmp_path: Path) -> None:
    empty = _write(tmp_path / "e.json", "\n\n")
    with pytest.raises(DataFormatError, match="empty"):
        read_source(empty, "amazon2023")
    truncated = tmp_path / "t.json"
    truncated.write_bytes(gzip.compress(_jsonl(REVIEWS_2018).encode())[:-12])
    with pytest.raises(DataFormatError, match="gzip"):
        read_source(truncated, "amazon2018")


def test_malformed_meta_names_the_meta_file(tmp_path: Path) -> None:
    reviews = _write(tmp_path / "r.json", _jsonl(REVIEWS_2018))
    meta = _write(tmp_path / "m.json", _jsonl(META_2018[:1]) + '{"title": "no id"}\n')
    with pytest.raises(DataFormatError) as err:
        read_source(reviews, "auto", ReadOptions(meta=meta))
    assert (err.value.path, err.value.line, err.value.field) == (str(meta), 2, "asin")
    with pytest.raises(FileNotFoundError):
        read_source(reviews, "auto", ReadOptions(meta=tmp_path / "missing.json"))


def test_2014_python_literal_metadata(tmp_path: Path) -> None:
    reviews = _write(tmp_path / "reviews_Beauty_5.json", _jsonl(REVIEWS_2018))
    meta_2014 = (
        "{'asin': 'B1', 'title': \"L'Oreal Lipstick\", 'brand': 'LOreal', "
        "'categories': [['Beauty', 'Makeup', 'Lips'], ['Beauty', 'Sets']]}\n"
        "{'asin': 'B2', 'description': 'Soft.'}\n"
    )
    meta = _write(tmp_path / "meta_Beauty.json.gz", meta_2014, gz=True)
    raw = read_source(reviews, "auto", ReadOptions(meta=meta))
    assert raw.item_text["B1"] == {
        "title": "L'Oreal Lipstick",
        "brand": "LOreal",
        "categories": "Beauty > Makeup > Lips; Beauty > Sets",
    }
    assert raw.item_text["B2"] == {"description": "Soft."}
    bad = _write(tmp_path / "bad.json", "{'asin': 'B1', 'title': __import__('os')}\n")
    with pytest.raises(DataFormatError, match="bad JSON") as err:
        read_source(reviews, "auto", ReadOptions(meta=bad))
    assert err.value.line == 1
