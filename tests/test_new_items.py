"""The catalogue over real HTTP with a real model and a real Redis: items added with PUT /items are
recommended without a new version (their vectors from the version's text model), withdrawn items never
appear, writes survive a service restart, bad bodies are 422s and a Redis outage is a 503 that stores
nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
import redis
from redis_procs import RedisClusterProcs, RedisProc
from service_support import ServerThread, delete_prefix, redis_url_or_skip, tiny_store, unique_prefix

from service.catalogue import Catalogue, CatalogueKeys, build_view, make_record, read_catalogue
from service.config import Settings
from service.main import create_app
from service.redis_conn import make_client
from service.serving import load_serving_model

KEY = "new-items-key"
ADMIN = "new-items-admin"


@pytest.fixture(scope="module")
def store():
    return tiny_store()


@pytest.fixture(scope="module")
def redis_url():
    return redis_url_or_skip()


@pytest.fixture(scope="module")
def settings(store, redis_url, tmp_path_factory):
    prefix = unique_prefix()
    yield make_settings(store, tmp_path_factory.mktemp("home"), redis_url=redis_url, redis_prefix=prefix)
    delete_prefix(redis_url, prefix)


def make_settings(store, home, **over) -> Settings:
    base = {
        "home": home,
        "model_store": store.root,
        "api_key": KEY,
        "admin_api_key": ADMIN,
        "model_poll_s": 0,
        "access_log": False,
        "catalogue_refresh_ms": 100,
    }
    return Settings(**(base | over))


@contextmanager
def serve(settings):
    with (
        ServerThread(create_app(settings)) as srv,
        httpx.Client(base_url=srv.url, headers={"X-API-Key": KEY}, timeout=30) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def server(settings):
    with serve(settings) as client:
        yield client


@pytest.fixture
def http(server):
    return server


ADMIN_HEADERS = {"X-API-Key": ADMIN}


def put(http, item_id, body):
    return http.put(f"/items/{item_id}", json=body, headers=ADMIN_HEADERS)


def delete(http, item_id):
    return http.delete(f"/items/{item_id}", headers=ADMIN_HEADERS)


def ids(resp) -> list[str]:
    assert resp.status_code == 200, resp.text
    return [it["id"] for it in resp.json()["items"]]


def text_of(http, item_id) -> dict:
    """A known item's text fields, for a new item that reads like it."""
    item = http.get(f"/items/{item_id}").json()
    return {"title": item["title"], **{f: v for f, v in item["fields"].items() if f in TEXT}}


TEXT = ("brand", "categories", "description")


def metric(http, name: str, **labels) -> float | None:
    """One sample of GET /metrics (None: no such series)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def everything(http, store, user, **opts):
    """The user's answer over the whole catalogue (known + new items)."""
    return http.post(f"/recommend/{user}", json={"k": len(store.item_ids) + 50, **opts})


# ---------------------------------------------------------------------------------- recommended at once
def test_new_item_is_recommended_without_a_new_version(http, store):
    user = store.user_ids[3]
    version = http.get("/model").json()["version"]
    ranked = ids(everything(http, store, user))
    top, bottom = ranked[0], ranked[-1]
    body = text_of(http, top) | {"title": "Brand-new " + text_of(http, top)["title"]}
    puts = metric(http, "edgerec_catalogue_writes_total", op="put", outcome="stored")
    new_items = metric(http, "edgerec_catalogue_new_items")

    r = put(http, "new-item-like-top", body)
    assert r.status_code == 201, r.text
    assert metric(http, "edgerec_catalogue_writes_total", op="put", outcome="stored") == puts + 1
    assert metric(http, "edgerec_catalogue_new_items") == new_items + 1
    assert metric(http, "edgerec_catalogue_seq") == r.json()["catalogue_seq"]
    assert r.json()["recommendable"] is True and r.json()["source"] == "catalogue"
    assert r.json()["reason"] is None and r.json()["created"] is True

    answer = everything(http, store, user)
    items = answer.json()["items"]
    mine = [it for it in items if it["id"] == "new-item-like-top"]
    assert len(mine) == 1 and mine[0]["title"] == body["title"]
    assert answer.json()["model_version"] == version  # no new version was needed
    scores = [it["score"] for it in items]
    assert scores == sorted(scores, reverse=True)  # merged into one ranking
    assert len(items) == len(set(ids(answer)))
    # its text is the top item's: it ranks above a new item that reads like the user's last one (where in the
    # top half depends on the text model validation chose: its own vector, or its text neighbours' mean)
    assert put(http, "new-item-like-bottom", text_of(http, bottom)).status_code == 201
    order = ids(everything(http, store, user))
    assert order.index("new-item-like-top") < order.index("new-item-like-bottom")
    assert order.index("new-item-like-top") < len(order) // 2
    assert delete(http, "new-item-like-bottom").status_code == 200

    got = http.get("/items/new-item-like-top").json()
    assert got["source"] == "catalogue" and got["available"] is True and got["recommendable"] is True
    assert got["popularity"] == 0.0 and got["fields"].get("brand") == body.get("brand")


def test_new_item_reaches_another_replica_within_the_refresh_interval(http, settings, store):
    user = store.user_ids[5]
    with serve(settings) as replica:
        top = ids(replica.post(f"/recommend/{user}", json={"k": 1}))[0]
        assert put(http, "new-item-for-replica", text_of(http, top)).status_code == 201
        deadline = time.monotonic() + 3  # refresh every 100 ms
        while "new-item-for-replica" not in ids(everything(replica, store, user)):
            assert time.monotonic() < deadline, "the replica never picked the new item up"
            time.sleep(0.05)
        assert delete(http, "new-item-for-replica").status_code == 200
        while "new-item-for-replica" in ids(everything(replica, store, user)):
            assert time.monotonic() < deadline + 3, "the replica kept recommending a withdrawn item"
            time.sleep(0.05)


# ---------------------------------------------------------------------------------- withdrawn items
def test_deleted_known_item_never_appears(http, store):
    user = store.user_ids[7]
    top = ids(http.post(f"/recommend/{user}", json={"k": 1}))[0]
    popular = ids(http.post("/recommend/nobody-new-items", json={"k": 1}))[0]  # the popularity fallback's

    for item in {top, popular}:
        r = delete(http, item)
        assert r.status_code == 200, r.text
        assert r.json()["available"] is False and r.json()["source"] == "model"
        assert r.json()["recommendable"] is False

    for who in (user, store.user_ids[8], "nobody-new-items"):
        for opts in ({}, {"exclude_seen": False}):
            assert not {top, popular} & set(ids(everything(http, store, who, **opts)))
    batch = http.post("/recommend", json={"requests": [{"user_id": user, "k": 50}]})
    assert top not in {it["id"] for it in batch.json()["results"][0]["items"]}
    item = http.get(f"/items/{top}").json()
    assert item["source"] == "model" and item["available"] is False and "withdrawn" in item["reason"]

    # PUT brings it back, with its new title in answers
    assert put(http, top, {"title": "Back again"}).status_code == 200
    back = everything(http, store, user).json()["items"]
    assert [it["title"] for it in back if it["id"] == top] == ["Back again"]


def test_deleted_new_item_disappears(http, store):
    user = store.user_ids[9]
    top = ids(http.post(f"/recommend/{user}", json={"k": 1}))[0]
    assert put(http, "new-item-short-lived", text_of(http, top)).status_code == 201
    assert "new-item-short-lived" in ids(everything(http, store, user))

    r = delete(http, "new-item-short-lived")
    assert r.status_code == 200 and r.json()["available"] is False and r.json()["created"] is False
    assert "new-item-short-lived" not in ids(everything(http, store, user))
    got = http.get("/items/new-item-short-lived").json()  # kept as a tombstone for the retrain
    assert got["available"] is False and got["source"] == "catalogue"
    assert delete(http, "no-such-new-item").status_code == 404


# ---------------------------------------------------------------------------------- interactions
def test_interactions_with_a_new_item_are_accepted_and_it_is_excluded_afterwards(http, store):
    top = ids(http.post(f"/recommend/{store.user_ids[11]}", json={"k": 1}))[0]
    assert put(http, "new-item-bought", text_of(http, top)).status_code == 201

    visitor = "new-items-visitor"  # a user the model has no token for, whose only item is the new one
    r = http.post(f"/users/{visitor}/interactions", json={"items": ["new-item-bought"]})
    assert r.status_code == 201, r.text
    answer = everything(http, store, visitor)
    # its stand-in (the known item nearest its text) reached the prompt: a personal answer, not popularity
    assert answer.json()["fallback"] == "cold_start_context"
    assert "new-item-bought" not in ids(answer)
    assert "new-item-bought" in ids(everything(http, store, visitor, exclude_seen=False))

    # recent_items may name it too (same treatment), and exclude_items
    user = store.user_ids[12]
    assert "new-item-bought" in ids(everything(http, store, user))
    assert "new-item-bought" not in ids(everything(http, store, user, recent_items=["new-item-bought"]))
    assert "new-item-bought" not in ids(everything(http, store, user, exclude_items=["new-item-bought"]))

    # ids neither the version nor the catalogue has available stay 422s
    bad = http.post(f"/users/{visitor}/interactions", json={"items": ["new-item-never-added"]})
    assert bad.status_code == 422 and "new-item-never-added" in bad.text
    assert put(http, "new-item-withdrawn", {"title": "Gone", "available": False}).status_code == 201
    gone = http.post(f"/users/{visitor}/interactions", json={"items": ["new-item-withdrawn"]})
    assert gone.status_code == 422
    rec = http.post(f"/recommend/{user}", json={"recent_items": ["new-item-withdrawn"]})
    assert rec.status_code == 422 and rec.json()["detail"][0]["type"] == "unknown_item"


# ---------------------------------------------------------------------------------- validation and auth
@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({}, "title", "Field required"),
        ({"title": ""}, "title", "at least 1 character"),
        ({"title": "   "}, "title", "must not be blank"),
        ({"title": "x" * 501}, "title", "at most 500 characters"),
        ({"title": 5}, "title", "valid string"),
        ({"title": "ok", "brand": "b" * 201}, "brand", "at most 200 characters"),
        ({"title": "ok", "description": "d" * 5001}, "description", "at most 5000 characters"),
        ({"title": "ok", "categories": ["a", "b"]}, "categories", "valid string"),
        ({"title": "ok", "available": "no"}, "available", "valid boolean"),
        ({"title": "ok", "price": 3}, "price", "Extra inputs"),
    ],
)
def test_new_item_bad_bodies_are_422(http, body, field, message):
    r = put(http, "new-item-bad", body)
    assert r.status_code == 422, r.text
    err = r.json()["detail"][0]
    assert err["loc"][-1] == field and message in err["msg"]
    assert http.get("/items/new-item-bad").status_code == 404  # nothing stored


def test_new_item_writes_need_the_admin_key(http, server):
    assert http.put("/items/new-item-x", json={"title": "t"}).status_code == 403  # the API key is not enough
    assert http.delete("/items/new-item-x").status_code == 403
    anon = httpx.put(str(http.base_url).rstrip("/") + "/items/new-item-x", json={"title": ""})
    assert anon.status_code == 401  # the key is checked before the body
    assert put(http, "x" * 257, {"title": "too long an id"}).status_code == 422


# ---------------------------------------------------------------------------------- durability
def test_new_item_writes_survive_a_service_restart(store, settings, redis_url):
    known = store.item_ids[20]
    with serve(settings) as http:
        assert put(http, "new-item-durable", {"title": "First", "brand": "Acme"}).status_code == 201
        r = put(http, "new-item-durable", {"title": "Second", "brand": "Acme", "categories": "Paper"})
        assert r.status_code == 200 and r.json()["created"] is False
        assert delete(http, known).status_code == 200
    with serve(settings) as http:  # a new process state: everything comes back from Redis
        got = http.get("/items/new-item-durable").json()
        assert got["title"] == "Second" and got["fields"] == {"brand": "Acme", "categories": "Paper"}
        assert got["recommendable"] is True
        assert http.get(f"/items/{known}").json()["available"] is False
        assert known not in ids(everything(http, store, store.user_ids[14], exclude_seen=False))

    records = read_catalogue(redis.Redis.from_url(redis_url), settings.redis_prefix)  # what a retrain reads
    assert records["new-item-durable"]["title"] == "Second" and records["new-item-durable"]["available"]
    assert records[known]["available"] is False and records[known]["id"] == known
    assert records[known]["title"] == store_title(store, known)  # the tombstone keeps the version's text


def store_title(store, item_id):
    import json

    from model_store import ModelStore

    folder = ModelStore(store.root).open_version(store.versions[0], verify=False).path
    items = json.loads((folder / "items.json").read_text())
    return next(it for it in items if it["id"] == item_id).get("title")


def test_new_item_write_is_a_503_that_stores_nothing_while_redis_is_down(store, tmp_path):
    rs = RedisProc(tmp_path / "redis").start()
    settings = make_settings(
        store,
        tmp_path / "home",
        redis_url=rs.url,
        redis_timeout_s=0.2,
        redis_backoff_max_s=0.3,
        retry_after_s=2,
    )
    try:
        with serve(settings) as http:
            assert put(http, "new-item-before", {"title": "Before"}).status_code == 201
            rs.stop()
            r = put(http, "new-item-during", {"title": "During"})
            assert r.status_code == 503 and r.headers["Retry-After"] == "2"
            assert (
                r.json()["detail"]["stored"] is False
                and "nothing was stored" in r.json()["detail"]["message"]
            )
            assert delete(http, "new-item-before").status_code == 503
            assert metric(http, "edgerec_catalogue_writes_total", op="put", outcome="not_stored") == 1
            assert metric(http, "edgerec_catalogue_writes_total", op="delete", outcome="not_stored") == 1
            assert http.get("/items/new-item-before").json()["available"] is True  # served from memory
            rs.start()  # same data (AOF): what was acknowledged is there, nothing else
            client = redis.Redis.from_url(rs.url)
            stored = client.hgetall(CatalogueKeys(settings.redis_prefix).items)
            assert set(stored) == {b"new-item-before"}
            assert int(client.get(CatalogueKeys(settings.redis_prefix).seq)) == 1
    finally:
        rs.stop()


# ---------------------------------------------------------------------------------- versions without text
def test_new_item_of_a_version_without_a_text_model_is_stored_but_not_recommendable(store):
    model = load_serving_model(Settings(model_store=store.root, use_gpu="no"), store.versions[0])
    assert model.text is not None, "the tiny versions are exported with a text model"
    records = {"new-item-plain": make_record("new-item-plain", {"title": "Notebook"}, True, 0.0)}
    view = build_view(
        dataclasses.replace(model, text=None), 1, records, {"new-item-plain": 0}, ["new-item-plain"]
    )
    assert view.new == {} and len(view.side) == 0 and view.accepts("new-item-plain")
    assert "no text model" in view.why_not(model, "new-item-plain")
    with_text = build_view(model, 1, records, {"new-item-plain": 0}, ["new-item-plain"])
    assert with_text.new["new-item-plain"].code == model.n_items and len(with_text.side) == 1
    assert np.isfinite(with_text.side.vectors).all()


# ---------------------------------------------------------------------------------- Redis Cluster
def test_new_item_catalogue_writes_are_one_slot_scripts_on_a_redis_cluster(tmp_path):
    cluster = RedisClusterProcs(tmp_path / "cluster")
    prefix = unique_prefix()

    async def go():
        catalogue = Catalogue(make_client(cluster.url, 0.5), prefix, lambda: None)
        first = await catalogue.put("new-item-c", {"title": "Cluster pen", "brand": "Acme"}, True)
        again = await catalogue.put("new-item-c", {"title": "Cluster pen v2"}, True)
        gone = await catalogue.delete("new-item-c", None)
        tomb = await catalogue.delete("i-known", {"id": "i-known", "title": "Known"})
        unknown = await catalogue.delete("new-item-nowhere", None)
        await catalogue.refresh()
        await catalogue.client.aclose()
        return catalogue, first, again, gone, tomb, unknown

    try:
        cluster.start()
        catalogue, first, again, gone, tomb, unknown = asyncio.run(go())
        assert (first.created, again.created, first.seq, again.seq, gone.seq, tomb.seq) == (
            True,
            False,
            1,
            2,
            3,
            4,
        )
        assert unknown is None
        # the DELETE edited the stored record (the second PUT's text), in Redis
        assert gone.record["title"] == "Cluster pen v2" and gone.record["available"] is False
        records = read_catalogue(cluster.client(), prefix)
        assert records == catalogue.records and catalogue.seq == 4
        assert records["i-known"] == {
            **make_record("i-known", {"title": "Known"}, False, 0),
            "updated_at": tomb.record["updated_at"],
        }
        keys = CatalogueKeys(prefix)
        assert cluster.client().keyslot(keys.items) == cluster.client().keyslot(keys.seq)
    finally:
        cluster.stop()
