"""Model store: immutable, verified model versions (training -> serving contract) and the item index."""

from .errors import (
    FileNotInVersion,
    IntegrityError,
    InvalidMetadata,
    InvalidVersionFolder,
    ModelStoreError,
    NoCurrentVersion,
    NoPreviousVersion,
    VersionNotFound,
)
from .manifest import ALLOWED_SUFFIXES, SCHEMA_VERSION, Manifest, Metadata
from .store import ModelStore, VersionHandle, VersionInfo, default_store_root

__all__ = [
    "ALLOWED_SUFFIXES",
    "SCHEMA_VERSION",
    "FileNotInVersion",
    "IntegrityError",
    "InvalidMetadata",
    "InvalidVersionFolder",
    "Manifest",
    "Metadata",
    "ModelStore",
    "ModelStoreError",
    "NoCurrentVersion",
    "NoPreviousVersion",
    "VersionHandle",
    "VersionInfo",
    "VersionNotFound",
    "default_store_root",
]
