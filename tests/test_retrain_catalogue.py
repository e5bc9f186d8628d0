"""``edgerec retrain`` reads the Redis catalogue (``service.catalogue``): new items that appear in the new
interactions get their catalogue text in the snapshot and in the published version's ``items.json``;
available catalogue items nobody has interacted with yet are named in the manifest, not trained."""

from __future__ import annotations

import json
import time

import orjson
import redis
from test_retrain import env, new_traffic, run, write  # noqa: F401 (env: the fixture)

from model_store import ModelStore
from service.catalogue import CatalogueKeys, make_record
from training.data.dataset import PreparedDataset


def put_records(url: str, prefix: str, records: dict[str, tuple[dict, bool]]) -> None:
    """Catalogue records as ``PUT /items/{id}`` stores them (one hash field per item)."""
    r = redis.Redis.from_url(url)
    key = CatalogueKeys(prefix).items
    for item_id, (fields, available) in records.items():
        r.hset(key, item_id, orjson.dumps(make_record(item_id, fields, available, time.time())))
    r.close()


def test_retrain_takes_new_items_text_from_the_catalogue_and_lists_items_still_waiting(env):  # noqa: F811
    store = ModelStore(env["root"])
    traffic = new_traffic(env["tiny"], 12)  # brings new-item-0, -1 and -2 in interactions
    put_records(
        env["url"],
        env["prefix"],
        {
            "new-item-1": ({"title": "Desk lamp", "brand": "Acme", "categories": "Office, Lighting"}, True),
            "shelf-only": ({"title": "Stapler XL"}, True),  # in the catalogue, no interaction yet
            "withdrawn": ({"title": "Old pen"}, False),  # a tombstone: not waiting for anything
        },
    )
    write(env["url"], env["prefix"], traffic)
    res = run(env, tolerance=1.0)
    assert res.status == "promoted"
    extra = store.manifest(res.version).extra["retrain"]
    assert extra["catalogue"]["records"] == 3
    assert extra["catalogue"]["new_items_with_text"] == 1
    assert extra["catalogue"]["waiting"] == 1 and extra["catalogue"]["waiting_items"] == ["shelf-only"]

    snap = PreparedDataset.load(extra["dataset_dir"])
    idx = snap.item_index()
    assert "shelf-only" not in idx and "withdrawn" not in idx  # not trained
    assert snap.item_text["title"][idx["new-item-1"]] == "Desk lamp"
    assert snap.item_text["brand"][idx["new-item-1"]] == "Acme"
    assert snap.item_text["title"][idx["new-item-0"]] == ""  # no record
    items = {row["id"]: row for row in json.loads((store.path(res.version) / "items.json").read_text())}
    assert items["new-item-1"]["title"] == "Desk lamp"  # answers name the new item
