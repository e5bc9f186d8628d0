"""Every train user's prompt neighbourhood and hop distances, precomputed by the export and memory-mapped.

A cache miss for a user the model knows used to run ``builder.neighbourhood`` and a bounded BFS on the event
loop (a third of its time under load). ``edgerec export`` (``training/export/neighbourhoods.py``) now writes,
for each train user, exactly what that computation returns for a request whose history is the user's train
history: the second-order users and two-hop candidates with their weights, and the hop distances among the
prompt's nodes. The service turns a miss into two slices of a memory-mapped file.

Layout: ``neighbourhoods.npy`` is one flat uint8 array holding every table back to back (each 8-byte aligned),
``neighbourhoods.json`` names their dtype, offset and length, and records the prompt settings they were
computed with. One file mapped read-only (``np.load(mmap_mode="r")``) means the page cache holds one copy that
every worker process shares. Tables, CSR style (``*_indptr`` has n_users + 1 offsets):

- ``co_indptr`` / ``co_users`` int32 / ``co_weight`` float32: second-order users, best first
- ``two_indptr`` / ``two_items`` int32 / ``two_weight`` float32: two-hop candidate items, best first
- ``node_indptr`` / ``nodes`` int32: the prompt's distinct node ids, ascending
- ``dist_indptr`` / ``dist`` int8: the strict upper triangle (row-major) of their hop-distance matrix; the
  matrix is symmetric with a zero diagonal, so half of it is all there is to store

A user with no train items has empty rows (and node count 0: nothing stored, the caller computes).
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graphprompt.graph import Neighbourhood
from graphprompt.prompts import PromptBuilder, PromptConfig

log = logging.getLogger("edgerec.neighbourhoods")

NBR_FILE = "neighbourhoods.npy"
NBR_META = "neighbourhoods.json"
FORMAT_VERSION = 1
TABLES = {
    "co_indptr": "<i8",
    "co_users": "<i4",
    "co_weight": "<f4",
    "two_indptr": "<i8",
    "two_items": "<i4",
    "two_weight": "<f4",
    "node_indptr": "<i8",
    "nodes": "<i4",
    "dist_indptr": "<i8",
    "dist": "i1",
}
ALIGN = 8

Distances = tuple[np.ndarray, np.ndarray]


@functools.lru_cache(maxsize=512)
def _triu(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the strict upper triangle of an n x n matrix (prompts have < 512 nodes)."""
    return np.triu_indices(n, 1)


def pack_triangle(dist: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(dist[_triu(dist.shape[0])], dtype=np.int8)


def unpack_triangle(tri: np.ndarray, n: int) -> np.ndarray:
    """The symmetric int8 [n, n] matrix with zero diagonal whose strict upper triangle is ``tri``."""
    full = np.zeros((n, n), dtype=np.int8)
    rows, cols = _triu(n)
    full[rows, cols] = tri
    full[cols, rows] = tri
    return full


@dataclass(frozen=True)
class StoredNeighbourhoods:
    """Read-only view of a version's ``neighbourhoods.npy`` (slices of the memory map, no copies)."""

    tables: dict[str, np.ndarray]
    n_users: int

    def lookup(self, user: int, items: np.ndarray) -> tuple[Neighbourhood | None, Distances | None] | None:
        """(neighbourhood, (nodes, hop distances)) of ``user`` as the prompt builder computes them for the
        train history ``items`` (the user's train items, which the neighbourhood names); None when nothing
        is stored for the user. The neighbourhood is None for a config without one, the distances for a
        config without the bias."""
        t = self.tables
        if not 0 <= user < self.n_users:
            return None
        n0, n1 = int(t["node_indptr"][user]), int(t["node_indptr"][user + 1])
        if n1 == n0:
            return None
        nodes = np.asarray(t["nodes"][n0:n1], dtype=np.int64)
        d0, d1 = int(t["dist_indptr"][user]), int(t["dist_indptr"][user + 1])
        n = nodes.size
        distances = (nodes, unpack_triangle(t["dist"][d0:d1], n)) if d1 - d0 == n * (n - 1) // 2 else None
        c0, c1 = int(t["co_indptr"][user]), int(t["co_indptr"][user + 1])
        w0, w1 = int(t["two_indptr"][user]), int(t["two_indptr"][user + 1])
        nbr = Neighbourhood(
            items=np.asarray(items, dtype=np.int64),
            co_users=np.asarray(t["co_users"][c0:c1], dtype=np.int64),
            co_user_weight=np.asarray(t["co_weight"][c0:c1], dtype=np.float32),
            two_hop_items=np.asarray(t["two_items"][w0:w1], dtype=np.int64),
            two_hop_weight=np.asarray(t["two_weight"][w0:w1], dtype=np.float32),
            user=int(user),
        )
        return nbr, distances


def open_neighbourhoods(folder: str | Path, builder: PromptBuilder) -> StoredNeighbourhoods | None:
    """The version's stored neighbourhoods, memory-mapped; None when the version has none (exported before
    they existed) or they were computed for other prompt settings or another graph (then every miss
    computes, as before)."""
    folder = Path(folder)
    if not (folder / NBR_FILE).is_file() or not (folder / NBR_META).is_file():
        return None
    meta = json.loads((folder / NBR_META).read_text())
    graph = builder.graph
    same = (
        meta.get("format_version") == FORMAT_VERSION
        # read like the version's prompt_config.json: a field added since takes the value it was trained with
        and PromptConfig.from_saved(meta.get("prompt_config") or {}) == builder.cfg
        and (meta.get("n_users"), meta.get("n_items"), meta.get("n_edges"))
        == (graph.n_users, graph.n_items, graph.n_edges)
    )
    if not same:
        log.warning("stored neighbourhoods ignored: computed for other prompt settings or another graph")
        return None
    blob = np.load(folder / NBR_FILE, mmap_mode="r", allow_pickle=False)
    tables = {}
    for name, dtype in TABLES.items():
        off, count = meta["tables"][name]
        size = count * np.dtype(dtype).itemsize
        tables[name] = blob[off : off + size].view(dtype)
    for key in ("co", "two", "node", "dist"):
        if tables[f"{key}_indptr"].shape != (graph.n_users + 1,):
            raise ValueError(f"{folder / NBR_FILE}: {key}_indptr does not have n_users + 1 entries")
    return StoredNeighbourhoods(tables, graph.n_users)
