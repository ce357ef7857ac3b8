"""Where tests find model weights: `SWITCHBOARD_MODELS_DIR`.

`scripts/test` sets it to the cache `scripts/test-models` fills with the real Whisper tiny.en,
Whisper base and Piper Joe weights (checked against the catalogue). Vosk English models are not
obtainable on this project's machines (no registry package carries them), so the Vosk tests
that need weights still skip, and say so.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

MODELS_ENV = "SWITCHBOARD_MODELS_DIR"


UNOBTAINABLE = {
    "vosk-model-small-en-us-0.15": "no registry package carries Vosk English weights; "
    "`switchboard models pull vosk-model-small-en-us-0.15` on a machine with network",
}


def models_root(*names: str) -> Path:
    """The models directory holding all of `names` (files or folders); skip the test with a
    reason naming the variable and what is missing otherwise."""
    root = os.environ.get(MODELS_ENV)
    if not root:
        pytest.skip(f"needs weights: set {MODELS_ENV} to a directory holding {' and '.join(names)}")
    missing = [name for name in names if not (Path(root) / name).exists()]
    if missing:
        why = "; ".join(UNOBTAINABLE[name] for name in missing if name in UNOBTAINABLE)
        pytest.skip(
            f"needs weights: {MODELS_ENV}={root} has no {', '.join(missing)}"
            + (f" ({why})" if why else "")
        )
    return Path(root)
