"""``explain: true`` over real HTTP with a real model and a real Redis: every reason is checked against
counts taken from the raw train interactions (not from the graph code the service uses)."""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest
from service_support import ServerThread, delete_prefix, redis_url_or_skip, tiny_store, unique_prefix

from model_store import ModelStore
from service.config import Settings
from service.main import create_app
from service.schemas import BatchRecommendResponse, RecommendResponse

KEY = "explain-key"
ADMIN = "explain-admin"


@pytest.fixture(scope="module")
def store():
    return tiny_store()


@pytest.fixture(scope="module")
def http(store, tmp_path_factory):
    url, prefix = redis_url_or_skip(), unique_prefix()
    settings = Settings(
        home=tmp_path_factory.mktemp("home"),
        model_store=store.root,
        api_key=KEY,
        admin_api_key=ADMIN,
        model_poll_s=0,
        access_log=False,
        redis_url=url,
        redis_prefix=prefix,
    )
    with (
        ServerThread(create_app(settings)) as srv,
        httpx.Client(base_url=srv.url, headers={"X-API-Key": KEY}, timeout=30) as c,
    ):
        yield c
    delete_prefix(url, prefix)


class Raw:
    """The served version's train interactions and prompt settings, as plain Python sets."""

    def __init__(self, store):
        folder = ModelStore(store.root).path(store.versions[0])
        cfg = json.loads((folder / "prompt_config.json").read_text())
        self.norm, self.n_co_users = cfg["two_hop_norm"], cfg["n_co_users"]
        self.user_ids = store.user_ids
        self.train = {u: set(items) for u, items in store.train_items.items()}
        self.users_of: dict[str, set[str]] = {}
        for u, items in self.train.items():
            for i in items:
                self.users_of.setdefault(i, set()).add(u)

    def co_users(self, user: str, stored: set[str]) -> list[str]:
        """The prompt's second-order users: most items shared with ``stored``, then the smaller index."""
        shared = Counter(v for i in stored for v in self.users_of.get(i, ()) if v != user)
        order = sorted(shared, key=lambda v: (-shared[v], self.user_ids.index(v)))
        return order[: self.n_co_users]

    def check(self, user: str, item: dict, history: set[str], co_users: list[str]) -> None:
        """``item``'s reasons are the ones the raw interactions give, at most 3, naming only ``history``."""
        c = item["id"]
        reasons = item["reasons"]
        assert len(reasons) <= 3
        pairs = {
            h: len((self.users_of.get(h, set()) & self.users_of.get(c, set())) - {user}) for h in history
        }
        pairs = {h: n for h, n in pairs.items() if n}
        chose = sum(c in self.train[v] for v in co_users)
        co = [r for r in reasons if r["kind"] == "co_occurrence"]
        assert {r["item_id"] for r in co} <= history  # names only the user's own items
        assert [r["count"] for r in co] == sorted(pairs.values(), reverse=True)[: 3 - (chose > 0)]
        degree = len(self.users_of[c])
        for r in co:
            assert r["count"] == pairs[r["item_id"]]
            assert r["strength"] == pytest.approx(r["count"] / degree**self.norm, rel=1e-5)
        shares = [r for r in reasons if r["kind"] == "co_users"]
        expect = [
            {"kind": "co_users", "share": chose / len(co_users), "count": chose, "co_users": len(co_users)}
        ]
        assert shares == (expect if chose else [])


def strip_id(r: httpx.Response) -> bytes:
    return r.content.replace(r.json()["request_id"].encode(), b"")


def test_explain_is_off_by_default_and_changes_nothing_else(http, store):
    user = store.user_ids[30]
    plain = http.post(f"/recommend/{user}", json={"k": 8})
    off = http.post(f"/recommend/{user}", json={"k": 8, "explain": False})
    on = http.post(f"/recommend/{user}", json={"k": 8, "explain": True})
    assert all("reasons" not in it for it in plain.json()["items"])
    assert strip_id(plain) == strip_id(off)  # byte for byte
    for a, b in zip(plain.json()["items"], on.json()["items"], strict=True):
        assert b.pop("reasons") is not None and a == b
    assert RecommendResponse.model_validate(on.json()).model_dump() == on.json()
    assert RecommendResponse.model_validate(plain.json()).model_dump() == plain.json()


def test_explain_reasons_match_the_raw_interactions(http, store):
    raw = Raw(store)
    kinds: Counter[str] = Counter()
    for user in store.user_ids[31:37]:
        body = http.post(f"/recommend/{user}", json={"k": 20, "explain": True}).json()
        history = raw.train[user]
        for item in body["items"]:
            raw.check(user, item, history, raw.co_users(user, history))
            kinds.update(r["kind"] for r in item["reasons"])
    assert kinds["co_occurrence"] > 0 and kinds["co_users"] > 0  # the check above had something to check


def test_explain_live_and_recent_items_show_up_as_reasons(http, store):
    raw = Raw(store)
    user = min(store.user_ids[37:60], key=lambda u: len(raw.train[u]))  # a short history: new items stand out
    live = max(set(raw.users_of) - raw.train[user], key=lambda i: (len(raw.users_of[i]), i))
    recent = max(set(raw.users_of) - raw.train[user] - {live}, key=lambda i: (len(raw.users_of[i]), i))
    assert http.post(f"/users/{user}/interactions", json={"items": [live]}).status_code == 201
    opts = {"k": 40, "explain": True, "recent_items": [recent]}
    body = http.post(f"/recommend/{user}", json=opts).json()
    stored = raw.train[user] | {live}
    named = set()
    for item in body["items"]:
        raw.check(user, item, stored | {recent}, raw.co_users(user, stored))
        named |= {r["item_id"] for r in item["reasons"] if r["kind"] == "co_occurrence"}
    assert {live, recent} <= named


def test_explain_cold_start_and_popularity(http, store):
    raw = Raw(store)
    recent = store.train_items[store.user_ids[40]][:3]
    body = http.post("/recommend/explain-visitor", json={"k": 10, "explain": True, "recent_items": recent})
    assert body.json()["fallback"] == "cold_start_context"
    for item in body.json()["items"]:
        raw.check("explain-visitor", item, set(recent), raw.co_users("explain-visitor", set(recent)))
    pop = http.post("/recommend/explain-nobody", json={"k": 5, "explain": True}).json()
    assert pop["fallback"] == "popularity" and [it["reasons"] for it in pop["items"]] == [[]] * 5


def test_explain_per_batch_entry(http, store):
    users = store.user_ids[41:43]
    req = {"requests": [{"user_id": users[0], "k": 5, "explain": True}, {"user_id": users[1], "k": 5}]}
    body = http.post("/recommend", json=req).json()
    assert BatchRecommendResponse.model_validate(body).model_dump() == body
    first, second = body["results"]
    assert all(isinstance(it["reasons"], list) for it in first["items"])
    assert all("reasons" not in it for it in second["items"])
    raw = Raw(store)
    for item in first["items"]:
        raw.check(users[0], item, raw.train[users[0]], raw.co_users(users[0], raw.train[users[0]]))


def test_explain_is_in_the_openapi_schema(http):
    schemas = http.get("/openapi.json").json()["components"]["schemas"]
    opt = schemas["RecommendOptions"]["properties"]["explain"]
    assert opt["type"] == "boolean" and opt["default"] is False and "reasons" in opt["description"]
    item = next(v for k, v in schemas.items() if k.startswith("RecommendedItem"))
    reasons = item["properties"]["reasons"]
    assert "explain" in reasons["description"]
    union = reasons["anyOf"][0]["items"]
    assert set(union["discriminator"]["mapping"]) == {"co_occurrence", "co_users", "similar_text"}
    for name, fields in (
        ("CoOccurrenceReason", ("count", "strength", "item_id")),
        ("CoUsersReason", ("share", "count", "co_users")),
        ("SimilarTextReason", ("similarity", "item_id", "in_history")),
    ):
        props = next(v for k, v in schemas.items() if k.startswith(name))["properties"]
        assert all(props[f].get("description") for f in fields), name


def test_explain_a_new_catalogue_item_by_its_text(http, store):
    """A new item (PUT /items, no interactions) is explained by the user's own item whose text it shares
    (what its history affinity scored), then, if that is another item, the known item its text is nearest
    to."""
    user = store.user_ids[44]
    raw = Raw(store)
    own = sorted(raw.train[user])[0]
    known = http.get(f"/items/{own}").json()
    body = {"title": "Brand-new " + known["title"]} | {
        f: known["fields"][f] for f in ("brand", "categories", "description") if known["fields"].get(f)
    }
    put = http.put("/items/explain-new-item", json=body, headers={"X-API-Key": ADMIN})
    assert put.status_code == 201 and put.json()["recommendable"], put.text
    everything = http.post(f"/recommend/{user}", json={"k": len(store.item_ids) + 10, "explain": True}).json()
    new = next(it for it in everything["items"] if it["id"] == "explain-new-item")
    assert 1 <= len(new["reasons"]) <= 2
    for reason in new["reasons"]:
        assert reason["kind"] == "similar_text" and 0 < reason["similarity"] <= 1 + 1e-6
        assert reason["item_id"] in store.item_ids  # a known item, named with its title
        assert reason["title"] == http.get(f"/items/{reason['item_id']}").json()["title"]
        # "one of yours" is said of the user's own items only
        assert reason["in_history"] == (reason["item_id"] in raw.train[user])
    first = new["reasons"][0]
    assert first["in_history"], new["reasons"]
    # the item whose text the new one copies, or one of the user's items with the very same text
    same = http.get(f"/items/{first['item_id']}").json()["fields"] == known["fields"]
    assert first["item_id"] == own or same
    for item in everything["items"]:  # the other items' reasons still name only the user's own items
        assert {r["item_id"] for r in item["reasons"] if r["kind"] == "co_occurrence"} <= raw.train[user]
    assert RecommendResponse.model_validate(everything).model_dump() == everything


def _reason_lookups(http) -> dict[str, float]:
    text = http.get("/metrics").text
    out = {}
    for line in text.splitlines():
        if line.startswith("edgerec_reason_cache_lookups_total{"):
            out[line.split('"')[1]] = float(line.rsplit(" ", 1)[1])
    return out


def test_explain_reason_cache_serves_a_repeat_answer_and_reports_it(http, store):
    user = store.user_ids[40]
    before = _reason_lookups(http)
    first = http.post(f"/recommend/{user}", json={"k": 10, "explain": True}).json()
    again = http.post(f"/recommend/{user}", json={"k": 10, "explain": True}).json()
    after = _reason_lookups(http)
    assert first["items"] == again["items"]  # the cached reasons are the computed ones
    assert after["miss"] - before.get("miss", 0) == 1 and after["hit"] - before.get("hit", 0) == 1
    assert "edgerec_reason_cache_entries " in http.get("/metrics").text
