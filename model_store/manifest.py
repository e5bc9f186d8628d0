"""The manifest of a model version (`manifest.json`) and the rules on which files a version may hold.

The manifest is the contract between training (which publishes) and serving (which opens): it names every file
with its size and sha256, so a served model is exactly the one that was evaluated.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InvalidMetadata

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"

# Only formats that load without running code. Pickle-based formats (.pkl, .pt, .bin, .npz with objects, ...)
# can execute arbitrary code on load, so a version may never carry them.
ALLOWED_SUFFIXES = frozenset({".json", ".npy", ".safetensors", ".onnx", ".faiss", ".txt", ".md", ".png"})
PICKLE_LIKE_SUFFIXES = frozenset(
    {".pkl", ".pickle", ".pt", ".pth", ".bin", ".npz", ".joblib", ".ckpt", ".dill", ".sav", ".h5", ".model"}
)

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_HASH_CHUNK = 1 << 20


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(ge=0)
    sha256: str

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not _SHA256_RE.match(v):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return v


class Metrics(BaseModel):
    model_config = ConfigDict(extra="forbid")

    valid: dict[str, float] = Field(default_factory=dict)
    test: dict[str, float] = Field(default_factory=dict)


class CodeVersion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    edgerec: str
    git_commit: str | None = None


class Metadata(BaseModel):
    """What a publisher tells the store about a version; the store adds files, created_at and the id."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    dataset_fingerprint: str | None = None
    # `model_config` is reserved by pydantic, so the field is `config` in Python and `model_config` in JSON.
    config: dict[str, Any] = Field(default_factory=dict, alias="model_config")
    metrics: Metrics = Field(default_factory=Metrics)
    code_version: CodeVersion | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


class Manifest(Metadata):
    schema_version: int
    version: str
    created_at: str
    files: dict[str, FileEntry]
    code_version: CodeVersion | None = None  # None: the publisher did not say which code made it

    @field_validator("created_at")
    @classmethod
    def _utc_iso(cls, v: str) -> str:
        try:
            ts = datetime.fromisoformat(v)
        except ValueError as exc:
            raise ValueError(f"created_at {v!r} is not an ISO-8601 timestamp") from exc
        if ts.utcoffset() is None or ts.utcoffset().total_seconds() != 0:
            raise ValueError(f"created_at {v!r} must be UTC")
        return v

    @field_validator("files")
    @classmethod
    def _paths(cls, v: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for name in v:
            problem = check_relative_name(name)
            if problem:
                raise ValueError(f"file {name!r}: {problem}")
        return v

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True), indent=2, sort_keys=True) + "\n"

    @classmethod
    def parse(cls, text: str | bytes) -> Manifest:
        """Parse and validate manifest text; raises ValueError with a readable reason."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc})") from exc
        if not isinstance(raw, dict):
            raise ValueError("top level is not a JSON object")
        sv = raw.get("schema_version")
        if sv != SCHEMA_VERSION:
            raise ValueError(f"schema_version {sv!r} is not supported (this store reads {SCHEMA_VERSION})")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ValueError(_pydantic_summary(exc)) from exc


def parse_metadata(metadata: Metadata | dict[str, Any] | None) -> Metadata:
    """Validate publisher metadata; unknown keys or wrong types raise `InvalidMetadata` naming the field."""
    if metadata is None:
        return Metadata()
    if isinstance(metadata, Metadata):
        return metadata
    if not isinstance(metadata, dict):
        raise InvalidMetadata(f"metadata must be a dict or Metadata, got {type(metadata).__name__}")
    try:
        return Metadata.model_validate(metadata)
    except ValidationError as exc:
        raise InvalidMetadata(f"invalid metadata: {_pydantic_summary(exc)}") from exc


def _pydantic_summary(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def check_relative_name(name: str) -> str | None:
    """Why `name` may not be a file of a version, or None if it may."""
    p = PurePosixPath(name)
    bad_part = any(part in ("", ".", "..") for part in name.split("/"))
    if not name or p.is_absolute() or "\\" in name or bad_part:
        return "must be a plain relative path"
    if name == MANIFEST_NAME:
        return "manifest.json is written by the store"
    return check_suffix(name)


def check_suffix(name: str) -> str | None:
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in ALLOWED_SUFFIXES:
        return None
    allowed = " ".join(sorted(ALLOWED_SUFFIXES))
    if suffix in PICKLE_LIKE_SUFFIXES:
        return (
            f"{suffix} files may hold pickled code and are never stored; "
            "save arrays as .npy and weights as .safetensors"
        )
    return f"file type {suffix or '(none)'} is not allowed; allowed: {allowed}"


def sha256_file(path: Path) -> tuple[int, str]:
    """(size, sha256 hex) of a file, streamed."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256")
        size = f.tell()
    return size, digest.hexdigest()


def utc_now_iso(ts: datetime | None = None) -> str:
    ts = ts or datetime.now(UTC)
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
