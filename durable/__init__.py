"""durable: atomic file writes; a reader sees the old file or the new one, never a half-written one.

The one helper for every file edgerec rewrites in place (graph snapshots, the model store's CURRENT and
history, baseline reports): write a temporary file beside the target, fsync it, then ``os.replace`` it over
the target (atomic on POSIX within one filesystem). A failure leaves the target as it was and removes the
temporary file."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np


def write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (fsynced before the rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def save_npy(path: str | Path, arr: np.ndarray) -> None:
    """``np.save`` (no pickles) to ``path``, atomically."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    write_bytes(path, buf.getvalue())
