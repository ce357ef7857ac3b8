"""One import point for `audioop`, the C G.711 codec we build on.

`audioop` is in the standard library up to Python 3.12 and was removed in 3.13, where the
`audioop-lts` package provides the same module under the same name. Importing it here (and only
here) keeps the deprecation warning of 3.11/3.12 out of every caller and turns a missing module
into an error that says what to install.
"""

from __future__ import annotations

import warnings

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
except ModuleNotFoundError as exc:  # pragma: no cover - only on 3.13+ without the backport
    raise ImportError(
        "the 'audioop' module is missing: on Python 3.13 and later install the 'audioop-lts' "
        "package (pip install audioop-lts), which Switchboard needs for G.711"
    ) from exc

__all__ = ["audioop"]
