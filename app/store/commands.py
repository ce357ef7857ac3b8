"""`switchboard db upgrade | downgrade | current | prune`: the operator's side of the records.

Exit codes: 0 done, 1 the database failed (unreachable, refused a migration), 2 a usage or
configuration error. Failures are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.config import Config, load_config, redact_url

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

Command = Callable[[argparse.Namespace], int]


def add_db_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    add_config_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add `db` and its subcommands to the `switchboard` parser."""
    db = commands.add_parser("db", help="migrate the call-record database and prune old records")
    sub = db.add_subparsers(title="commands", required=True, metavar="COMMAND")

    upgrade = sub.add_parser("upgrade", help="apply schema migrations (default: up to the newest)")
    upgrade.add_argument("revision", nargs="?", default="head", metavar="REVISION")
    upgrade.set_defaults(command=_guarded(_upgrade))

    downgrade = sub.add_parser(
        "downgrade", help="undo migrations down to REVISION ('base': drop every table)"
    )
    downgrade.add_argument("revision", metavar="REVISION")
    downgrade.set_defaults(command=_guarded(_downgrade))

    current = sub.add_parser("current", help="the schema revision of the database")
    current.set_defaults(command=_guarded(_current))

    prune = sub.add_parser(
        "prune", help="delete calls, turns, events and recordings older than the retention"
    )
    prune.add_argument(
        "--older-than",
        type=_days,
        metavar="DAYS",
        help="age in days (default: [store] retention_days)",
    )
    prune.add_argument("--dry-run", action="store_true", help="only count what would go")
    prune.set_defaults(command=_guarded(_prune))

    for parser in (upgrade, downgrade, current, prune):
        add_config_option(parser)
        parser.add_argument("--db", metavar="URL", help="database URL (default: [store] url)")


def _upgrade(args: argparse.Namespace, config: Config, engine: Engine) -> int:
    from app.store import migrate

    before = migrate.status(engine)
    after = migrate.upgrade(engine, args.revision)
    print(f"{_shown(args, config)}: {before.current or 'empty'} -> {after.current}")
    return EXIT_OK


def _downgrade(args: argparse.Namespace, config: Config, engine: Engine) -> int:
    from app.store import migrate

    before = migrate.status(engine)
    after = migrate.downgrade(engine, args.revision)
    print(f"{_shown(args, config)}: {before.current or 'empty'} -> {after.current or 'empty'}")
    return EXIT_OK


def _current(args: argparse.Namespace, config: Config, engine: Engine) -> int:
    from app.store import migrate

    found = migrate.status(engine)
    state = "up to date" if found.up_to_date else "needs `switchboard db upgrade`"
    legacy = " (made before migrations, not yet stamped)" if found.legacy else ""
    print(
        f"{_shown(args, config)}: revision {found.current or 'none'}{legacy}, "
        f"newest {found.head}: {state}"
    )
    return EXIT_OK


def _prune(args: argparse.Namespace, config: Config, engine: Engine) -> int:
    from app.store.retention import cutoff_for, prune

    days = args.older_than if args.older_than is not None else config.store.retention_days
    if not days:
        print(
            "switchboard: [store] retention_days is 0 (keep everything): set it or pass "
            "--older-than DAYS",
            file=sys.stderr,
        )
        return EXIT_USAGE
    cutoff = cutoff_for(days)
    result = prune(engine, cutoff, config.server.data_dir / "recordings", dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(
        f"{verb} {result.calls} call(s), {result.turns} turn(s), {result.events} event(s) and "
        f"{result.recordings} recording folder(s) from before {cutoff:%Y-%m-%d %H:%M} UTC"
    )
    return EXIT_OK


def _guarded(command: Callable[[argparse.Namespace, Config, Engine], int]) -> Command:
    def run(args: argparse.Namespace) -> int:
        from alembic.util import CommandError

        from app.store.db import error_reason, open_engine
        from app.store.migrate import SchemaError

        config = load_config(args.config, os.environ)  # ConfigError: exit 2 in app.cli
        try:
            engine = open_engine(args.db or config.store.url)
        except ValueError as exc:
            return _fail(str(exc), EXIT_USAGE)
        try:
            return command(args, config, engine)
        except SchemaError as exc:
            return _fail(str(exc), EXIT_FAILED)
        except SQLAlchemyError as exc:
            return _fail(f"{_shown(args, config)}: {error_reason(exc)}", EXIT_FAILED)
        except CommandError as exc:  # an unknown revision
            return _fail(str(exc), EXIT_USAGE)
        finally:
            engine.dispose()

    return run


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if days < 1:
        raise argparse.ArgumentTypeError("must be at least 1 day")
    return days


def _shown(args: argparse.Namespace, config: Config) -> str:
    return redact_url(args.db or config.store.url)


def _fail(message: str, code: int) -> int:
    print(f"switchboard: {message}", file=sys.stderr)
    return code
