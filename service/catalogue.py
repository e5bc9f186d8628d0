"""The durable catalogue (items added, updated or withdrawn after training) and each process's view of it.

Redis keys (``{cat}`` is a Redis Cluster hash tag: both keys share one slot, so a write is one atomic script):

- ``{prefix}:catalogue:{cat}:items``  hash: raw item id -> JSON record ``{id, title, brand, categories,
  description, available, updated_at}`` (ids are hash fields, never part of a key name)
- ``{prefix}:catalogue:{cat}:seq``    counter bumped by every write, in the same script

``PUT /items/{id}`` and ``DELETE /items/{id}`` write a record and bump the counter together (a withdrawn item
stays as a tombstone with ``available: false``, so a retrain knows it). ``read_catalogue`` is what
``edgerec retrain`` reads.

Every service process polls the counter (``EDGEREC_CATALOGUE_REFRESH_MS``) and, when it moved, reloads the
records and rebuilds the served version's :class:`CatalogueView` off the event loop: the version's items that
are withdrawn (left out of every answer), the available items the version does not know with their vectors
from the version's text model (a :class:`~inference.side_index.SideIndex` merged into every search), and
updated titles. The process that took a write rebuilds before it answers; other replicas follow within the
refresh interval. A hot swap builds the new version's view before the version takes traffic.

A new item appears in answers under a *code* ``n_items + ordinal``, where the ordinal is fixed for the life
of the process, so an exclusion computed against one view still means the same item in the next one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import scipy.sparse as sp
from redis.exceptions import RedisError

from inference.item_text import TEXT_FIELDS, TextVectoriser, item_text, stack_rows
from inference.side_index import SideIndex
from service.background import cancelled
from service.idempotency import certainly_not_sent

if TYPE_CHECKING:
    from service.serving import ServingModel

log = logging.getLogger("edgerec.catalogue")

SCAN_PAGE = 1000  # HSCAN COUNT: records per round trip when reloading

# KEYS: items hash, sequence counter. ARGV: item id, record JSON. Returns {1 if the id is new else 0, seq}.
PUT_SCRIPT = """
local created = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local seq = redis.call('INCR', KEYS[2])
return {created, seq}
"""

# KEYS: items hash, sequence counter. ARGV: item id, updated_at, the record to withdraw when the id has none
# yet ('' when the id is unknown). The stored record is edited here, not in the caller, so a PUT racing with
# the DELETE cannot be overwritten by a stale copy. Returns {seq, record}, or {0, ''} for an unknown id.
DELETE_SCRIPT = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  if ARGV[3] == '' then return {0, ''} end
  raw = ARGV[3]
end
local rec = cjson.decode(raw)
rec['available'] = false
rec['updated_at'] = tonumber(ARGV[2])
local out = cjson.encode(rec)
redis.call('HSET', KEYS[1], ARGV[1], out)
return {redis.call('INCR', KEYS[2]), out}
"""


@dataclass(frozen=True)
class CatalogueKeys:
    prefix: str

    @property
    def items(self) -> str:
        return f"{self.prefix}:catalogue:{{cat}}:items"

    @property
    def seq(self) -> str:
        return f"{self.prefix}:catalogue:{{cat}}:seq"


def make_record(item_id: str, fields: Mapping[str, Any], available: bool, now: float) -> dict[str, Any]:
    """A catalogue record: the item text fields (None when not given), availability, time of the write."""
    return {
        "id": item_id,
        **{f: fields.get(f) for f in TEXT_FIELDS},
        "available": available,
        "updated_at": round(now, 3),
    }


def parse_records(pairs: Iterable[tuple[bytes, bytes]]) -> dict[str, dict[str, Any]]:
    records = {}
    for raw_id, raw in pairs:
        item_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
        try:
            records[item_id] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("malformed catalogue record skipped", extra={"item": item_id})
    return records


def read_catalogue(redis_client, prefix: str) -> dict[str, dict[str, Any]]:
    """Every catalogue record, for ``edgerec retrain``: ``{item id: record}``.

    ``redis_client`` is a synchronous ``redis.Redis`` or ``redis.cluster.RedisCluster``; ``prefix`` the
    deployment's ``EDGEREC_REDIS_PREFIX``. A record is ``{"id", "title", "brand", "categories",
    "description"`` (str or None), ``"available"`` (bool: False is a withdrawn item, kept as a tombstone,
    which may be an item the served version knows), ``"updated_at"`` (UNIX seconds of the last write)``}``.
    Items the served version already knows appear only when they were updated or withdrawn. Read with HSCAN
    (pages, never blocking Redis); a write during the read may or may not be included."""
    return parse_records(redis_client.hscan_iter(CatalogueKeys(prefix).items, count=SCAN_PAGE))


class CatalogueUnavailable(Exception):
    """A catalogue write failed. ``stored`` is False when it certainly did not run, "unknown" when it may
    have (a PUT or DELETE is safe to repeat)."""

    def __init__(self, message: str, stored: bool | str) -> None:
        super().__init__(message)
        self.stored = stored


@dataclass(frozen=True)
class Written:
    record: dict[str, Any]
    seq: int
    created: bool = False


# ------------------------------------------------------------------------------------------- per version
MAX_TEXT_REASONS = 2  # a new item's text reasons: its most similar history items / its nearest known item


@dataclass(frozen=True)
class NewItem:
    """An available catalogue item the version does not know, with its vector from the text model."""

    code: int  # its id in answers: n_items + the process's ordinal of the item
    text: str  # the text the vector came from (reused while the text is unchanged)
    vector: np.ndarray  # float32 [D]
    nearest: int  # the most text-similar item the version knows (-1: none): its stand-in in prompts
    similarity: float  # cosine similarity of the two texts (the text model's)
    bag: sp.csr_matrix  # [1, words] its text's bag of word pieces (the history affinity's input)


@dataclass(eq=False)
class CatalogueView:
    """The catalogue as one version serves it (immutable once built; replaced whole on a change)."""

    seq: int | None  # the catalogue sequence it was built from (None: never loaded)
    n_items: int  # the version's
    records: Mapping[str, dict[str, Any]]  # every catalogue record (shared snapshot)
    ids: Sequence[str]  # ordinal -> item id (the process's, append-only)
    excluded: np.ndarray  # int64, sorted: the version's items that are withdrawn
    titles: dict[int, str]  # the version's items whose title the catalogue updated
    new: dict[str, NewItem]  # recommendable new items
    side: SideIndex
    has_text_model: bool
    by_code: dict[int, NewItem] = field(init=False)

    def __post_init__(self) -> None:
        self.by_code = {n.code: n for n in self.new.values()}

    def accepts(self, item_id: str) -> bool:
        """A catalogue item that is available (interactions with it are taken)."""
        rec = self.records.get(item_id)
        return rec is not None and bool(rec.get("available"))

    def label(self, model: ServingModel, i: int) -> tuple[str, str | None]:
        """(raw id, title) of an item index or new-item code."""
        if i < self.n_items:
            return model.item_ids[i], self.titles.get(i) or model.items[i].get("title")
        item_id = self.ids[i - self.n_items]
        return item_id, (self.records.get(item_id) or {}).get("title")

    def similar(
        self, codes: Sequence[int], history: np.ndarray | None = None, text: TextVectoriser | None = None
    ) -> dict[int, list[tuple[int, float, bool]]]:
        """{code: [(known item, text similarity, in the user's history), ...]} for the new items among
        ``codes``: the ``history`` items whose text is most similar (what the history affinity scored),
        then the nearest known item when it is not one of them; at most ``MAX_TEXT_REASONS`` each."""
        found = [n for n in (self.by_code.get(c) for c in codes if c >= self.n_items) if n is not None]
        own = np.zeros((len(found), 0), np.float32)
        if history is not None and history.size and text is not None and found:
            own = text.similarity_to(stack_rows([n.bag for n in found], text.idf.shape[0]), history)
        out: dict[int, list[tuple[int, float, bool]]] = {}
        for row, n in enumerate(found):
            sims = own[row]
            best = np.argsort(-sims, kind="stable")[:MAX_TEXT_REASONS]
            reasons = [(int(history[j]), float(sims[j]), True) for j in best if sims[j] > 0]
            if n.nearest >= 0 and all(r[0] != n.nearest for r in reasons):
                reasons.append((n.nearest, n.similarity, False))
            if reasons:
                out[n.code] = reasons[:MAX_TEXT_REASONS]
        return out

    def why_not(self, model: ServingModel, item_id: str) -> str | None:
        """Why ``item_id`` cannot appear in answers now (None: it can)."""
        rec = self.records.get(item_id)
        if rec is not None and not rec.get("available"):
            return "withdrawn (available: false)"
        if item_id in model.item_index or item_id in self.new:
            return None
        if rec is None:
            return (
                "not in this process's catalogue view yet (it refreshes within EDGEREC_CATALOGUE_REFRESH_MS)"
            )
        if not self.has_text_model:
            return (
                f"model version {model.version} has no text model: the item is stored and becomes "
                "recommendable with the next retrain"
            )
        return f"its text has no word the text model of version {model.version} knows"


def empty_view(model: ServingModel, seq: int | None = None) -> CatalogueView:
    return CatalogueView(
        seq, model.n_items, {}, [], np.zeros(0, np.int64), {}, {}, SideIndex.empty(model.ranker.dim),
        model.text is not None,
    )  # fmt: skip


def build_view(
    model: ServingModel,
    seq: int | None,
    records: Mapping[str, dict[str, Any]],
    ordinal: Mapping[str, int],
    ids: Sequence[str],
) -> CatalogueView:
    """The view of ``records`` for ``model`` (CPU work: run it off the event loop). Vectors of new items
    whose text did not change are taken from the model's previous view."""
    excluded, titles, fresh = [], {}, {}
    for item_id, rec in records.items():
        i = model.item_index.get(item_id)
        if i is not None:
            if not rec.get("available"):
                excluded.append(i)
            elif rec.get("title"):
                titles[i] = rec["title"]
        elif rec.get("available") and model.text is not None:
            fresh[item_id] = item_text(rec)
    previous = model.catalogue.new if model.catalogue is not None else {}
    new = {it: previous[it] for it, text in fresh.items() if it in previous and previous[it].text == text}
    todo = [it for it in fresh if it not in new]
    if todo:
        found = model.text.vectors([fresh[it] for it in todo])
        for j, it in enumerate(todo):
            if np.any(found.vectors[j]):  # all zero: no word of the text is known; it would score 0 for all
                new[it] = NewItem(
                    model.n_items + ordinal[it],
                    fresh[it],
                    found.vectors[j],
                    int(found.nearest[j]),
                    float(found.similarity[j]),
                    found.bags[j],
                )
    items = list(new.values())
    side = (
        SideIndex(
            np.array([n.code for n in items]),
            np.stack([n.vector for n in items]),
            stack_rows([n.bag for n in items], model.text.idf.shape[0]),
        )
        if items
        else SideIndex.empty(model.ranker.dim)
    )
    return CatalogueView(
        seq, model.n_items, records, ids, np.unique(np.asarray(excluded, dtype=np.int64)), titles, new, side,
        model.text is not None,
    )  # fmt: skip


# ---------------------------------------------------------------------------------- request-path helpers
_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Resolved:
    """Raw item ids of one request field, as the request path uses them."""

    items: np.ndarray  # int64, in order: the version's items, a new item replaced by its stand-in
    known: np.ndarray  # int64: the version's items named directly
    new: np.ndarray  # int64: codes of the recommendable new items named
    stand_ins: np.ndarray  # int64: the stand-ins in ``items``
    unknown: list[str]  # ids neither the version knows nor the catalogue has available (unique, in order)


def resolve(model: ServingModel, ids: Sequence[str]) -> Resolved:
    """Map raw ids through the version and its catalogue view."""
    index, view = model.item_index, model.catalogue
    if view is None or not view.records:  # no catalogue: the version's ids only
        unknown = [i for i in ids if i not in index]
        known = np.fromiter((index[i] for i in ids if i in index), dtype=np.int64)
        return Resolved(known, known, _EMPTY, _EMPTY, list(dict.fromkeys(unknown)))
    items, known, new, stand_ins, unknown = [], [], [], [], []
    for item_id in ids:
        i = index.get(item_id)
        if i is not None:
            items.append(i)
            known.append(i)
        elif (n := view.new.get(item_id)) is not None:
            new.append(n.code)
            if n.nearest >= 0:
                items.append(n.nearest)
                stand_ins.append(n.nearest)
        elif not view.accepts(item_id):
            unknown.append(item_id)
    return Resolved(_ints(items), _ints(known), _ints(new), _ints(stand_ins), list(dict.fromkeys(unknown)))


def _ints(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def item_label(model: ServingModel, i: int) -> tuple[str, str | None]:
    """(raw id, title) of an index or new-item code in an answer."""
    if model.catalogue is None:
        return model.item_ids[i], model.items[i].get("title")
    return model.catalogue.label(model, i)


def split_exclusions(model: ServingModel, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the version's items, new-item codes) of one sorted exclusion array."""
    cut = np.searchsorted(exclude, model.n_items)
    return exclude[:cut], exclude[cut:]


# ------------------------------------------------------------------------------------------- the process
class Catalogue:
    """The process's catalogue: writes, the latest records it loaded, and the served version's view."""

    def __init__(
        self,
        client,
        prefix: str,
        current: Callable[[], ServingModel | None],
        *,
        timeout_s: float = 0.5,
    ) -> None:
        self.client = client
        self.keys = CatalogueKeys(prefix)
        self.current = current
        self.call_timeout_s = timeout_s * 4  # a script is one command; same guard as the cache's calls
        self._put = client.register_script(PUT_SCRIPT)
        self._delete = client.register_script(DELETE_SCRIPT)
        self.seq: int | None = None  # the sequence number of ``records`` (None: not loaded yet)
        self.records: dict[str, dict[str, Any]] = {}  # replaced, never mutated: views share it
        self._ordinal: dict[str, int] = {}
        self._ids: list[str] = []
        self._lock = asyncio.Lock()  # one reload/rebuild at a time

    # -- writes ------------------------------------------------------------------------------------------

    async def put(self, item_id: str, fields: Mapping[str, Any], available: bool) -> Written:
        record = make_record(item_id, fields, available, time.time())
        created, seq = await self._write(self._put, [item_id, orjson.dumps(record)])
        return Written(record, int(seq), bool(created))

    async def delete(self, item_id: str, known: Mapping[str, Any] | None) -> Written | None:
        """Withdraw ``item_id``; ``known`` is the version's metadata of it, for an item the catalogue has
        no record of yet (None: unknown to both, nothing is written and None is returned)."""
        now = round(time.time(), 3)
        fallback = orjson.dumps(make_record(item_id, known, False, now)) if known is not None else b""
        seq, raw = await self._write(self._delete, [item_id, now, fallback])
        return Written(orjson.loads(raw), int(seq)) if int(seq) else None

    async def _write(self, script, args: list) -> Any:
        try:
            async with asyncio.timeout(self.call_timeout_s):
                return await script(keys=[self.keys.items, self.keys.seq], args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            stored = False if certainly_not_sent(exc) else "unknown"
            raise CatalogueUnavailable(f"{type(exc).__name__}: {exc}", stored) from exc

    # -- the process's view ------------------------------------------------------------------------------

    async def refresh(self, written: Written | None = None) -> None:
        """Bring the records and the served version's view up to date. ``written``: a write this process
        just made; when it is the only change since the last load it is applied without a reload."""
        async with self._lock:
            # The write is the only change since the records loaded: apply it. (Records from a scan may
            # already hold a later write of another process; then the seq the next poll reads differs from
            # ours and it reloads, so any such mix-up lasts one refresh interval at most.)
            if written is not None and self.seq is not None and written.seq == self.seq + 1:
                self._adopt(written.seq, {**self.records, written.record["id"]: written.record})
            else:
                seq = int(await self.client.get(self.keys.seq) or 0)
                if seq != self.seq:
                    await self._reload(seq)
            model = self.current()
            if model is not None and (model.catalogue is None or model.catalogue.seq != self.seq):
                model.catalogue = await self._build(model)

    async def prepare(self, model: ServingModel) -> None:
        """Give a freshly loaded version its view before it serves (the hot swap's prepare hook). Redis
        down: the view of the records loaded last (none at start-up); the poller catches up."""
        async with self._lock:
            if self.seq is None:
                try:
                    await self._reload(int(await self.client.get(self.keys.seq) or 0))
                except (RedisError, OSError, TimeoutError) as exc:
                    log.warning("catalogue not loaded: Redis unavailable", extra={"error": str(exc)})
            model.catalogue = await self._build(model)

    async def poll(self, every_s: float) -> None:
        """Follow the catalogue's sequence number (each replica runs one)."""
        failing = False
        while not cancelled():  # not only the exception: redis-py can swallow it (service/background.py)
            await asyncio.sleep(every_s)
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 (a dead poller would freeze the catalogue silently)
                if not failing:
                    log.warning(
                        "catalogue refresh failed",
                        extra={"error": f"{type(exc).__name__}: {exc}"},
                        exc_info=not isinstance(exc, RedisError | OSError | TimeoutError),
                    )
                failing = True
                continue
            if failing:
                log.info("catalogue refresh works again")
            failing = False

    async def _reload(self, seq: int) -> None:
        """Every record (read after ``seq``: a write during the scan makes the next poll reload again)."""
        pairs = [p async for p in self.client.hscan_iter(self.keys.items, count=SCAN_PAGE)]
        self._adopt(seq, await asyncio.to_thread(parse_records, pairs))

    def _adopt(self, seq: int, records: dict[str, dict[str, Any]]) -> None:
        for item_id in records:
            if item_id not in self._ordinal:
                self._ordinal[item_id] = len(self._ids)
                self._ids.append(item_id)
        self.seq, self.records = seq, records

    async def _build(self, model: ServingModel) -> CatalogueView:
        if not self.records:
            return empty_view(model, self.seq)
        return await asyncio.to_thread(build_view, model, self.seq, self.records, self._ordinal, self._ids)
