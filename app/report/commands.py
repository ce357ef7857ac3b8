"""`switchboard report summary | latency | outcomes | calls`: call-record reports for operators.

Exit codes: 0 done, 1 the records could not be read (database unreachable, no schema) or the
HTML file not written, 2 a usage or configuration error. Failures are one line on stderr, so
stdout holds only the report and `--format csv|json` output can be piped.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when a report runs: `switchboard --help` stays quick
    from sqlalchemy import Engine

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
FORMATS = ("table", "csv", "json")

HELP = {
    "summary": "calls, answer and containment rates, handling time, no-match rate",
    "latency": "count, mean, p50/p95/p99 and max of each turn latency stage",
    "outcomes": "outcomes per dialplan and the prompts with the most no-matches",
    "calls": "one row per call with its CDR figures, outcome and number of turns",
}
_TABLES = ("calls", "turns")


class ReportError(Exception):
    """The records cannot be reported on; the message is the whole explanation."""


def add_report_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    add_config_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add `report` and its subcommands to the `switchboard` parser."""
    report = commands.add_parser(
        "report", help="reports on the call records: summary, latency, outcomes, calls"
    )
    sub = report.add_subparsers(title="commands", required=True, metavar="COMMAND")
    for name, text in HELP.items():
        parser = sub.add_parser(name, help=text)
        add_config_option(parser)
        parser.add_argument(
            "--db", type=_db_url, metavar="URL", help="database URL (default: config [store] url)"
        )
        parser.add_argument(
            "--from",
            dest="start",
            type=parse_moment,
            metavar="DATE",
            help="first calldate included: YYYY-MM-DD (midnight UTC) or ISO datetime (naive: UTC)",
        )
        parser.add_argument(
            "--to",
            dest="end",
            type=parse_moment,
            metavar="DATE",
            help="calldate bound, excluded; same forms as --from",
        )
        parser.add_argument("--dialplan", metavar="NAME", help="only calls of this dialplan")
        parser.add_argument("--format", choices=FORMATS, default="table", help="default: table")
        parser.add_argument(
            "--html",
            type=Path,
            metavar="FILE",
            help="also write the full report (every section, with plots) to FILE",
        )
        parser.set_defaults(command=_command(name))


def parse_moment(text: str) -> datetime:
    """`YYYY-MM-DD` or an ISO datetime as an aware UTC datetime; naive means UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO date or datetime (YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][+HH:MM]): {text!r}"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _db_url(text: str) -> str:
    from app.store.db import parse_url

    try:
        parse_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return _report(name, args)

    return run


def _report(name: str, args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from app.report.queries import Filters, full_report
    from app.report.render import SECTIONS, write
    from app.store.db import error_reason

    if args.start is not None and args.end is not None and args.start >= args.end:
        return _fail("--from must be before --to", EXIT_USAGE)
    url = args.db or _config_url(args)
    filters = Filters(args.start, args.end, args.dialplan)
    try:
        engine = _open(url)
        try:
            _check_schema(engine, url)
            section = SECTIONS[name](engine, filters)
            full = full_report(engine, filters) if args.html is not None else None
        finally:
            engine.dispose()
    except ReportError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except SQLAlchemyError as exc:
        return _fail(
            f"cannot read call records from {_shown(url)}: {error_reason(exc)}", EXIT_FAILED
        )
    try:
        write(name, section, filters, args.format, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has what it wanted; the HTML still gets written
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if full is not None:
        from app.report.html import write_html

        try:
            write_html(full, args.html)
        except OSError as exc:
            return _fail(f"cannot write {args.html}: {exc.strerror or exc}", EXIT_FAILED)
        print(f"switchboard: wrote {args.html}", file=sys.stderr)  # stdout stays the report
    return EXIT_OK


def _config_url(args: argparse.Namespace) -> str:
    from app.config import load_config

    return load_config(args.config, os.environ).store.url  # ConfigError: exit 2 in app.cli


def _open(url: str) -> Engine:
    """Open the records; a missing SQLite file is an error, not a new empty database."""
    from app.store.db import open_engine, parse_url

    parsed = parse_url(url)
    if parsed.drivername.startswith("sqlite") and parsed.database:
        path = Path(parsed.database)
        if not path.is_file():
            raise ReportError(f"no call records at {_shown(url)}: {path} does not exist")
    try:
        return open_engine(url)
    except ValueError as exc:
        raise ReportError(str(exc)) from None


def _check_schema(engine: Engine, url: str) -> None:
    from sqlalchemy import inspect

    found = inspect(engine)
    missing = [table for table in _TABLES if not found.has_table(table)]
    if missing:
        raise ReportError(
            f"no call-record schema in {_shown(url)} (missing table {', '.join(missing)}): "
            "point --db or [store] url at the server's database, or run `switchboard db upgrade`"
        )


def _shown(url: str) -> str:
    from app.store.db import parse_url

    return parse_url(url).render_as_string(hide_password=True)


def _fail(message: str, code: int) -> int:
    print(f"switchboard: {message}", file=sys.stderr)
    return code
