"""Report sections as a terminal table (rich), CSV or JSON.

A section is a dict of named parts (a `Summary`, or lists of row dataclasses) as `SECTIONS`
loads them. JSON keeps that shape, so it is the stable interface for scripts:
`{"report": NAME, "filters": {"from", "to", "dialplan"}, PART: ...}`, rows as objects named by
their fields, datetimes as ISO 8601 UTC, missing figures as null. CSV writes each part as a
header row and rows, parts separated by an empty line (summary: its one row of figures only).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from sqlalchemy import Engine

from app.report import queries
from app.report.queries import Filters

Section = dict[str, Any]

SECTIONS: dict[str, Callable[[Engine, Filters], Section]] = {
    "summary": lambda engine, filters: {
        "summary": queries.summary(engine, filters),
        "calls_per_hour": queries.calls_per_hour(engine, filters),
    },
    "latency": lambda engine, filters: {
        "stages": queries.latency(queries.stage_values(engine, filters))
    },
    "outcomes": lambda engine, filters: {
        "outcomes": queries.outcomes(engine, filters),
        "top_no_match_prompts": queries.top_no_match(engine, filters),
    },
    "calls": lambda engine, filters: {"calls": queries.calls(engine, filters)},
}
"""What each subcommand reads; the keys are the section's JSON keys."""

PARTS: dict[str, tuple[str, type]] = {
    "summary": ("Summary", queries.Summary),
    "calls_per_hour": ("Calls per hour", queries.HourCount),
    "stages": ("Latency per stage (ms)", queries.StageLatency),
    "outcomes": ("Outcomes", queries.OutcomeCount),
    "top_no_match_prompts": ("Top no-match prompts", queries.NoMatchPrompt),
    "calls": ("Calls", queries.CallRow),
}
"""Each part's title and row type (its fields are the columns, also of an empty part)."""


@dataclass(frozen=True)
class Grid:
    """One part as a title, column names and rows of plain values."""

    key: str
    title: str
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


def report_sections(report: queries.Report) -> dict[str, Section]:
    """Every section of a full report, shaped as `SECTIONS` loads them one at a time."""
    return {
        "summary": {"summary": report.summary, "calls_per_hour": report.per_hour},
        "latency": {"stages": report.latency},
        "outcomes": {"outcomes": report.outcomes, "top_no_match_prompts": report.top_no_match},
        "calls": {"calls": report.calls},
    }


def grids(section: Section) -> list[Grid]:
    """Each part of a section as a grid (a `Summary` is a grid of one row)."""
    result = []
    for key, part in section.items():
        title, row_type = PARTS[key]
        rows = part if isinstance(part, list) else [part]
        columns = tuple(f.name for f in dataclasses.fields(row_type))
        values = [tuple(getattr(row, column) for column in columns) for row in rows]
        result.append(Grid(key, title, columns, values))
    return result


def as_json(name: str, section: Section, filters: Filters) -> dict[str, Any]:
    """The section as a JSON-ready dict (see the module docstring)."""
    document: dict[str, Any] = {
        "report": name,
        "filters": {
            "from": _iso(filters.start),
            "to": _iso(filters.end),
            "dialplan": filters.dialplan,
        },
    }
    for key, part in section.items():
        document[key] = _plain(part)
    return document


def write(name: str, section: Section, filters: Filters, fmt: str, out: IO[str]) -> None:
    """Print the section to `out` as "table", "csv" or "json"."""
    if fmt == "json":
        json.dump(as_json(name, section, filters), out, indent=2)
        out.write("\n")
    elif fmt == "csv":
        _write_csv(section, out)
    else:
        _write_table(section, out)


def format_value(column: str, value: Any) -> str:
    """A value as people read it: rates as percentages, times rounded, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return _iso(value) or "-"
    if isinstance(value, float):
        if column.endswith("_rate") or column == "share":
            return f"{value:.1%}"
        return f"{value:.1f}"
    return str(value)


def _write_csv(section: Section, out: IO[str]) -> None:
    writer = csv.writer(out, lineterminator="\n")
    parts = [g for g in grids(section) if g.key != "calls_per_hour"]  # summary: one row only
    for index, grid in enumerate(parts):
        if index:
            out.write("\n")
        writer.writerow(grid.columns)
        for row in grid.rows:
            writer.writerow([_csv_value(value) for value in row])


def _write_table(section: Section, out: IO[str]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    wide = None if getattr(out, "isatty", lambda: False)() else 200
    console = Console(file=out, width=wide, highlight=False)
    for grid in grids(section):
        table = Table(title=grid.title, box=box.SIMPLE, title_justify="left")
        if grid.key == "summary":  # one row of many figures reads better standing up
            table.add_column("figure")
            table.add_column("value", justify="right")
            for column, value in zip(grid.columns, grid.rows[0], strict=True):
                table.add_row(column, format_value(column, value))
        else:
            for index, column in enumerate(grid.columns):
                numeric = any(isinstance(row[index], int | float) for row in grid.rows)
                table.add_column(column, overflow="fold", justify="right" if numeric else "left")
            for row in grid.rows:
                table.add_row(*(format_value(c, v) for c, v in zip(grid.columns, row, strict=True)))
            if not grid.rows:
                table.caption = "no rows"
        console.print(table)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    return _iso(value) if isinstance(value, datetime) else value


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, datetime):
        return _iso(value)
    return value


def _iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a `Z`, the form every JSON consumer parses."""
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")
