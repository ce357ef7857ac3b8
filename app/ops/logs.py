"""Log setup: text for a terminal or one JSON object per line, the call id on every line of a
call, and caller data (transcripts, keys, variable values) hidden unless asked for.

A call's worker binds its call id once (`bind_call_id`); a filter on the handler puts it on
every record logged in that thread's context, so grepping a call's id finds all of its lines
without each log call naming it. Threads a call starts with `contextvars.copy_context()`
inherit it. Code that logs about a call from elsewhere (the SIP loop) passes
`extra={"call_id": ...}`, which wins.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from contextvars import ContextVar
from typing import TextIO

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(call_tag)s: %(message)s"

_call_id: ContextVar[str | None] = ContextVar("switchboard_call_id", default=None)
_show_sensitive = False
_RESERVED = {
    *vars(logging.LogRecord("", 0, "", 0, "", (), None)),
    "message",
    "asctime",
    "call_id",
    "call_tag",
    "taskName",
}
"""LogRecord attributes that are not `extra` fields."""


def bind_call_id(call_id: str | None) -> None:
    """Lines logged from now on in this thread's context carry `call_id` (None: no call)."""
    _call_id.set(call_id)


def current_call_id() -> str | None:
    return _call_id.get()


def sensitive(value: object) -> object:
    """`value` as a log line may show it: itself with `[server] log_sensitive`, else only its
    size. For what a caller said or keyed, and secrets: logs travel further than records."""
    if _show_sensitive:
        return value
    return f"[hidden: {len(str(value))} chars]"


class CallIdFilter(logging.Filter):
    """Puts the bound call id on records that do not name one themselves."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "call_id", None) is None:
            record.call_id = _call_id.get()
        return True


class TextFormatter(logging.Formatter):
    """The classic format, with `[call id]` after the logger name when the message does not
    already contain it."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        call_id = getattr(record, "call_id", None)
        shown = call_id and call_id not in record.getMessage()
        record.call_tag = f" [{call_id}]" if shown else ""
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, call_id when known, then any
    `extra` fields; a traceback goes in `exc`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        call_id = getattr(record, "call_id", None)
        if call_id:
            line["call_id"] = call_id
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def setup_logging(
    level: str = "INFO",
    fmt: str = "text",
    show_sensitive: bool = False,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Install the process's log handler on the root logger (replacing one installed before
    by this function) and return it. `fmt` is "text" or "json"."""
    global _show_sensitive
    _show_sensitive = show_sensitive
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(CallIdFilter())
    handler._switchboard = True  # type: ignore[attr-defined]  # marks ours for replacement
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_switchboard", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
