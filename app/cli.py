"""The `switchboard` command: serve, validate dialplans, check a configuration.

Exit codes: 0 success, 1 invalid dialplans or routes (models: a failed download, install or
verification), 2 invalid configuration or usage. `drain`: 0 the server exited (or was not
waited for), 1 it was still running when the wait ended, 2 no server is running.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from app import __version__
from app.config import Config, ConfigError, dump_config, load_config
from app.eval.commands import add_eval_parser
from app.models.commands import add_models_parser
from app.report.commands import add_report_parser
from app.store.commands import add_db_parser

EXIT_OK, EXIT_INVALID, EXIT_CONFIG = 0, 1, 2
DRAIN_WAIT_MARGIN_S = 30
"""After the drain deadline the server hangs up what is left (up to 10 s) and flushes records."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.command(args)
    except ConfigError as exc:
        print(f"switchboard: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="switchboard", description="Voice-bot telephony application server."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="answer calls until stopped")
    _add_config_option(serve)
    serve.set_defaults(command=_serve)

    dialplan = commands.add_parser("dialplan", help="work with dialplans")
    dialplan_commands = dialplan.add_subparsers(title="commands", required=True, metavar="COMMAND")
    validate = dialplan_commands.add_parser("validate", help="check dialplan files or folders")
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE")
    validate.set_defaults(command=_validate_dialplans)
    simulate = dialplan_commands.add_parser(
        "simulate",
        help="run a dialplan in the terminal: type what the caller says, #digits for keys",
    )
    simulate.add_argument("file", type=Path, metavar="FILE")
    simulate.add_argument("--caller", default="sip:simulator@localhost", help="caller URI")
    simulate.add_argument("--dialled", default="simulator", help="dialled number")
    simulate.add_argument(
        "--transfer-fails", action="store_true", help="simulate a transfer the far end rejects"
    )
    simulate.add_argument("--today", type=_date, help="the date for date slots (YYYY-MM-DD)")
    simulate.set_defaults(command=_simulate_dialplan)
    reload = dialplan_commands.add_parser(
        "reload",
        help="make the running server load its dialplans again (calls in progress keep theirs)",
    )
    _add_config_option(reload)
    reload.set_defaults(command=_reload_dialplans)
    schema = dialplan_commands.add_parser(
        "schema", help="print the JSON Schema of dialplan files (for editors)"
    )
    schema.set_defaults(command=_print_schema)

    config = commands.add_parser("config", help="work with the configuration")
    config_commands = config.add_subparsers(title="commands", required=True, metavar="COMMAND")
    check = config_commands.add_parser(
        "check", help="print the effective configuration and check its routes and dialplans"
    )
    _add_config_option(check)
    check.set_defaults(command=_check_config)

    drain = commands.add_parser(
        "drain",
        help="stop the running server gracefully: new calls get 503, calls in progress may"
        " end (up to [server] drain_timeout_s)",
    )
    _add_config_option(drain)
    drain.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait for the server to exit, showing the calls left (default: wait)",
    )
    drain.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help=f"how long to wait (default: drain_timeout_s + {DRAIN_WAIT_MARGIN_S} s)",
    )
    drain.set_defaults(command=_drain)

    add_models_parser(commands, _add_config_option)
    add_report_parser(commands, _add_config_option)
    add_db_parser(commands, _add_config_option)
    add_eval_parser(commands, _add_config_option)
    return parser


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML configuration (default: built-in defaults); SWITCHBOARD_<SECTION>__<KEY>"
        " environment variables override it",
    )


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config, os.environ)


def _serve(args: argparse.Namespace) -> int:
    config = _load(args)
    from app.server import serve  # lazy: pulls in pjsua2 and the engines

    return serve(config)


def _validate_dialplans(args: argparse.Namespace) -> int:
    from app.dialog.dialplan import DialplanError, load_dialplan

    files: list[Path] = []
    for path in args.files:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")))
        else:
            files.append(path)
    bad = 0
    for path in files:
        try:
            load_dialplan(path)
        except DialplanError as exc:
            bad += 1
            for error in exc.errors:
                print(error)
        else:
            print(f"OK {path}")
    if not files:
        print("no dialplan files found")
        return EXIT_INVALID
    return EXIT_INVALID if bad else EXIT_OK


def _simulate_dialplan(args: argparse.Namespace) -> int:
    from app.dialog.dialplan import DialplanError, load_dialplan
    from app.dialog.simulate import Simulator

    try:
        plan = load_dialplan(args.file)
    except DialplanError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return EXIT_INVALID
    import logging

    logging.basicConfig(level=logging.WARNING, format="  [%(levelname)s] %(message)s")
    print(f"# simulating {plan.name} ({args.file}); #digits for keys, empty line: silence")
    simulator = Simulator(
        plan,
        iter(sys.stdin.readline, ""),
        sys.stdout,
        echo=not sys.stdin.isatty(),
        caller=args.caller,
        dialled=args.dialled,
        transfer_ok=not args.transfer_fails,
        today=args.today,
    )
    simulator.run()
    print(
        "# variables: "
        + ", ".join(f"{k}={v!r}" for k, v in simulator.runner.redacted_variables().items())
    )
    return EXIT_OK


def _reload_dialplans(args: argparse.Namespace) -> int:
    import signal

    from app.dialog.dialplan import DialplanError, load_dialplans
    from app.server import pid_file_path

    config = _load(args)
    try:
        plans = load_dialplans(config.dialplans.dir)
    except DialplanError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        print("not reloaded: fix the errors above first", file=sys.stderr)
        return EXIT_INVALID
    path = pid_file_path(config)
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        print(f"switchboard: no running server found via {path}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(f"asked server {pid} to reload {len(plans)} dialplan(s); its log says when done")
    return EXIT_OK


def _drain(args: argparse.Namespace) -> int:
    from app.drain import request_drain
    from app.server import health_file_path, pid_file_path

    config = _load(args)
    wait_s = args.timeout
    if wait_s is None:
        wait_s = config.server.drain_timeout_s + DRAIN_WAIT_MARGIN_S
    return request_drain(
        pid_file_path(config),
        health_file_path(config),
        wait_s=wait_s if args.wait else None,
        out=sys.stdout,
        err=sys.stderr,
    )


def _print_schema(_args: argparse.Namespace) -> int:
    from importlib.resources import files

    print(files("app.dialog").joinpath("dialplan.schema.json").read_text(), end="")
    return EXIT_OK


def _date(text: str) -> object:
    import datetime as dt

    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _check_config(args: argparse.Namespace) -> int:
    from app.dialog.dialplan import DialplanError, load_dialplans
    from app.sip.routes import RoutesError, RouteTable

    config = _load(args)
    print(dump_config(config), end="")
    try:
        plans = load_dialplans(config.dialplans.dir)
        routes = RouteTable.load(config.sip.routes, set(plans))
    except (DialplanError, RoutesError) as exc:
        print(f"\n{exc}", file=sys.stderr)
        return EXIT_INVALID
    print(f"\n# OK: {len(plans)} dialplan(s), {len(routes.routes)} route(s)")
    return EXIT_OK
