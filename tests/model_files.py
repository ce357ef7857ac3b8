"""Where tests find model weights that cannot be downloaded here: `SWITCHBOARD_MODELS_DIR`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

MODELS_ENV = "SWITCHBOARD_MODELS_DIR"


def models_root(*names: str) -> Path:
    """The models directory holding all of `names` (files or folders); skip the test with a
    reason naming the variable and what is missing otherwise."""
    root = os.environ.get(MODELS_ENV)
    if not root:
        pytest.skip(f"needs weights: set {MODELS_ENV} to a directory holding {' and '.join(names)}")
    missing = [name for name in names if not (Path(root) / name).exists()]
    if missing:
        pytest.skip(f"needs weights: {MODELS_ENV}={root} has no {', '.join(missing)}")
    return Path(root)
