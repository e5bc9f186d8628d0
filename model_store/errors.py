"""Exceptions of the model store. All derive from `ModelStoreError` so the CLI and service can catch one."""

from __future__ import annotations


class ModelStoreError(Exception):
    """Base class: anything the store refuses or cannot find."""


class VersionNotFound(ModelStoreError):
    """A version id (or alias such as ``current``) that names no version in the store."""


class NoCurrentVersion(VersionNotFound):
    """Nothing has been promoted yet, so ``current`` names nothing."""


class NoPreviousVersion(ModelStoreError):
    """`rollback()` was asked for but the promotion history has no earlier version."""


class InvalidVersionFolder(ModelStoreError):
    """A folder given to `publish()` cannot become a version (forbidden file type, symlink, empty, ...)."""


class InvalidMetadata(ModelStoreError):
    """The metadata given to `publish()` does not fit the manifest schema."""


class IntegrityError(ModelStoreError):
    """A version does not match its manifest; ``problems`` has one line per missing/extra/changed file."""

    def __init__(self, version: str, problems: list[str]) -> None:
        self.version = version
        self.problems = list(problems)
        shown = "; ".join(self.problems[:10])
        more = f" (+{len(self.problems) - 10} more)" if len(self.problems) > 10 else ""
        super().__init__(f"version {version} failed verification: {shown}{more}")


class FileNotInVersion(ModelStoreError, KeyError):
    """`VersionHandle.file(name)` for a name the version's manifest does not list."""

    def __str__(self) -> str:  # KeyError would repr() the message; keep it readable
        return str(self.args[0]) if self.args else ""
