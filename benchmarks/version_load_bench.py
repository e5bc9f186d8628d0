"""Publish and load time of a real exported model version (issue target: each under 5 s for amazon-beauty).

Usage: python benchmarks/version_load_bench.py VERSION_DIR   (a folder written by `edgerec export`)
Publishes a copy into a temporary store, then opens it the way the service does (the store's checksum
verification, then ``inference.version.open_version``): embeddings, FAISS, ONNX session, graph, catalogue.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from inference.version import open_version
from model_store import ModelStore


def main(src: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "src"
        shutil.copytree(src, copy, ignore=shutil.ignore_patterns("manifest.json"))
        for p in copy.rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        size = sum(p.stat().st_size for p in copy.rglob("*") if p.is_file())
        store = ModelStore(Path(tmp) / "store")
        t = time.perf_counter()
        version = store.publish(copy, {})
        t_publish = time.perf_counter() - t
        t = time.perf_counter()
        handle = store.open_version(version, verify=True)
        opened = open_version(handle.path)  # the inference core, exactly as the service opens it
        emb = opened.ranker.item_embeddings
        t_load = time.perf_counter() - t
    print(f"version {src.name}: {size / 2**20:.1f} MiB, {emb.shape[0]} items x {emb.shape[1]}-d")
    print(f"publish (copy + sha256 + fsync + rename): {t_publish:.2f} s")
    print(f"load (verify + open_version: embeddings, FAISS, ONNX session, graph, catalogue): {t_load:.2f} s")


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: python benchmarks/version_load_bench.py VERSION_DIR")
    main(Path(sys.argv[1]))
