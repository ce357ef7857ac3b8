"""Model files for the speech engines: a catalogue of known models, downloads and offline
installs into the models folder (`[models] dir`), verification, and the look-up the server does
at start-up. The server itself never downloads.

The folder's layout is in app/models/layout.py; `switchboard models` (app/models/commands.py)
is the operator's side.
"""

from app.models.catalogue import (
    Archive,
    Catalogue,
    CatalogueEntry,
    RemoteFile,
    load_catalogue,
)
from app.models.errors import CatalogueError, ModelError, ModelMissing
from app.models.resolve import resolve_model, resolve_piper_voices

__all__ = [
    "Archive",
    "Catalogue",
    "CatalogueEntry",
    "CatalogueError",
    "ModelError",
    "ModelMissing",
    "RemoteFile",
    "load_catalogue",
    "resolve_model",
    "resolve_piper_voices",
]
