"""``service.schemas.item_write_body``: a dataset's item text as a PUT /items body the API accepts."""

from __future__ import annotations

from shared_data import dataset_or_skip

from service.schemas import ITEM_TEXT_LIMITS, ItemWrite, item_write_body


def test_fields_are_cut_to_the_apis_limits_and_blanks_left_out() -> None:
    text = {"title": "t" * 700, "brand": "  ", "categories": "c" * 2000, "description": "fine"}
    body = item_write_body("B0001", text)
    assert body == {"title": "t" * ITEM_TEXT_LIMITS["title"], "categories": "c" * 1000, "description": "fine"}
    ItemWrite(**body)  # what the service validates
    assert item_write_body("B0002", {}) == {"title": "B0002"}


def test_every_amazon_beauty_item_gives_a_valid_body() -> None:
    from training.data.ingest import read_source

    raw = read_source(dataset_or_skip("amazon-beauty"))
    assert raw.item_text and max(len(t.get("title", "")) for t in raw.item_text.values()) > 500
    for item, text in raw.item_text.items():
        ItemWrite(**item_write_body(item, text))
