"""What goes wrong with models, by who has to act: the operator, the network, the files."""

from __future__ import annotations


class ModelError(RuntimeError):
    """A model could not be downloaded, installed or verified (`switchboard models` exits 1)."""


class UsageError(ModelError):
    """The request itself is wrong: an unknown name, a missing --name (exits 2)."""


class DownloadError(ModelError):
    """The transfer failed; a partial download is kept for the next pull to continue."""


class ChecksumMismatch(ModelError):
    """Bytes that are not the catalogue's: deleted, never installed."""


class UnsafeArchive(ModelError):
    """An archive entry would land outside the folder it is extracted into."""


class CatalogueError(ValueError):
    """The catalogue file is not valid (`switchboard models` exits 2)."""


class ModelMissing(RuntimeError):
    """A model the configuration names is not installed; the message says what to run."""
