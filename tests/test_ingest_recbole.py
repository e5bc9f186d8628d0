"""RecBole atomic-file reader and format detection, on files each test writes itself."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from training.data.ingest import detect_format, read_source
from training.data.recbole import read_recbole
from training.data.text_io import DataFormatError

INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "u1\ti1\t5\t100\n"
    "u1\ti2\t3\t200\n"
    "u2\ti1\t4\t150\n"
)
ITEM = (
    "item_id:token\ttitle:token_seq\tbrand:token\tcategories:token_seq\tprice:float\n"
    "i1\tRed   Pen\tAcme\tOffice > Pens\t1.5\n"
    "i2\tBlue Pad\t\tOffice > Paper\t2.0\n"
)
USER = "user_id:token\tage:token\nu1\t24\nu2\t53\n"


def _folder(tmp_path: Path, inter: str = INTER, item: str | None = ITEM, user: str | None = USER) -> Path:
    d = tmp_path / "toy"
    d.mkdir()
    (d / "toy.inter").write_text(inter)
    if item is not None:
        (d / "toy.item").write_text(item)
    if user is not None:
        (d / "toy.user").write_text(user)
    return d


def test_reads_interactions_text_and_users(tmp_path: Path) -> None:
    raw = read_recbole(_folder(tmp_path))
    assert raw.users == ["u1", "u1", "u2"]
    assert raw.items == ["i1", "i2", "i1"]
    np.testing.assert_array_equal(raw.ratings, [5, 3, 4])
    np.testing.assert_array_equal(raw.timestamps, [100, 200, 150])
    # token_seq and known text columns only (price is a float feature, not text); whitespace collapsed
    assert raw.item_text == {
        "i1": {"title": "Red Pen", "brand": "Acme", "categories": "Office > Pens"},
        "i2": {"title": "Blue Pad", "categories": "Office > Paper"},
    }
    assert raw.user_features == {"u1": {"age": "24"}, "u2": {"age": "53"}}
    assert raw.info["format"] == "recbole"


def test_movielens_field_names_become_canonical(tmp_path: Path) -> None:
    item = (
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tComedy\n"
    )
    inter = "user_id:token\titem_id:token\n7\t1\n"
    raw = read_recbole(_folder(tmp_path, inter=inter, item=item, user=None))
    assert raw.item_text["1"] == {"title": "Toy Story", "release_year": "1995", "categories": "Comedy"}
    assert raw.ratings is None and raw.timestamps is None


def test_gzip_is_detected_by_magic_bytes_not_name(tmp_path: Path) -> None:
    d = tmp_path / "gz"
    d.mkdir()
    (d / "gz.inter").write_bytes(gzip.compress(INTER.encode()))  # plain name, gzip content
    raw = read_recbole(d)
    assert raw.users == ["u1", "u1", "u2"]


def test_detection(tmp_path: Path) -> None:
    d = _folder(tmp_path)
    assert detect_format(d) == "recbole"
    assert detect_format(d / "toy.inter") == "recbole"
    renamed = tmp_path / "data.txt"  # an atomic header is recognised without the .inter suffix
    renamed.write_text(INTER)
    assert detect_format(renamed) == "recbole"
    assert read_source(renamed).items == ["i1", "i2", "i1"]


def test_folder_with_several_inter_files_prefers_its_own_name(tmp_path: Path) -> None:
    d = _folder(tmp_path)
    (d / "other.inter").write_text("user_id:token\titem_id:token\nx\ty\n")
    assert read_recbole(d).users == ["u1", "u1", "u2"]
    (d / "toy.inter").unlink()
    (d / "third.inter").write_text("user_id:token\titem_id:token\nx\ty\n")
    with pytest.raises(DataFormatError, match="several .inter files"):
        read_recbole(d)


@pytest.mark.parametrize(
    ("content", "line", "field", "message"),
    [
        ("", 1, None, "empty"),
        ("user_id\titem_id:token\nu\ti\n", 1, "user_id", "name:type"),
        ("user_id:token\tscore:float\nu\t1\n", 1, "item_id", "missing"),
        ("user_id:token\titem_id:token\n", 2, None, "no interaction rows"),
        ("user_id:token\titem_id:token\nu1\ti1\nu2\ti2\textra\n", 3, None, "expected 2"),
        ("user_id:token\titem_id:token\trating:float\nu1\ti1\t4\nu2\ti2\tfive\n", 3, "rating", "five"),
        ("user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t1\n\nu2\ti2\tnan\n", 4, "timestamp", "nan"),
        ("user_id:token\titem_id:token\nu1\ti1\n\ti2\n", 3, "user_id", "empty id"),
        ("user_id:token\tuser_id:token\nu1\tu2\n", 1, "user_id", "twice"),
    ],
)
def test_malformed_inter_names_file_line_field(
    tmp_path: Path, content: str, line: int, field: str | None, message: str
) -> None:
    d = _folder(tmp_path, inter=content, item=None, user=None)
    with pytest.raises(DataFormatError, match=message) as err:
        read_recbole(d)
    assert err.value.path == str(d / "toy.inter")
    assert err.value.line == line
    assert err.value.field == field
    assert f"line {line}" in str(err.value) and "toy.inter" in str(err.value)


def test_bad_utf8_names_the_line(tmp_path: Path) -> None:
    d = tmp_path / "bad"
    d.mkdir()
    (d / "bad.inter").write_bytes(b"user_id:token\titem_id:token\nu1\ti1\nu2\t\xff\xfe\n")
    with pytest.raises(DataFormatError, match="UTF-8") as err:
        read_recbole(d)
    assert err.value.line == 3


def test_malformed_item_file(tmp_path: Path) -> None:
    d = _folder(tmp_path, item="title:token_seq\nPen\n")
    with pytest.raises(DataFormatError) as err:
        read_recbole(d)
    assert err.value.path.endswith("toy.item") and err.value.field == "item_id"


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_source(tmp_path / "nope")
    with pytest.raises(DataFormatError, match="no .inter"):
        read_recbole(tmp_path)
