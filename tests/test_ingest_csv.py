"""CSV/TSV interactions with named or guessed columns, and item text from an item CSV."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from training.data.ingest import detect_format, read_source
from training.data.text_io import DataFormatError, ReadOptions


def _write(path: Path, text: str, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path


def test_named_columns_and_item_file(tmp_path: Path) -> None:
    inter = _write(tmp_path / "events.csv", "who,what,stars,when,extra\nu1,i1,4.5,10,x\nu2,i2,2,20,y\n")
    items = _write(
        tmp_path / "items.csv",
        'id,name,genres,price\ni1,"Pen, blue",Office|Pens,1\ni2,Pad,Paper,2\ni3,,Misc,3\n',
    )
    opts = ReadOptions(
        user_col="who",
        item_col="what",
        rating_col="stars",
        time_col="when",
        item_file=items,
        item_id_col="id",
        text_cols=["name=title", "genres"],
    )
    raw = read_source(inter, "csv", opts)
    assert raw.users == ["u1", "u2"] and raw.items == ["i1", "i2"]
    np.testing.assert_array_equal(raw.ratings, [4.5, 2])
    np.testing.assert_array_equal(raw.timestamps, [10, 20])
    assert raw.item_text == {  # quoted comma kept; genres -> canonical "categories"; price not asked for
        "i1": {"title": "Pen, blue", "categories": "Office|Pens"},
        "i2": {"title": "Pad", "categories": "Paper"},
        "i3": {"categories": "Misc"},
    }
    assert raw.info["columns"]["user"] == "who" and raw.info["columns"]["text"] == {
        "name": "title",
        "genres": "categories",
    }


def test_guessed_columns_sniffed_tab_gzip_and_iso_times(tmp_path: Path) -> None:
    text = "userId\tmovieId\trating\ttimestamp\n1\t10\t4\t2020-01-01T00:00:00\n2\t10\t5\t1577836800.5\n"
    path = _write(tmp_path / "ratings.dat", text, gz=True)  # gzip recognised by content
    assert detect_format(path) == "csv"
    raw = read_source(path)
    assert raw.users == ["1", "2"] and raw.items == ["10", "10"]
    np.testing.assert_array_equal(raw.timestamps, [1577836800.0, 1577836800.5])
    assert raw.info["columns"] == {
        "user": "userId",
        "item": "movieId",
        "rating": "rating",
        "time": "timestamp",
    }


def test_no_rating_column_means_no_ratings(tmp_path: Path) -> None:
    raw = read_source(_write(tmp_path / "x.csv", "user_id;item_id\na;b\n"), "csv")
    assert raw.ratings is None and raw.timestamps is None


def test_explicit_separator(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.csv", "user_id|item_id,with,commas\na|b,c\n")
    raw = read_source(path, "csv", ReadOptions(sep="|", item_col="item_id,with,commas"))
    assert raw.items == ["b,c"]


def test_folder_with_one_csv(tmp_path: Path) -> None:
    _write(tmp_path / "x.tsv", "user_id\titem_id\na\tb\n")
    assert detect_format(tmp_path) == "csv"
    assert read_source(tmp_path).users == ["a"]
    _write(tmp_path / "y.csv", "user_id,item_id\na,b\n")
    with pytest.raises(DataFormatError, match="expected one CSV"):
        read_source(tmp_path)


@pytest.mark.parametrize(
    ("text", "opts", "line", "field", "message"),
    [
        ("", {}, 1, None, "empty"),
        ("user_id,item_id\n", {}, 2, None, "no interaction rows"),
        ("a,b\n1,2\n", {"user_col": "user"}, 1, "user", "not in header"),
        ("uid,iid\n1,2\n", {}, 1, "user_id", "no user column"),
        ("user_id,item_id\n1,2\n3,4,5\n", {}, 3, None, "expected 2 fields, got 3"),
        ("user_id,item_id,rating\n1,2,4\n3,4,\n", {}, 3, "rating", "not a number"),
        ("user_id,item_id,rating\n1,2,4\n\n3,4,high\n", {}, 4, "rating", "high"),
        ("user_id,item_id,timestamp\n1,2,5\n3,4,yesterday\n", {}, 3, "timestamp", "ISO-8601"),
        ("user_id,item_id\n1,2\n,4\n", {}, 3, "user_id", "empty id"),
        ('user_id,item_id\n1,"2\n', {}, 2, None, "malformed CSV"),
    ],
)
def test_malformed_csv_names_file_line_field(
    tmp_path: Path, text: str, opts: dict, line: int, field: str | None, message: str
) -> None:
    path = _write(tmp_path / "bad.csv", text)
    with pytest.raises(DataFormatError, match=message) as err:
        read_source(path, "csv", ReadOptions(**opts))
    assert (err.value.path, err.value.line, err.value.field) == (str(path), line, field)


def test_malformed_item_file(tmp_path: Path) -> None:
    inter = _write(tmp_path / "x.csv", "user_id,item_id\na,b\n")
    items = _write(tmp_path / "items.csv", "item_id,title\nb,Pen\nc\n")
    with pytest.raises(DataFormatError) as err:
        read_source(inter, "csv", ReadOptions(item_file=items))
    assert (err.value.path, err.value.line) == (str(items), 3)
    with pytest.raises(DataFormatError) as err:
        read_source(inter, "csv", ReadOptions(item_file=items, text_cols=["name"]))
    assert (err.value.line, err.value.field) == (1, "name")


def test_options_for_another_format_are_rejected(tmp_path: Path) -> None:
    inter = _write(tmp_path / "x.inter", "user_id:token\titem_id:token\na\tb\n")
    with pytest.raises(ValueError, match="--user-col: options for CSV"):
        read_source(inter, "auto", ReadOptions(user_col="who"))
    csv_file = _write(tmp_path / "x.csv", "user_id,item_id\na,b\n")
    with pytest.raises(ValueError, match="--meta: option for Amazon"):
        read_source(csv_file, "auto", ReadOptions(meta=inter))
