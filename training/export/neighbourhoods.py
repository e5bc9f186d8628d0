"""Write every train user's prompt neighbourhood and hop distances into a version (read by
``inference.neighbourhoods``, which documents the layout).

What is stored is what the service computes on a cache miss for a request whose history is the user's train
history, through the same calls: ``builder.neighbourhood(u, train items)``, the predictive prompt's node set,
and ``graph.hop_distances`` among those nodes (batched here with ``hop_distances_many``, which shares BFS
work across users and gives the same distances). ``tests/test_cold_path.py`` checks prompt and bias equality
with the computed path for every user of a tiny version.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from graphprompt.prompts import PromptBuilder
from inference.neighbourhoods import (
    ALIGN,
    FORMAT_VERSION,
    NBR_FILE,
    NBR_META,
    TABLES,
    pack_triangle,
)

DIST_CHUNK = 1024  # users per batched BFS call (bounds the memory of the pieces kept between calls)


def _csr(rows: list[np.ndarray], dtype: str) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([r.size for r in rows])
    flat = np.concatenate(rows).astype(dtype) if rows else np.zeros(0, dtype)
    return indptr, flat


def user_rows(builder: PromptBuilder, u: int) -> tuple[np.ndarray, ...]:
    """(co-users, their weights, two-hop items, their weights, prompt nodes) of train user ``u``, as the
    service's ``Recommender._prompt`` builds them for a request whose history is the train history."""
    empty_i, empty_f = np.zeros(0, np.int64), np.zeros(0, np.float32)
    items = builder.graph.user_items(u)
    if items.size == 0:  # answered by popularity, never by a prompt
        return empty_i, empty_f, empty_i, empty_f, empty_i
    nbr = builder.neighbourhood(u, items)
    prompt = builder.predictive(u, items, nbr, with_bias=False)
    nodes = np.unique(prompt.node_ids[prompt.node_ids >= 0])
    if nbr is None:
        return empty_i, empty_f, empty_i, empty_f, nodes
    return nbr.co_users, nbr.co_user_weight, nbr.two_hop_items, nbr.two_hop_weight, nodes


def write_neighbourhoods(builder: PromptBuilder, folder: str | Path) -> dict:
    """Write ``neighbourhoods.npy`` and ``neighbourhoods.json`` into ``folder``; returns counts and timings
    for ``export.json``."""
    folder = Path(folder)
    graph, cfg = builder.graph, builder.cfg
    t0 = time.perf_counter()
    rows = [user_rows(builder, u) for u in range(graph.n_users)]
    t_nbr = time.perf_counter() - t0
    node_sets = [r[4] for r in rows]
    tri: list[np.ndarray] = []
    for start in range(0, len(node_sets), DIST_CHUNK):
        sets = node_sets[start : start + DIST_CHUNK]
        todo = [k for k, s in enumerate(sets) if s.size and cfg.bias.enabled]
        dists = graph.hop_distances_many([sets[k] for k in todo], cfg.bias.max_hops) if todo else []
        found = dict(zip(todo, dists, strict=True))
        tri += [pack_triangle(found[k]) if k in found else np.zeros(0, np.int8) for k in range(len(sets))]
    tables: dict[str, np.ndarray] = {}
    for key, (ids, weights), cols in (
        ("co", (0, 1), ("co_users", "co_weight")),
        ("two", (2, 3), ("two_items", "two_weight")),
    ):
        tables[f"{key}_indptr"], tables[cols[0]] = _csr([r[ids] for r in rows], TABLES[cols[0]])
        tables[cols[1]] = _csr([r[weights] for r in rows], TABLES[cols[1]])[1]
    tables["node_indptr"], tables["nodes"] = _csr(node_sets, TABLES["nodes"])
    tables["dist_indptr"], tables["dist"] = _csr(tri, TABLES["dist"])
    layout = _write_blob(folder / NBR_FILE, tables)
    meta = {
        "format_version": FORMAT_VERSION,
        "n_users": graph.n_users,
        "n_items": graph.n_items,
        "n_edges": graph.n_edges,
        "prompt_config": cfg.to_dict(),
        "tables": layout,
    }
    (folder / NBR_META).write_text(json.dumps(meta))
    return {
        "users": graph.n_users,
        "bytes": (folder / NBR_FILE).stat().st_size,
        "neighbourhood_seconds": round(t_nbr, 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _write_blob(path: Path, tables: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """Every table back to back in one uint8 .npy, each starting on an ALIGN-byte boundary; returns
    {name: [byte offset, element count]}."""
    layout, parts, off = {}, [], 0
    for name, dtype in TABLES.items():
        raw = np.ascontiguousarray(tables[name], dtype=dtype).view(np.uint8)
        layout[name] = [off, int(tables[name].size)]
        pad = -raw.size % ALIGN
        parts += [raw, np.zeros(pad, np.uint8)]
        off += raw.size + pad
    np.save(path, np.concatenate(parts) if parts else np.zeros(0, np.uint8), allow_pickle=False)
    return layout
