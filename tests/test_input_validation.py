"""Bad input is a 4xx, always, with a body that is valid JSON: over real HTTP against the real app (tiny real
model, the machine's Redis), with the inputs that gave 500s and a property test of hostile JSON."""

from __future__ import annotations

import json
import math

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_support import ServerThread, delete_prefix, redis_url_or_skip, tiny_store, unique_prefix

from service.cache import Keys
from service.config import Settings
from service.main import create_app

KEY = "input-key"
ADMIN = "input-admin"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    store = tiny_store()
    url = redis_url_or_skip()
    prefix = unique_prefix()
    s = Settings(
        home=tmp_path_factory.mktemp("home"), model_store=store.root, api_key=KEY, admin_api_key=ADMIN,
        model_poll_s=0, access_log=False, redis_url=url, redis_prefix=prefix, log_level="ERROR",
    )  # fmt: skip
    with ServerThread(create_app(s)) as srv:
        yield srv, store, url, prefix
    delete_prefix(url, prefix)


@pytest.fixture(scope="module")
def http(served):
    with httpx.Client(base_url=served[0].url, headers={"X-API-Key": KEY}, timeout=30) as c:
        yield c


def strict_json(resp: httpx.Response):
    """The body as JSON, refusing what Python's json module lets through but JSON forbids."""

    def no_constant(name):
        raise ValueError(f"non-JSON constant {name}")

    return json.loads(resp.content.decode("utf-8", errors="strict"), parse_constant=no_constant)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/recommend/u1", b'{"k": 1e309}'),
        ("/recommend/u1", b'{"k": NaN}'),
        ("/recommend/u1", b'{"k": -Infinity}'),
        ("/recommend/u1", b'{"recent_items": ["\\ud800"]}'),
        ("/recommend", b'{"requests": [{"user_id": "u1", "exclude_items": ["a\\udfff"]}]}'),
        ("/users/u1/interactions", b'{"items": ["\\ud800"]}'),
        ("/users/u1/interactions", b'{"items": ["x"], "timestamps": [NaN]}'),
        ("/users/u1/interactions", b'{"items": ["x"], "timestamps": [Infinity]}'),
        ("/users/u1/interactions", b'{"items": ["x"], "timestamps": [1e309]}'),
        ("/recommend/u1", b'{"k": true}'),
        ("/recommend/u1", b'{"k": "10"}'),
        ("/recommend/u1", b'{"k": 10.5}'),
        ("/recommend/u1", b'{"exclude_seen": "yes"}'),
        ("/recommend/u1", b'{"k": 100000000000000000000000000000000000000000000000000}'),
    ],
)
def test_inputs_that_gave_500s_are_422_with_json_bodies(http, path, body):
    r = http.post(path, content=body, headers=JSON)
    assert r.status_code == 422, r.text
    detail = strict_json(r)["detail"]
    assert detail and detail[0]["loc"][0] == "body"


def test_bad_timestamps_store_nothing(http, served):
    _, store, url, prefix = served
    user = "ts-visitor"
    item = store.item_ids[0]
    for ts in (-1.0, 2e12):  # before 1970; a millisecond timestamp sent as seconds
        r = http.post(f"/users/{user}/interactions", json={"items": [item], "timestamps": [ts]})
        assert r.status_code == 422 and strict_json(r)["detail"][0]["loc"][:2] == ["body", "timestamps"]
    for raw in (b"NaN", b"Infinity", b"true", b'"1"'):
        body = b'{"items": ["%s"], "timestamps": [%s]}' % (item.encode(), raw)
        r = http.post(f"/users/{user}/interactions", content=body, headers=JSON)
        assert r.status_code == 422, raw
    assert redis.Redis.from_url(url).xlen(Keys(prefix).stream(user)) == 0


def test_the_key_is_checked_before_the_body(served):
    url = served[0].url
    for path in ("/recommend/u1", "/users/u1/interactions", "/recommend"):
        no_key = httpx.post(url + path, content=b'{"k": ', headers=JSON)
        assert no_key.status_code == 401, (path, no_key.text)
        wrong = httpx.post(url + path, content=b'{"k": ', headers=JSON | {"X-API-Key": "wrong"})
        assert wrong.status_code == 403
        assert strict_json(no_key)["detail"].startswith("missing X-API-Key")
    admin = httpx.post(url + "/admin/reload", content=b"{", headers=JSON | {"X-API-Key": KEY})
    assert admin.status_code == 403  # the API key is not the admin key, whatever the body
    ok_key = httpx.post(url + "/recommend/u1", content=b'{"k": ', headers=JSON | {"X-API-Key": KEY})
    assert ok_key.status_code == 422 and strict_json(ok_key)["detail"][0]["type"] == "json_invalid"


def test_idempotency_key_header_rules(http, served):
    store = served[1]
    item = store.item_ids[1]
    bad = http.post(
        "/users/u9/interactions", json={"items": [item]}, headers={"Idempotency-Key": "has space"}
    )
    assert bad.status_code == 422 and strict_json(bad)["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    first = http.post("/users/u9/interactions", json={"items": [item]}, headers={"Idempotency-Key": "a-1"})
    assert first.status_code == 201 and first.headers["Idempotency-Key"] == "a-1"
    reused = http.post(
        "/users/u9/interactions", json={"items": [store.item_ids[2]]}, headers={"Idempotency-Key": "a-1"}
    )
    assert reused.status_code == 422 and strict_json(reused)["detail"][0]["type"] == "idempotency_key_reused"
    derived = http.post("/users/u9/interactions", json={"items": [item], "timestamps": [7.0]})
    repeat = http.post("/users/u9/interactions", json={"items": [item], "timestamps": [7.0]})
    assert derived.status_code == repeat.status_code == 201
    assert repeat.json()["replayed"] and repeat.headers["Idempotent-Replayed"] == "true"
    assert repeat.json()["stream_id"] == derived.json()["stream_id"]
    assert repeat.json()["idempotency_key"] == derived.headers["Idempotency-Key"]


# ------------------------------------------------------------------------------------------ property test
class Raw(str):
    """A JSON token written as is: 1e309, NaN, -Infinity, a huge integer."""


def _dump(value) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, list):
        return "[" + ",".join(_dump(v) for v in value) + "]"
    if isinstance(value, tuple):  # an object as (key, value) pairs: duplicate keys allowed
        return "{" + ",".join(json.dumps(k) + ":" + _dump(v) for k, v in value) + "}"
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)  # NaN / Infinity, as Python writes them
    return json.dumps(value)  # ensure_ascii: a lone surrogate goes out as a \udXXX escape


texts = st.text(st.characters(codec=None, categories=("L", "N", "P", "Cs", "Co", "So")), max_size=12)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([Raw("1e309"), Raw("-1e309"), Raw("NaN"), Raw("Infinity"), Raw("9" * 400)]),
    texts,
)
FIELDS = ["k", "items", "timestamps", "recent_items", "exclude_items", "exclude_seen", "requests", "user_id"]
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(st.tuples(st.sampled_from(FIELDS) | texts, inner), max_size=4).map(tuple),
    ),
    max_leaves=12,
)
bodies = st.lists(st.tuples(st.sampled_from(FIELDS), values), max_size=5).map(tuple)
paths = st.sampled_from(
    ["/recommend/u1", "/recommend/prop-visitor", "/recommend", "/users/prop-visitor/interactions"]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=paths, body=st.one_of(bodies, values), key=st.sampled_from([None, "k-1", "k-2"]))
def test_hostile_json_never_gets_a_5xx(http, path, body, key):
    headers = JSON | ({"Idempotency-Key": key} if key else {})
    r = http.post(path, content=_dump(body).encode(), headers=headers)
    assert r.status_code < 500, (r.status_code, r.text)
    strict_json(r)  # always valid JSON, never NaN or a lone surrogate
